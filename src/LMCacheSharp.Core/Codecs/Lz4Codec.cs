using K4os.Compression.LZ4;
using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Core.Codecs;

/// <summary>
/// Lossless: LZ4 block compression (K4os.Compression.LZ4, fast level) of the byte-shuffled payload. For f16, bf16 and f32
/// KV the bytes are first grouped by position within the element (<see cref="KvElements.Shuffle"/>), which gives LZ4 the
/// runs of similar exponent bytes to work with; other dtypes are compressed as they are. Decodes bit-exactly.
/// </summary>
public sealed class Lz4Codec : ShuffledCompressionCodec
{
    /// <summary>The shared instance.</summary>
    public static Lz4Codec Instance { get; } = new();

    /// <inheritdoc />
    public override KvCodecId Id => KvCodecId.Lz4;

    /// <inheritdoc />
    public override string Name => "lz4";

    /// <inheritdoc />
    public override int MaxEncodedLength(int rawLength, KvFormat format) => LZ4Codec.MaximumOutputSize(rawLength);

    /// <inheritdoc />
    protected override int Compress(ReadOnlySpan<byte> source, Span<byte> destination)
    {
        var n = LZ4Codec.Encode(source, destination, LZ4Level.L00_FAST);
        return n >= 0 && (n > 0 || source.IsEmpty) ? n : throw new ArgumentException("LZ4: destination too small.", nameof(destination));
    }

    /// <inheritdoc />
    protected override bool Decompress(ReadOnlySpan<byte> source, Span<byte> destination)
    {
        if (source.IsEmpty)
        {
            return destination.IsEmpty;
        }

        try
        {
            return LZ4Codec.Decode(source, destination) == destination.Length;
        }
        catch (Exception e) when (e is InvalidOperationException or ArgumentException or IndexOutOfRangeException)
        {
            return false;
        }
    }
}
