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
}
