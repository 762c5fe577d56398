namespace LMCacheSharp.Core.Kv;

/// <summary>
/// The shape of an engine's KV as the cache stores it: layers, bytes per token per layer for K and for V, the element type
/// and the layout. Two engines whose formats differ never share chunks (the format is part of the key namespace).
/// </summary>
/// <param name="Layers">Number of layers (1..4096).</param>
/// <param name="KBytesPerToken">Bytes of K for one token in one layer (1..<see cref="MaxBytesPerTokenPerLayer"/>).</param>
/// <param name="VBytesPerToken">Bytes of V for one token in one layer (1..<see cref="MaxBytesPerTokenPerLayer"/>).</param>
/// <param name="DataType">Element type of K and V.</param>
/// <param name="Layout">Payload layout.</param>
public readonly record struct KvFormat(int Layers, int KBytesPerToken, int VBytesPerToken, KvDataType DataType, KvLayout Layout)
{
    /// <summary>Largest K or V row of one token in one layer that <see cref="Validate"/> accepts: 1 GiB.</summary>
    public const int MaxBytesPerTokenPerLayer = 1 << 30;

    /// <summary>
    /// Bytes of KV one token occupies across all layers, computed without wrapping: K + V in 64 bits, and a product that
    /// does not fit (only possible for a format <see cref="Validate"/> rejects) is clamped to <see cref="long.MaxValue"/>.
    /// </summary>
    public long BytesPerToken => Clamp((Int128)Layers * ((long)KBytesPerToken + VBytesPerToken));

    /// <summary>
    /// Payload length for <paramref name="tokens"/> tokens. Never wraps: a length over 64 bits (a format from a corrupt
    /// header, say) comes back as <see cref="long.MaxValue"/>, which matches no real payload, so parsers compare it safely.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="tokens"/> is negative.</exception>
    public long PayloadLength(int tokens)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(tokens);
        return Clamp((Int128)BytesPerToken * tokens);
    }

    /// <summary>Throws <see cref="ArgumentException"/> when a field is out of range.</summary>
    public void Validate()
    {
        if (Layers is < 1 or > 4096)
        {
            throw new ArgumentException($"KV format: layers must be 1..4096, got {Layers}.");
        }

        if (KBytesPerToken is <= 0 or > MaxBytesPerTokenPerLayer || VBytesPerToken is <= 0 or > MaxBytesPerTokenPerLayer)
        {
            throw new ArgumentException($"KV format: bytes per token must be in 1..{MaxBytesPerTokenPerLayer}, got K={KBytesPerToken} V={VBytesPerToken}.");
        }

        if (!Enum.IsDefined(Layout))
        {
            throw new ArgumentException($"KV format: unknown layout {(int)Layout}.");
        }
    }

    private static long Clamp(Int128 value) => value > long.MaxValue ? long.MaxValue : value < long.MinValue ? long.MinValue : (long)value;

    /// <summary>A stable text form, used in the key namespace.</summary>
    public override string ToString() => $"{Layout}:{DataType}:L{Layers}:K{KBytesPerToken}:V{VBytesPerToken}";
}
