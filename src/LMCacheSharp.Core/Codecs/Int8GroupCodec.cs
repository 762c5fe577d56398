using System.Buffers.Binary;
using System.Numerics.Tensors;
using System.Runtime.Intrinsics;
using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Core.Codecs;

/// <summary>
/// Lossy: asymmetric 8-bit quantization over contiguous groups of <see cref="GroupSize"/> elements, in the spirit of KIVI
/// (per-group scale and zero point). For f16, bf16 and f32 KV; a group's elements x become
/// q = round((x - min) / scale) with scale = (max - min) / 255, and decode to min + q * scale, so the error of an element
/// is at most scale / 2 (plus the rounding of the result to the KV dtype). Parameters are stored as f16 for f16 KV (min
/// exactly, scale rounded up) and as f32 otherwise. Size: 36 bytes per 32 f16 elements (1.78x smaller), 40 bytes per
/// 32 f32 elements (3.2x). Already-quantized KV (q8_0, q4_0) and engine-native layouts (a llama.cpp state blob) are refused:
/// <see cref="Encode"/> throws <see cref="NotSupportedException"/>. A cache that uses this codec keys its chunks apart (see
/// <see cref="KvCodecs.WithCodecVariant"/>). Encoded layout: all groups' (min, scale) pairs, then all q bytes.
/// </summary>
public sealed class Int8GroupCodec : IKvCodec
{
    /// <summary>Elements per quantization group.</summary>
    public const int GroupSize = 32;

    /// <summary>The shared instance.</summary>
    public static Int8GroupCodec Instance { get; } = new();

    /// <inheritdoc />
    public KvCodecId Id => KvCodecId.Int8;

    /// <inheritdoc />
    public string Name => "int8";

    /// <inheritdoc />
    public bool IsLossless => false;

    /// <inheritdoc />
    public int MaxEncodedLength(int rawLength, KvFormat format)
    {
        var elementSize = KvElements.ElementSize(format.DataType);
        return elementSize == 0 ? rawLength : EncodedLength(rawLength / elementSize, ParamSize(format.DataType));
    }

    /// <inheritdoc />
    public int Encode(ReadOnlySpan<byte> raw, KvFormat format, Span<byte> destination)
    {
        var elementSize = KvElements.RequireFloatElements(format, Name);
        if (raw.Length % elementSize != 0)
        {
            throw new ArgumentException($"int8: payload length {raw.Length} is not a multiple of the {elementSize}-byte element.", nameof(raw));
        }

        var type = format.DataType;
        var paramSize = ParamSize(type);
        var elements = raw.Length / elementSize;
        var length = EncodedLength(elements, paramSize);
        if (destination.Length < length)
        {
            throw new ArgumentException("int8: destination too small.", nameof(destination));
        }

        var groups = GroupCount(elements);
        var parameters = destination[..(groups * 2 * paramSize)];
        var quantized = destination.Slice(parameters.Length, elements);
        Span<float> block = stackalloc float[KvElements.BlockElements];
        for (var blockStart = 0; blockStart < elements; blockStart += KvElements.BlockElements)
        {
            var blockLength = Math.Min(KvElements.BlockElements, elements - blockStart);
            KvElements.Load(raw.Slice(blockStart * elementSize, blockLength * elementSize), type, block[..blockLength]);
            for (var start = 0; start < blockLength; start += GroupSize)
            {
                var g = (blockStart + start) / GroupSize;
                var values = block.Slice(start, Math.Min(GroupSize, blockLength - start));
                var min = TensorPrimitives.Min(values); // NaN when any value is NaN
                var max = TensorPrimitives.Max(values);
                if (!float.IsFinite(min) || !float.IsFinite(max))
                {
                    throw new NotSupportedException("int8: the KV holds non-finite values (NaN or infinity), which cannot be quantized.");
                }

                var scale = (float)(((double)max - min) / 255.0);
                if (!float.IsFinite(scale))
                {
                    throw new NotSupportedException("int8: the KV's value range is too wide to quantize.");
                }

                if (paramSize == 2)
                {
                    // f16 KV: min is an f16 value already; round the scale up so (max - min) / scale stays within 255.
                    var h = (Half)scale;
                    if ((float)h < scale)
                    {
                        h = Half.BitIncrement(h);
                    }

                    scale = (float)h;
                    BinaryPrimitives.WriteHalfLittleEndian(parameters[(g * 4)..], (Half)min);
                    BinaryPrimitives.WriteHalfLittleEndian(parameters[((g * 4) + 2)..], h);
                }
                else
                {
                    BinaryPrimitives.WriteSingleLittleEndian(parameters[(g * 8)..], min);
                    BinaryPrimitives.WriteSingleLittleEndian(parameters[((g * 8) + 4)..], scale);
                }

                Quantize(values, min, scale, quantized.Slice(blockStart + start, values.Length));
            }
        }

        return length;
    }

