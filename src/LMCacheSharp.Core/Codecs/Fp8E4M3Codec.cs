using System.Buffers.Binary;
using System.Numerics.Tensors;
using System.Runtime.Intrinsics;
using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Core.Codecs;

/// <summary>
/// Lossy: FP8 e4m3 (OCP "E4M3FN": 4 exponent bits, bias 7, 3 mantissa bits, subnormals, no infinities, largest value 448)
/// with one scale per contiguous group of <see cref="GroupSize"/> elements: scale = max|x| / 448, each element stored as
/// e4m3(x / scale), rounded to nearest even. The relative error of an element is at most 2^-4 (half a unit of the 3-bit
/// mantissa), and elements below 2^-6 * scale are off by at most 2^-10 * scale. Scales are f16 for f16 KV (rounded up)
/// and f32 otherwise: 34 bytes per 32 f16 elements (1.88x smaller), 36 bytes per 32 f32 elements (3.56x). f16, bf16 and
/// f32 KV in plain row layouts only: <see cref="Encode"/> throws <see cref="NotSupportedException"/> for already-quantized KV
/// (q8_0, q4_0) and for engine-native layouts (a llama.cpp state blob).
/// Encoded layout: all groups' scales, then one byte per element.
/// </summary>
public sealed class Fp8E4M3Codec : IKvCodec
{
    /// <summary>Elements per scale group.</summary>
    public const int GroupSize = 32;

    /// <summary>Largest finite e4m3 value.</summary>
    public const float MaxValue = 448f;

    private static readonly float[] DecodeTable = BuildDecodeTable();

    /// <summary>The shared instance.</summary>
    public static Fp8E4M3Codec Instance { get; } = new();

    /// <inheritdoc />
    public KvCodecId Id => KvCodecId.Fp8;

