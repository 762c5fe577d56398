using System.Buffers.Binary;
using System.Runtime.InteropServices;
using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Core.Codecs;

/// <summary>
/// Element-level access to KV payloads for the codecs: element sizes, the byte shuffle of the lossless codecs, and
/// conversion of f16 / bf16 / f32 elements to and from <see cref="float"/> (scalar, exact; f16 through <see cref="Half"/>).
/// </summary>
internal static class KvElements
{
    /// <summary>Bytes per element of a plain floating-point dtype, or 0 for block-quantized dtypes (q8_0, q4_0).</summary>
    public static int ElementSize(KvDataType type) => type switch
    {
        KvDataType.F32 => 4,
        KvDataType.F16 or KvDataType.BF16 => 2,
        _ => 0,
    };

    /// <summary>
    /// Byte shuffle (as in Blosc): the first bytes of every element, then the second bytes, and so on. Separates the
    /// sign/exponent bytes of floats, which repeat a lot, from the noisy low mantissa bytes. A tail shorter than one element
    /// is copied as is.
    /// </summary>
    public static void Shuffle(ReadOnlySpan<byte> source, Span<byte> destination, int elementSize)
    {
        var n = source.Length / elementSize;
        if (elementSize == 2)
        {
            var lo = destination[..n];
            var hi = destination.Slice(n, n);
            var words = MemoryMarshal.Cast<byte, ushort>(source[..(n * 2)]);
            for (var i = 0; i < n; i++)
            {
                var w = BitConverter.IsLittleEndian ? words[i] : BinaryPrimitives.ReverseEndianness(words[i]);
                lo[i] = (byte)w;
                hi[i] = (byte)(w >> 8);
            }
        }
        else
        {
            for (var b = 0; b < elementSize; b++)
            {
                var plane = destination.Slice(b * n, n);
                for (var i = 0; i < n; i++)
                {
                    plane[i] = source[(i * elementSize) + b];
                }
            }
        }

        source[(n * elementSize)..].CopyTo(destination[(n * elementSize)..]);
    }

    /// <summary>Inverse of <see cref="Shuffle"/>.</summary>
    public static void Unshuffle(ReadOnlySpan<byte> source, Span<byte> destination, int elementSize)
    {
        var n = source.Length / elementSize;
        if (elementSize == 2)
        {
            var lo = source[..n];
            var hi = source.Slice(n, n);
            var words = MemoryMarshal.Cast<byte, ushort>(destination[..(n * 2)]);
            for (var i = 0; i < n; i++)
            {
                var w = (ushort)(lo[i] | (hi[i] << 8));
                words[i] = BitConverter.IsLittleEndian ? w : BinaryPrimitives.ReverseEndianness(w);
            }
        }
        else
        {
            for (var b = 0; b < elementSize; b++)
            {
                var plane = source.Slice(b * n, n);
                for (var i = 0; i < n; i++)
                {
                    destination[(i * elementSize) + b] = plane[i];
                }
            }
        }

        source[(n * elementSize)..].CopyTo(destination[(n * elementSize)..]);
    }

    /// <summary>Reads <paramref name="destination"/>.Length elements of <paramref name="type"/> from <paramref name="raw"/>.</summary>
    public static void Load(ReadOnlySpan<byte> raw, KvDataType type, Span<float> destination)
    {
        switch (type)
        {
            case KvDataType.F32:
                for (var i = 0; i < destination.Length; i++)
                {
                    destination[i] = BinaryPrimitives.ReadSingleLittleEndian(raw[(i * 4)..]);
                }

                break;
            case KvDataType.F16:
                for (var i = 0; i < destination.Length; i++)
                {
                    destination[i] = (float)BinaryPrimitives.ReadHalfLittleEndian(raw[(i * 2)..]);
                }

                break;
            case KvDataType.BF16:
                for (var i = 0; i < destination.Length; i++)
                {
                    destination[i] = BitConverter.UInt32BitsToSingle((uint)BinaryPrimitives.ReadUInt16LittleEndian(raw[(i * 2)..]) << 16);
                }

                break;
            default:
                throw new NotSupportedException($"KV dtype {type} is not a plain floating-point type.");
        }
    }

    /// <summary>Writes <paramref name="source"/> as elements of <paramref name="type"/> (round to nearest even).</summary>
    public static void Store(ReadOnlySpan<float> source, KvDataType type, Span<byte> raw)
    {
        switch (type)
        {
            case KvDataType.F32:
                for (var i = 0; i < source.Length; i++)
                {
                    BinaryPrimitives.WriteSingleLittleEndian(raw[(i * 4)..], source[i]);
                }

                break;
            case KvDataType.F16:
                for (var i = 0; i < source.Length; i++)
                {
                    BinaryPrimitives.WriteHalfLittleEndian(raw[(i * 2)..], (Half)source[i]);
                }

                break;
            case KvDataType.BF16:
                for (var i = 0; i < source.Length; i++)
                {
                    BinaryPrimitives.WriteUInt16LittleEndian(raw[(i * 2)..], ToBFloat16(source[i]));
                }

                break;
            default:
                throw new NotSupportedException($"KV dtype {type} is not a plain floating-point type.");
        }
    }

    /// <summary>float to bf16 bits, round to nearest even (NaN stays NaN).</summary>
    public static ushort ToBFloat16(float value)
    {
        var bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value))
        {
            return (ushort)((bits >> 16) | 0x40);
        }

        bits += 0x7FFF + ((bits >> 16) & 1);
        return (ushort)(bits >> 16);
    }

    /// <summary>
    /// Why a lossy codec cannot quantize payloads of <paramref name="format"/>, or null when it can: the dtype must be a
    /// plain float (not q8_0/q4_0) and the layout plain tensor rows (not an engine-native blob with headers inside).
    /// </summary>
    public static string? LossyUnsupportedReason(KvFormat format, string codec)
    {
        if (ElementSize(format.DataType) == 0)
        {
            return $"the {codec} codec quantizes f16, bf16 and f32 KV only; this cache's KV is {format.DataType}, already quantized: use naive, lz4 or zstd";
        }

        if (format.Layout is not (KvLayout.LayerKV or KvLayout.LayerKTransposedV))
        {
            return $"the {codec} codec needs plain KV rows (layout LayerKV or LayerKTransposedV); layout {format.Layout} holds engine headers " +
                "inside the payload (with the llama.cpp connector, use the portable chunk layout) or use naive, lz4 or zstd";
        }

        return null;
    }

    /// <summary>Throws the documented <see cref="NotSupportedException"/> for formats a lossy codec cannot quantize.</summary>
    public static int RequireFloatElements(KvFormat format, string codec) =>
        LossyUnsupportedReason(format, codec) is { } reason ? throw new NotSupportedException(reason + ".") : ElementSize(format.DataType);
}
