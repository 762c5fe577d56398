namespace LMCacheSharp.Core.Kv;

/// <summary>
/// The shape of an engine's KV as the cache stores it: layers, bytes per token per layer for K and for V, the element type
/// and the layout. Two engines whose formats differ never share chunks (the format is part of the key namespace).
/// </summary>
/// <param name="Layers">Number of layers (1..4096).</param>
/// <param name="KBytesPerToken">Bytes of K for one token in one layer (&gt; 0).</param>
/// <param name="VBytesPerToken">Bytes of V for one token in one layer (&gt; 0).</param>
/// <param name="DataType">Element type of K and V.</param>
/// <param name="Layout">Payload layout.</param>
public readonly record struct KvFormat(int Layers, int KBytesPerToken, int VBytesPerToken, KvDataType DataType, KvLayout Layout)
{
    /// <summary>Bytes of KV one token occupies across all layers.</summary>
    public long BytesPerToken => (long)Layers * (KBytesPerToken + VBytesPerToken);

    /// <summary>Payload length for <paramref name="tokens"/> tokens.</summary>
    public long PayloadLength(int tokens) => BytesPerToken * tokens;

    /// <summary>Throws <see cref="ArgumentException"/> when a field is out of range.</summary>
    public void Validate()
    {
        if (Layers is < 1 or > 4096)
        {
            throw new ArgumentException($"KV format: layers must be 1..4096, got {Layers}.");
        }

        if (KBytesPerToken <= 0 || VBytesPerToken <= 0)
        {
            throw new ArgumentException($"KV format: bytes per token must be positive, got K={KBytesPerToken} V={VBytesPerToken}.");
        }

        if (!Enum.IsDefined(Layout))
        {
            throw new ArgumentException($"KV format: unknown layout {(int)Layout}.");
        }
    }

    /// <summary>A stable text form, used in the key namespace.</summary>
    public override string ToString() => $"{Layout}:{DataType}:L{Layers}:K{KBytesPerToken}:V{VBytesPerToken}";
}
