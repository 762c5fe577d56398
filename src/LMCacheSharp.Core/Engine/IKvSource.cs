namespace LMCacheSharp.Core.Engine;

/// <summary>
/// Where <see cref="CacheEngine.StoreAsync"/> reads KV from: implemented by an engine connector over one sequence.
/// Called on the caller's thread, one chunk at a time, in token order.
/// </summary>
public interface IKvSource
{
    /// <summary>
    /// Copies the KV of tokens [<paramref name="startToken"/>, <paramref name="startToken"/> + <paramref name="tokenCount"/>)
    /// into <paramref name="destination"/>, in the engine's <see cref="Kv.KvFormat"/>; the destination is exactly
    /// <c>format.PayloadLength(tokenCount)</c> bytes. Returns false when the KV is not available (the chunk is then not stored).
    /// </summary>
    bool TryReadKv(int startToken, int tokenCount, Span<byte> destination);

    /// <summary>
    /// Called once when a store has read every chunk it wanted (also after a failed read): a source that read the whole
    /// sequence for the first chunk lets that snapshot go here. Default: nothing.
    /// </summary>
    void CompleteRead()
    {
    }
}

/// <summary>
/// Where <see cref="CacheEngine.RetrieveAsync"/> writes restored KV: implemented by an engine connector over one sequence.
/// Called in token order, one chunk at a time, starting at token 0.
/// </summary>
public interface IKvSink
{
    /// <summary>
    /// Writes the KV of tokens [<paramref name="startToken"/>, <paramref name="startToken"/> + <paramref name="tokenCount"/>)
    /// into the engine. Returns false when the engine refused it: retrieval stops there and the rest is recomputed.
    /// The payload is only valid during the call.
    /// </summary>
    bool TryWriteKv(int startToken, int tokenCount, ReadOnlySpan<byte> payload);

    /// <summary>
    /// Called once after the last <see cref="TryWriteKv"/> of a restore that accepted at least one chunk: a sink that
    /// collects the chunks and writes them into the engine in one call does it here. False: nothing was restored (the
    /// engine holds none of the chunks). Default: true (every chunk went in when it was given).
    /// </summary>
    bool CompleteWrite() => true;
}
