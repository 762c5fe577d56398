using System.Buffers;
using K4os.Compression.LZ4;
using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Core.Codecs;

/// <summary>
/// Lossless: LZ4 block compression (K4os.Compression.LZ4, fast level) of the byte-shuffled payload. For f16, bf16 and f32
/// KV the bytes are first grouped by position within the element (<see cref="KvElements.Shuffle"/>), which gives LZ4 the
/// runs of similar exponent bytes to work with; other dtypes are compressed as they are. Decodes bit-exactly.
/// </summary>
public sealed class Lz4Codec : IKvCodec
{
    /// <summary>The shared instance.</summary>
    public static Lz4Codec Instance { get; } = new();

    /// <inheritdoc />
    public KvCodecId Id => KvCodecId.Lz4;

    /// <inheritdoc />
    public string Name => "lz4";

    /// <inheritdoc />
    public bool IsLossless => true;

    /// <inheritdoc />
    public int MaxEncodedLength(int rawLength, KvFormat format) => LZ4Codec.MaximumOutputSize(rawLength);

    /// <inheritdoc />
    public int Encode(ReadOnlySpan<byte> raw, KvFormat format, Span<byte> destination)
    {
        var elementSize = KvElements.ElementSize(format.DataType);
        if (elementSize < 2 || raw.Length < elementSize)
        {
            return Compress(raw, destination);
        }

        var shuffled = ArrayPool<byte>.Shared.Rent(raw.Length);
        try
        {
            KvElements.Shuffle(raw, shuffled, elementSize);
            return Compress(shuffled.AsSpan(0, raw.Length), destination);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(shuffled);
        }
    }

    /// <inheritdoc />
    public bool TryDecode(ReadOnlySpan<byte> encoded, KvFormat format, Span<byte> destination)
    {
        var elementSize = KvElements.ElementSize(format.DataType);
        if (elementSize < 2 || destination.Length < elementSize)
        {
            return Decompress(encoded, destination);
        }

        var shuffled = ArrayPool<byte>.Shared.Rent(destination.Length);
        try
        {
            if (!Decompress(encoded, shuffled.AsSpan(0, destination.Length)))
            {
                return false;
            }

            KvElements.Unshuffle(shuffled.AsSpan(0, destination.Length), destination, elementSize);
            return true;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(shuffled);
        }
    }

    private static int Compress(ReadOnlySpan<byte> source, Span<byte> destination)
    {
        var n = LZ4Codec.Encode(source, destination, LZ4Level.L00_FAST);
        return n >= 0 && (n > 0 || source.IsEmpty) ? n : throw new ArgumentException("LZ4: destination too small.", nameof(destination));
    }

    private static bool Decompress(ReadOnlySpan<byte> source, Span<byte> destination)
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
