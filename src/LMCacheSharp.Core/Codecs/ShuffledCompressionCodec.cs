using System.Buffers;
using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Core.Codecs;

/// <summary>
/// A lossless codec that byte-shuffles f16, bf16 and f32 payloads (<see cref="KvElements.Shuffle"/>: the first bytes of
/// all elements, then the second bytes, ...) and hands the result to a general-purpose compressor; other dtypes are
/// compressed as they are. Subclasses supply the compressor.
/// </summary>
public abstract class ShuffledCompressionCodec : IKvCodec
{
    /// <inheritdoc />
    public abstract KvCodecId Id { get; }

    /// <inheritdoc />
    public abstract string Name { get; }

    /// <inheritdoc />
    public bool IsLossless => true;

    /// <inheritdoc />
    public abstract int MaxEncodedLength(int rawLength, KvFormat format);

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

    /// <summary>Compresses <paramref name="source"/> into <paramref name="destination"/>; returns the bytes written.</summary>
    /// <exception cref="ArgumentException">The destination is too small.</exception>
    protected abstract int Compress(ReadOnlySpan<byte> source, Span<byte> destination);

    /// <summary>Decompresses exactly <paramref name="destination"/>'s length; false on any malformed or mismatched input.</summary>
    protected abstract bool Decompress(ReadOnlySpan<byte> source, Span<byte> destination);
}
