using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Core.Codecs;

/// <summary>Codec ids as written in a serialized chunk's header. Never renumber.</summary>
public enum KvCodecId : byte
{
    /// <summary>The payload as is (LMCache's "naive" serde).</summary>
    Raw = 0,
    /// <summary>LZ4 block compression, lossless.</summary>
    Lz4 = 1,
    /// <summary>Zstandard, lossless.</summary>
    Zstd = 2,
    /// <summary>Group-wise int8 quantization, lossy.</summary>
    Int8 = 3,
    /// <summary>FP8 e4m3 with per-group scales, lossy.</summary>
    Fp8 = 4,
}

/// <summary>
/// Encodes a raw chunk payload for a tier (disk, remote) and decodes it back. Codecs are stateless and thread-safe.
/// Lossless codecs must decode to the exact raw bytes; lossy ones must say so through <see cref="IsLossless"/>, and a cache
/// that uses one puts its name into the key namespace (<see cref="Keys.CacheNamespace.Variant"/>).
/// </summary>
public interface IKvCodec
{
    /// <summary>The id written into headers.</summary>
    KvCodecId Id { get; }

    /// <summary>The name used in configuration (<c>remote_serde</c>, <c>local_disk_serde</c>).</summary>
    string Name { get; }

    /// <summary>Whether decode(encode(x)) == x for every payload.</summary>
    bool IsLossless { get; }

    /// <summary>Upper bound of the encoded size of a <paramref name="rawLength"/>-byte payload of <paramref name="format"/>.</summary>
    int MaxEncodedLength(int rawLength, KvFormat format);

    /// <summary>Encodes; returns the bytes written. Throws <see cref="NotSupportedException"/> for a format it cannot encode.</summary>
    int Encode(ReadOnlySpan<byte> raw, KvFormat format, Span<byte> destination);

    /// <summary>
    /// Decodes exactly <paramref name="destination"/>.Length raw bytes; returns false for malformed input (never throws for it).
    /// </summary>
    bool TryDecode(ReadOnlySpan<byte> encoded, KvFormat format, Span<byte> destination);
}