    // q = clamp(round((x - min) / scale), 0, 255), round half to even; 32 at a time where vectorized.
    private static void Quantize(ReadOnlySpan<float> values, float min, float scale, Span<byte> q)
    {
        if (scale == 0)
        {
            q.Clear();
            return;
        }

        var inverse = 1.0f / scale;
        var i = 0;
        if (Vector256.IsHardwareAccelerated && values.Length == GroupSize)
        {
            var vMin = Vector256.Create(min);
            var vInverse = Vector256.Create(inverse);
            var top = Vector256.Create(255f);
            Vector256<int> Level(ReadOnlySpan<float> v) =>
                Vector256.ConvertToInt32(Vector256.Min(Vector256.Max(Vector256.Round((Vector256.Create(v) - vMin) * vInverse), Vector256<float>.Zero), top));
            var low = Vector256.Narrow(Level(values[..8]), Level(values[8..16])).AsUInt16();
            var high = Vector256.Narrow(Level(values[16..24]), Level(values[24..32])).AsUInt16();
            Vector256.Narrow(low, high).CopyTo(q);
            i = GroupSize;
        }

        for (; i < values.Length; i++)
        {
            var level = MathF.Round((values[i] - min) * inverse);
            q[i] = (byte)Math.Clamp(level, 0f, 255f);
        }
    }

    /// <inheritdoc />
    public bool TryDecode(ReadOnlySpan<byte> encoded, KvFormat format, Span<byte> destination)
    {
        var type = format.DataType;
        var elementSize = KvElements.ElementSize(type);
        if (KvElements.LossyUnsupportedReason(format, Name) is not null || destination.Length % elementSize != 0)
        {
            return false;
        }

        var paramSize = ParamSize(type);
        var elements = destination.Length / elementSize;
        if (encoded.Length != EncodedLength(elements, paramSize))
        {
            return false;
        }

        var groups = GroupCount(elements);
        var parameters = encoded[..(groups * 2 * paramSize)];
        var quantized = encoded.Slice(parameters.Length, elements);
        Span<float> block = stackalloc float[KvElements.BlockElements];
        for (var blockStart = 0; blockStart < elements; blockStart += KvElements.BlockElements)
        {
            var blockLength = Math.Min(KvElements.BlockElements, elements - blockStart);
            for (var start = 0; start < blockLength; start += GroupSize)
            {
                var g = (blockStart + start) / GroupSize;
                float min, scale;
                if (paramSize == 2)
                {
                    min = (float)BinaryPrimitives.ReadHalfLittleEndian(parameters[(g * 4)..]);
                    scale = (float)BinaryPrimitives.ReadHalfLittleEndian(parameters[((g * 4) + 2)..]);
                }
                else
                {
                    min = BinaryPrimitives.ReadSingleLittleEndian(parameters[(g * 8)..]);
                    scale = BinaryPrimitives.ReadSingleLittleEndian(parameters[((g * 8) + 4)..]);
                }

                if (!float.IsFinite(min) || !float.IsFinite(scale) || scale < 0)
                {
                    return false;
                }

                var values = block.Slice(start, Math.Min(GroupSize, blockLength - start));
                Dequantize(quantized.Slice(blockStart + start, values.Length), min, scale, values);
            }

            KvElements.Store(block[..blockLength], type, destination.Slice(blockStart * elementSize, blockLength * elementSize));
        }

        return true;
    }

    // x = min + q * scale; 32 at a time where vectorized.
    private static void Dequantize(ReadOnlySpan<byte> q, float min, float scale, Span<float> values)
    {
        var i = 0;
        if (Vector256.IsHardwareAccelerated && q.Length == GroupSize)
        {
            var vMin = Vector256.Create(min);
            var vScale = Vector256.Create(scale);
            var (low, high) = Vector256.Widen(Vector256.Create(q));
            var (a, b) = Vector256.Widen(low);
            var (c, d) = Vector256.Widen(high);
            (vMin + (Vector256.ConvertToSingle(a) * vScale)).CopyTo(values);
            (vMin + (Vector256.ConvertToSingle(b) * vScale)).CopyTo(values[8..]);
            (vMin + (Vector256.ConvertToSingle(c) * vScale)).CopyTo(values[16..]);
            (vMin + (Vector256.ConvertToSingle(d) * vScale)).CopyTo(values[24..]);
            i = GroupSize;
        }

        for (; i < values.Length; i++)
        {
            values[i] = min + (q[i] * scale);
        }
    }

    /// <summary>The scale of each group, for error bounds in tests and measurements (element error &lt;= scale / 2 + dtype rounding).</summary>
    internal static float[] GroupScales(ReadOnlySpan<byte> encoded, KvFormat format, int rawLength)
    {
        var paramSize = ParamSize(format.DataType);
        var groups = GroupCount(rawLength / KvElements.ElementSize(format.DataType));
        var scales = new float[groups];
        for (var g = 0; g < groups; g++)
        {
            scales[g] = paramSize == 2
                ? (float)BinaryPrimitives.ReadHalfLittleEndian(encoded[((g * 4) + 2)..])
                : BinaryPrimitives.ReadSingleLittleEndian(encoded[((g * 8) + 4)..]);
        }

        return scales;
    }

    private static int ParamSize(KvDataType type) => type == KvDataType.F16 ? 2 : 4;

    private static int GroupCount(int elements) => (elements + GroupSize - 1) / GroupSize;

    private static int EncodedLength(int elements, int paramSize) => checked((GroupCount(elements) * 2 * paramSize) + elements);
}
