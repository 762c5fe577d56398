using System.Buffers.Binary;
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
        Span<float> x = stackalloc float[GroupSize];
        for (var g = 0; g < groups; g++)
        {
            var start = g * GroupSize;
            var n = Math.Min(GroupSize, elements - start);
            var values = x[..n];
            KvElements.Load(raw.Slice(start * elementSize, n * elementSize), type, values);
            var min = float.PositiveInfinity;
            var max = float.NegativeInfinity;
            foreach (var v in values)
            {
                min = Math.Min(min, v);
                max = Math.Max(max, v);
            }

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

            var q = quantized.Slice(start, n);
            if (scale == 0)
            {
                q.Clear();
                continue;
            }

            var inverse = 1.0f / scale;
            for (var i = 0; i < n; i++)
            {
                var level = MathF.Round((values[i] - min) * inverse);
                q[i] = (byte)Math.Clamp(level, 0f, 255f);
            }
        }

        return length;
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
        Span<float> x = stackalloc float[GroupSize];
        for (var g = 0; g < groups; g++)
        {
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

            var start = g * GroupSize;
            var n = Math.Min(GroupSize, elements - start);
            var q = quantized.Slice(start, n);
            var values = x[..n];
            for (var i = 0; i < n; i++)
            {
                values[i] = min + (q[i] * scale);
            }

            KvElements.Store(values, type, destination.Slice(start * elementSize, n * elementSize));
        }

        return true;
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
