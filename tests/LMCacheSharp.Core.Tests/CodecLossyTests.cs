using CsCheck;
using LMCacheSharp.Core.Codecs;
using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Core.Tests;

public sealed class Int8GroupCodecTests
{
    private static readonly Int8GroupCodec Codec = Int8GroupCodec.Instance;

    public static TheoryData<KvDataType> Types => [KvDataType.F16, KvDataType.F32, KvDataType.BF16];

    [Theory]
    [MemberData(nameof(Types))]
    public void Every_element_is_within_half_a_step_of_its_group(KvDataType type)
    {
        foreach (var sigma in new[] { 1f, 1e-3f, 300f })
        {
            var raw = CodecTestData.KvLike(type, 8192 + 17, 5, sigma); // a partial last group too
            AssertWithinBound(type, raw);
        }
    }

    [Fact]
    public void Property_error_bound_holds_for_random_groups()
    {
        var types = Gen.OneOfConst(KvDataType.F16, KvDataType.F32, KvDataType.BF16);
        var values = Gen.OneOf(Gen.Single[-100f, 100f], Gen.Single[-1e-4f, 1e-4f], Gen.Const(0f), Gen.Const(3.5f));
        Gen.Select(types, values.Array[1, 300]).Sample((type, floats) =>
        {
            var size = type == KvDataType.F32 ? 4 : 2;
            var raw = new byte[floats.Length * size];
            for (var i = 0; i < floats.Length; i++)
            {
                CodecTestData.Write(type, raw, i, floats[i]);
            }

            AssertWithinBound(type, raw);
        }, iter: 500);
    }

    [Fact]
    public void Property_whole_groups_quantize_exactly_as_the_scalar_rounding()
    {
        // Full groups take the vectorized path: every level must equal the scalar definition with the stored parameters.
        var format = CodecTestData.Format(KvDataType.F32);
        Gen.Single[-50f, 50f].Array[32].Array[1, 4].Sample(groups =>
        {
            var floats = groups.SelectMany(g => g).ToArray();
            var raw = new byte[floats.Length * 4];
            Buffer.BlockCopy(floats, 0, raw, 0, raw.Length);
            var encoded = new byte[Codec.MaxEncodedLength(raw.Length, format)];
            Codec.Encode(raw, format, encoded);
            var groupCount = floats.Length / 32;
            for (var i = 0; i < floats.Length; i++)
            {
                var min = BitConverter.ToSingle(encoded, (i / 32) * 8);
                var scale = BitConverter.ToSingle(encoded, ((i / 32) * 8) + 4);
                var expected = scale == 0 ? (byte)0 : (byte)Math.Clamp(MathF.Round((floats[i] - min) * (1.0f / scale)), 0f, 255f);
                Assert.Equal(expected, encoded[(groupCount * 8) + i]);
            }
        }, iter: 300);
    }

    [Fact]
    public void Constant_groups_decode_exactly_and_the_size_is_as_documented()
    {
        var format = CodecTestData.Format(KvDataType.F16);
        var raw = new byte[64 * 2];
        for (var i = 0; i < 64; i++)
        {
            CodecTestData.Write(KvDataType.F16, raw, i, 0.375f);
        }

        var encoded = new byte[Codec.MaxEncodedLength(raw.Length, format)];
        Assert.Equal(2 * 36, Codec.Encode(raw, format, encoded)); // 36 bytes per 32 f16 elements
        var decoded = new byte[raw.Length];
        Assert.True(Codec.TryDecode(encoded, format, decoded));
        Assert.Equal(raw, decoded);
        Assert.Equal(40, Codec.MaxEncodedLength(32 * 4, CodecTestData.Format(KvDataType.F32)));
    }

    [Fact]
    public void Already_quantized_kv_is_refused_with_NotSupportedException()
    {
        var format = CodecTestData.Format(KvDataType.Q8_0);
        var raw = new byte[format.PayloadLength(4)];
        var e = Assert.Throws<NotSupportedException>(() => Codec.Encode(raw, format, new byte[raw.Length * 2]));
        Assert.Contains("Q8_0", e.Message, StringComparison.Ordinal);
        Assert.False(Codec.TryDecode(raw, format, new byte[raw.Length]));
        Assert.Throws<NotSupportedException>(() => Fp8E4M3Codec.Instance.Encode(raw, format, new byte[raw.Length * 2]));
    }