    /// <inheritdoc />
    public string Name => "fp8";

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
            throw new ArgumentException($"fp8: payload length {raw.Length} is not a multiple of the {elementSize}-byte element.", nameof(raw));
        }

        var type = format.DataType;
        var paramSize = ParamSize(type);
        var elements = raw.Length / elementSize;
        var length = EncodedLength(elements, paramSize);
        if (destination.Length < length)
        {
            throw new ArgumentException("fp8: destination too small.", nameof(destination));
        }

        var groups = GroupCount(elements);
        var scales = destination[..(groups * paramSize)];
        var codes = destination.Slice(scales.Length, elements);
        Span<float> block = stackalloc float[KvElements.BlockElements];
        for (var blockStart = 0; blockStart < elements; blockStart += KvElements.BlockElements)
        {
            var blockLength = Math.Min(KvElements.BlockElements, elements - blockStart);
            KvElements.Load(raw.Slice(blockStart * elementSize, blockLength * elementSize), type, block[..blockLength]);
            for (var start = 0; start < blockLength; start += GroupSize)
            {
                var g = (blockStart + start) / GroupSize;
                var values = block.Slice(start, Math.Min(GroupSize, blockLength - start));
                var absMax = TensorPrimitives.MaxMagnitude(values);
                absMax = MathF.Abs(absMax);
                if (!float.IsFinite(absMax))
                {
                    throw new NotSupportedException("fp8: the KV holds non-finite values (NaN or infinity), which cannot be quantized.");
                }

                var scale = absMax / MaxValue;
                if (paramSize == 2)
                {
                    var h = (Half)scale;
                    if ((float)h < scale)
                    {
                        h = Half.BitIncrement(h);
                    }

                    scale = (float)h;
                    BinaryPrimitives.WriteHalfLittleEndian(scales[(g * 2)..], h);
                }
                else
                {
                    if (scale * MaxValue < absMax)
                    {
                        scale = MathF.BitIncrement(scale);
                    }

                    BinaryPrimitives.WriteSingleLittleEndian(scales[(g * 4)..], scale);
                }

                var c = codes.Slice(blockStart + start, values.Length);
                if (scale == 0)
                {
                    c.Clear();
                    continue;
                }

                EncodeGroup(values, 1.0f / scale, c);
            }
        }

        return length;
    }

    // c[i] = ToE4M3(values[i] * inverse); 32 at a time where vectorized (bit-identical to the scalar path).
    private static void EncodeGroup(ReadOnlySpan<float> values, float inverse, Span<byte> c)
    {
        var i = 0;
        if (Vector256.IsHardwareAccelerated && values.Length == GroupSize)
        {
            var vInverse = Vector256.Create(inverse);
            var low = Vector256.Narrow(Codes(Vector256.Create(values[..8]) * vInverse), Codes(Vector256.Create(values[8..16]) * vInverse)).AsUInt16();
            var high = Vector256.Narrow(Codes(Vector256.Create(values[16..24]) * vInverse), Codes(Vector256.Create(values[24..32]) * vInverse)).AsUInt16();
            Vector256.Narrow(low, high).CopyTo(c);
            i = GroupSize;
        }

        for (; i < values.Length; i++)
        {
            c[i] = ToE4M3(values[i] * inverse);
        }
    }

    // The vector form of ToE4M3 for finite inputs: subnormal codes by rounding a * 512, normal codes by rounding the
    // mantissa to 3 bits in the float's bits, saturated at 0x7E (448).
    private static Vector256<int> Codes(Vector256<float> x)
    {
        var bits = x.AsUInt32();
        var sign = (bits >> 24) & Vector256.Create(0x80u);
        var a = Vector256.Abs(x);
        var subnormal = Vector256.ConvertToUInt32(Vector256.Round(a * Vector256.Create(512f)));
        var ab = a.AsUInt32();
        ab += Vector256.Create(0x7FFFFu) + ((ab >> 20) & Vector256<uint>.One);
        var normal = Vector256.Min(((ab >> 23) - Vector256.Create(120u)) << 3 | ((ab >> 20) & Vector256.Create(7u)), Vector256.Create(0x7Eu));
        var isSubnormal = Vector256.LessThan(a, Vector256.Create(0.015625f)).AsUInt32();
        return (Vector256.ConditionalSelect(isSubnormal, subnormal, normal) | sign).AsInt32();
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
        var scales = encoded[..(groups * paramSize)];
        var codes = encoded.Slice(scales.Length, elements);
        Span<float> block = stackalloc float[KvElements.BlockElements];
        var table = DecodeTable;
        for (var blockStart = 0; blockStart < elements; blockStart += KvElements.BlockElements)
        {
            var blockLength = Math.Min(KvElements.BlockElements, elements - blockStart);
            for (var start = 0; start < blockLength; start += GroupSize)
            {
                var g = (blockStart + start) / GroupSize;
                var scale = paramSize == 2
                    ? (float)BinaryPrimitives.ReadHalfLittleEndian(scales[(g * 2)..])
                    : BinaryPrimitives.ReadSingleLittleEndian(scales[(g * 4)..]);
                if (!float.IsFinite(scale) || scale < 0)
                {
                    return false;
                }

                var values = block.Slice(start, Math.Min(GroupSize, blockLength - start));
                var c = codes.Slice(blockStart + start, values.Length);
                for (var i = 0; i < values.Length; i++)
                {
                    var code = c[i];
                    if ((code & 0x7F) == 0x7F)
                    {
                        return false; // the NaN codes: the encoder never writes them
                    }

                    values[i] = table[code] * scale;
                }
            }

            KvElements.Store(block[..blockLength], type, destination.Slice(blockStart * elementSize, blockLength * elementSize));
        }

        return true;
    }

    /// <summary>The e4m3 code of <paramref name="value"/>: round to nearest even, saturating at +-448.</summary>
    public static byte ToE4M3(float value)
    {
        var sign = (byte)((BitConverter.SingleToUInt32Bits(value) >> 24) & 0x80);
        var a = MathF.Abs(value);
        if (!(a < MaxValue))
        {
            return (byte)(sign | 0x7E); // saturate (the codec never passes NaN)
        }

        if (a < 0.015625f)
        {
            // Subnormal range: multiples of 2^-9; code 8 (= 8 * 2^-9) is the smallest normal, 2^-6.
            return (byte)(sign | (int)MathF.Round(a * 512f, MidpointRounding.ToEven));
        }

        var bits = BitConverter.SingleToUInt32Bits(a);
        bits += 0x7FFFF + ((bits >> 20) & 1); // round the 23-bit mantissa to 3 bits, ties to even
        var exponent = (int)(bits >> 23) - 127 + 7;
        var mantissa = (bits >> 20) & 7;
        if (exponent > 15 || (exponent == 15 && mantissa == 7))
        {
            return (byte)(sign | 0x7E);
        }

        return (byte)(sign | (exponent << 3) | (int)mantissa);
    }

    /// <summary>The value of an e4m3 code (NaN for 0x7F and 0xFF).</summary>
    public static float FromE4M3(byte code) => DecodeTable[code];

    private static float[] BuildDecodeTable()
    {
        var table = new float[256];
        for (var c = 0; c < 256; c++)
        {
            var exponent = (c >> 3) & 15;
            var mantissa = c & 7;
            float v;
            if (exponent == 15 && mantissa == 7)
            {
                v = float.NaN;
            }
            else if (exponent == 0)
            {
                v = mantissa / 512f;
            }
            else
            {
                v = (1 + (mantissa / 8f)) * MathF.ScaleB(1f, exponent - 7);
            }

            table[c] = (c & 0x80) != 0 ? -v : v;
        }

        return table;
    }

    private static int ParamSize(KvDataType type) => type == KvDataType.F16 ? 2 : 4;

    private static int GroupCount(int elements) => (elements + GroupSize - 1) / GroupSize;

    private static int EncodedLength(int elements, int paramSize) => checked((GroupCount(elements) * paramSize) + elements);
}
