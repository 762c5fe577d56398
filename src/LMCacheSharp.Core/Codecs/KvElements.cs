using System.Buffers.Binary;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Core.Codecs;

/// <summary>
/// Element-level access to KV payloads for the codecs: element sizes, the byte shuffle of the lossless codecs, and
/// conversion of f16 / bf16 / f32 elements to and from <see cref="float"/> (f16 through TensorPrimitives, vectorized).
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

    /// <summary>Elements converted at a time by the lossy codecs (a multiple of their 32-element groups).</summary>
    public const int BlockElements = 2048;

    /// <summary>
    /// Byte shuffle (as in Blosc): the first bytes of every element, then the second bytes, and so on. Separates the
    /// sign/exponent bytes of floats, which repeat a lot, from the noisy low mantissa bytes. A tail shorter than one element
    /// is copied as is. Vectorized where the hardware allows, scalar otherwise (same result).
    /// </summary>
    public static void Shuffle(ReadOnlySpan<byte> source, Span<byte> destination, int elementSize)
    {
        var n = source.Length / elementSize;
        var done = Vector256.IsHardwareAccelerated && BitConverter.IsLittleEndian ? ShuffleVector(source, destination, elementSize, n) : 0;
        for (var b = 0; b < elementSize; b++)
        {
            var plane = destination.Slice(b * n, n);
            for (var i = done; i < n; i++)
            {
                plane[i] = source[(i * elementSize) + b];
            }
        }

        source[(n * elementSize)..].CopyTo(destination[(n * elementSize)..]);
    }

    /// <summary>Inverse of <see cref="Shuffle"/>.</summary>
    public static void Unshuffle(ReadOnlySpan<byte> source, Span<byte> destination, int elementSize)
    {
        var n = source.Length / elementSize;
        var done = Vector256.IsHardwareAccelerated && BitConverter.IsLittleEndian ? UnshuffleVector(source, destination, elementSize, n) : 0;
        for (var b = 0; b < elementSize; b++)
        {
            var plane = source.Slice(b * n, n);
            for (var i = done; i < n; i++)
            {
                destination[(i * elementSize) + b] = plane[i];
            }
        }

        source[(n * elementSize)..].CopyTo(destination[(n * elementSize)..]);
    }

    // 32 elements per step: narrowing keeps the low byte of each lane, in element order.
    private static int ShuffleVector(ReadOnlySpan<byte> source, Span<byte> destination, int elementSize, int n)
    {
        var steps = n / 32;
        if (elementSize == 2)
        {
            var words = MemoryMarshal.Cast<byte, ushort>(source[..(n * 2)]);
            for (var s = 0; s < steps; s++)
            {
                var a = Vector256.Create(words.Slice(s * 32, 16));
                var b = Vector256.Create(words.Slice((s * 32) + 16, 16));
                Vector256.Narrow(a, b).CopyTo(destination[(s * 32)..]);
                Vector256.Narrow(a >> 8, b >> 8).CopyTo(destination[(n + (s * 32))..]);
            }

            return steps * 32;
        }

        if (elementSize == 4)
        {
            var mask = Vector256.Create(0xFFu);
            var words = MemoryMarshal.Cast<byte, uint>(source[..(n * 4)]);
            for (var s = 0; s < steps; s++)
            {
                var v0 = Vector256.Create(words.Slice(s * 32, 8));
                var v1 = Vector256.Create(words.Slice((s * 32) + 8, 8));
                var v2 = Vector256.Create(words.Slice((s * 32) + 16, 8));
                var v3 = Vector256.Create(words.Slice((s * 32) + 24, 8));
                for (var b = 0; b < 4; b++)
                {
                    var shift = b * 8;
                    var low = Vector256.Narrow((v0 >> shift) & mask, (v1 >> shift) & mask);
                    var high = Vector256.Narrow((v2 >> shift) & mask, (v3 >> shift) & mask);
                    Vector256.Narrow(low, high).CopyTo(destination[((b * n) + (s * 32))..]);
                }
            }

            return steps * 32;
        }

        return 0;
    }

    private static int UnshuffleVector(ReadOnlySpan<byte> source, Span<byte> destination, int elementSize, int n)
    {
        var steps = n / 32;
        if (elementSize == 2)
        {
            var words = MemoryMarshal.Cast<byte, ushort>(destination[..(n * 2)]);
            for (var s = 0; s < steps; s++)
            {
                var (loA, loB) = Vector256.Widen(Vector256.Create(source.Slice(s * 32, 32)));
                var (hiA, hiB) = Vector256.Widen(Vector256.Create(source.Slice(n + (s * 32), 32)));
                (loA | (hiA << 8)).CopyTo(words[(s * 32)..]);
                (loB | (hiB << 8)).CopyTo(words[((s * 32) + 16)..]);
            }

            return steps * 32;
        }

        if (elementSize == 4)
        {
            var words = MemoryMarshal.Cast<byte, uint>(destination[..(n * 4)]);
            Span<Vector256<uint>> lanes = stackalloc Vector256<uint>[4];
            for (var s = 0; s < steps; s++)
            {
                lanes.Clear();
                for (var b = 0; b < 4; b++)
                {
                    var (low, high) = Vector256.Widen(Vector256.Create(source.Slice((b * n) + (s * 32), 32)));
                    var (a, c) = Vector256.Widen(low);
                    var (d, e) = Vector256.Widen(high);
                    var shift = b * 8;
                    lanes[0] |= a << shift;
                    lanes[1] |= c << shift;
                    lanes[2] |= d << shift;
                    lanes[3] |= e << shift;
                }

                for (var k = 0; k < 4; k++)
                {
                    lanes[k].CopyTo(words[((s * 32) + (k * 8))..]);
                }
            }

            return steps * 32;
        }

        return 0;
    }

    /// <summary>Reads <paramref name="destination"/>.Length elements of <paramref name="type"/> from <paramref name="raw"/>.</summary>
    public static void Load(ReadOnlySpan<byte> raw, KvDataType type, Span<float> destination)
    {
        var n = destination.Length;
        switch (type)
        {
            case KvDataType.F32:
                if (BitConverter.IsLittleEndian)
                {
                    MemoryMarshal.Cast<byte, float>(raw[..(n * 4)]).CopyTo(destination);
                    break;
                }

                for (var i = 0; i < n; i++)
                {
                    destination[i] = BinaryPrimitives.ReadSingleLittleEndian(raw[(i * 4)..]);
                }

                break;
            case KvDataType.F16:
                if (BitConverter.IsLittleEndian)
                {
                    TensorPrimitives.ConvertToSingle(MemoryMarshal.Cast<byte, Half>(raw[..(n * 2)]), destination);
                    break;
                }

                for (var i = 0; i < n; i++)
                {
                    destination[i] = (float)BinaryPrimitives.ReadHalfLittleEndian(raw[(i * 2)..]);
                }

                break;
            case KvDataType.BF16:
                for (var i = 0; i < n; i++)
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
        var n = source.Length;
        switch (type)
        {
            case KvDataType.F32:
                if (BitConverter.IsLittleEndian)
                {
                    source.CopyTo(MemoryMarshal.Cast<byte, float>(raw[..(n * 4)]));
                    break;
                }

                for (var i = 0; i < n; i++)
                {
                    BinaryPrimitives.WriteSingleLittleEndian(raw[(i * 4)..], source[i]);
                }

                break;
            case KvDataType.F16:
                if (BitConverter.IsLittleEndian)
                {
                    TensorPrimitives.ConvertToHalf(source, MemoryMarshal.Cast<byte, Half>(raw[..(n * 2)]));
                    break;
                }

                for (var i = 0; i < n; i++)
                {
                    BinaryPrimitives.WriteHalfLittleEndian(raw[(i * 2)..], (Half)source[i]);
                }

                break;
            case KvDataType.BF16:
                for (var i = 0; i < n; i++)
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