    [Fact]
    public void Engine_native_layouts_are_refused_because_they_hold_headers()
    {
        var format = CodecTestData.Format(KvDataType.F16) with { Layout = KvLayout.LlamaCppSequenceState };
        var raw = new byte[format.PayloadLength(4)];
        foreach (var codec in new IKvCodec[] { Codec, Fp8E4M3Codec.Instance })
        {
            var e = Assert.Throws<NotSupportedException>(() => codec.Encode(raw, format, new byte[raw.Length * 2]));
            Assert.Contains("portable", e.Message, StringComparison.Ordinal);
            Assert.False(codec.TryDecode(new byte[codec.MaxEncodedLength(raw.Length, format)], format, raw));
        }
    }

    [Fact]
    public void Non_finite_values_are_refused_and_bad_encodings_do_not_decode()
    {
        var format = CodecTestData.Format(KvDataType.F32);
        var raw = new byte[32 * 4];
        CodecTestData.Write(KvDataType.F32, raw, 3, float.NaN);
        Assert.Throws<NotSupportedException>(() => Codec.Encode(raw, format, new byte[100 * 4]));
        var decoded = new byte[raw.Length];
        Assert.False(Codec.TryDecode(new byte[10], format, decoded)); // wrong length
        var encoded = new byte[Codec.MaxEncodedLength(raw.Length, format)];
        BitConverter.TryWriteBytes(encoded.AsSpan(4), float.PositiveInfinity); // scale of group 0
        Assert.False(Codec.TryDecode(encoded, format, decoded));
    }

    private static void AssertWithinBound(KvDataType type, byte[] raw)
    {
        var format = CodecTestData.Format(type);
        var size = type == KvDataType.F32 ? 4 : 2;
        var encoded = new byte[Codec.MaxEncodedLength(raw.Length, format)];
        var n = Codec.Encode(raw, format, encoded);
        Assert.Equal(encoded.Length, n);
        var decoded = new byte[raw.Length];
        Assert.True(Codec.TryDecode(encoded, format, decoded));
        var scales = Int8GroupCodec.GroupScales(encoded, format, raw.Length);
        for (var i = 0; i < raw.Length / size; i++)
        {
            var x = CodecTestData.Read(type, raw, i);
            var y = CodecTestData.Read(type, decoded, i);
            var bound = (scales[i / Int8GroupCodec.GroupSize] * 0.5f * 1.0001f) + CodecTestData.HalfUlp(type, y) + 1e-30f;
            Assert.True(MathF.Abs(x - y) <= bound, $"{type} element {i}: {x} decoded as {y}, error {MathF.Abs(x - y)} > bound {bound}");
        }
    }
}

public sealed class Fp8E4M3CodecTests
{
    private static readonly Fp8E4M3Codec Codec = Fp8E4M3Codec.Instance;

    [Fact]
    public void Every_finite_code_round_trips_and_is_ordered()
    {
        var previous = -1f;
        for (var c = 0; c < 127; c++)
        {
            var v = Fp8E4M3Codec.FromE4M3((byte)c);
            Assert.Equal((byte)c, Fp8E4M3Codec.ToE4M3(v));
            Assert.Equal((byte)(c | 0x80), Fp8E4M3Codec.ToE4M3(-v == 0 ? -0f : -v));
            Assert.True(v > previous);
            previous = v;
        }

        Assert.Equal(448f, Fp8E4M3Codec.FromE4M3(0x7E));
        Assert.True(float.IsNaN(Fp8E4M3Codec.FromE4M3(0x7F)));
        Assert.Equal(0x7E, Fp8E4M3Codec.ToE4M3(1e9f)); // saturates
        Assert.Equal(1f / 512, Fp8E4M3Codec.FromE4M3(1)); // smallest subnormal
    }

