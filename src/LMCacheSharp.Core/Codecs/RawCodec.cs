using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Core.Codecs;

/// <summary>The identity codec: the payload is stored as is.</summary>
public sealed class RawCodec : IKvCodec
{
    /// <summary>The shared instance.</summary>
    public static RawCodec Instance { get; } = new();

    /// <inheritdoc />
    public KvCodecId Id => KvCodecId.Raw;

    /// <inheritdoc />
    public string Name => "naive";

    /// <inheritdoc />
    public bool IsLossless => true;

    /// <inheritdoc />
    public int MaxEncodedLength(int rawLength, KvFormat format) => rawLength;

    /// <inheritdoc />
    public int Encode(ReadOnlySpan<byte> raw, KvFormat format, Span<byte> destination)
    {
        raw.CopyTo(destination);
        return raw.Length;
    }

    /// <inheritdoc />
    public bool TryDecode(ReadOnlySpan<byte> encoded, KvFormat format, Span<byte> destination)
    {
        if (encoded.Length != destination.Length)
        {
            return false;
        }

        encoded.CopyTo(destination);
        return true;
    }
}