    [Fact]
    public void Property_encoding_picks_the_nearest_code()
    {
        Gen.Single[-460f, 460f].Sample(x =>
        {
            var code = Fp8E4M3Codec.ToE4M3(x);
            var error = MathF.Abs(Fp8E4M3Codec.FromE4M3(code) - Math.Clamp(x, -448f, 448f));
            for (var c = 0; c < 256; c++)
            {
                var v = Fp8E4M3Codec.FromE4M3((byte)c);
                if (!float.IsNaN(v))
                {
                    Assert.True(error <= MathF.Abs(v - Math.Clamp(x, -448f, 448f)), $"{x}: code {code:x2} is not the nearest ({c:x2} is closer)");
                }
            }
        }, iter: 2000);
    }

    [Theory]
    [InlineData(KvDataType.F16)]
    [InlineData(KvDataType.F32)]
    [InlineData(KvDataType.BF16)]
    public void Elements_are_within_the_relative_bound(KvDataType type)
    {
        var format = CodecTestData.Format(type);
        var size = type == KvDataType.F32 ? 4 : 2;
        var raw = CodecTestData.KvLike(type, 8192 + 5, 9);
        var encoded = new byte[Codec.MaxEncodedLength(raw.Length, format)];
        Assert.Equal(encoded.Length, Codec.Encode(raw, format, encoded));
        var decoded = new byte[raw.Length];
        Assert.True(Codec.TryDecode(encoded, format, decoded));
        var elements = raw.Length / size;
        for (var g = 0; g * 32 < elements; g++)
        {
            var absMax = 0f;
            for (var i = g * 32; i < Math.Min(elements, (g + 1) * 32); i++)
            {
                absMax = MathF.Max(absMax, MathF.Abs(CodecTestData.Read(type, raw, i)));
            }

            var scale = absMax / 448f * 1.001f;
            for (var i = g * 32; i < Math.Min(elements, (g + 1) * 32); i++)
            {
                var x = CodecTestData.Read(type, raw, i);
                var y = CodecTestData.Read(type, decoded, i);
                var bound = MathF.Max(MathF.Abs(x) / 16f * 1.001f, scale / 1024f) + CodecTestData.HalfUlp(type, y);
                Assert.True(MathF.Abs(x - y) <= bound, $"{type} element {i}: {x} -> {y}, bound {bound}");
            }
        }
    }

    [Fact]
    public void Property_whole_groups_encode_exactly_as_the_scalar_rounding()
    {
        // Full groups take the vectorized path: every code must equal ToE4M3(x / scale) with the stored scale.
        var format = CodecTestData.Format(KvDataType.F32);
        var values = Gen.OneOf(Gen.Single[-1000f, 1000f], Gen.Single[-0.01f, 0.01f], Gen.Const(0f), Gen.Const(-0f), Gen.Single);
        values.Array[32].Array[1, 4].Sample(groups =>
        {
            var floats = groups.SelectMany(g => g).Select(v => float.IsFinite(v) ? v : 1f).ToArray();
            var raw = new byte[floats.Length * 4];
            Buffer.BlockCopy(floats, 0, raw, 0, raw.Length);
            var encoded = new byte[Codec.MaxEncodedLength(raw.Length, format)];
            Codec.Encode(raw, format, encoded);
            var groupCount = floats.Length / 32;
            for (var i = 0; i < floats.Length; i++)
            {
                var scale = BitConverter.ToSingle(encoded, (i / 32) * 4);
                var expected = scale == 0 ? (byte)0 : Fp8E4M3Codec.ToE4M3(floats[i] * (1.0f / scale));
                Assert.Equal(expected, encoded[(groupCount * 4) + i]);
            }
        }, iter: 300);
    }

    [Fact]
    public void Size_is_as_documented_and_nan_codes_do_not_decode()
    {
        var format = CodecTestData.Format(KvDataType.F16);
        Assert.Equal(34, Codec.MaxEncodedLength(64, format));
        var encoded = new byte[34];
        BitConverter.TryWriteBytes(encoded, (Half)1);
        encoded[5] = 0x7F;
        Assert.False(Codec.TryDecode(encoded, format, new byte[64]));
    }
}
