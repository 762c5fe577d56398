using CsCheck;
using LMCacheSharp.Core.Codecs;
using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Core.Tests;

public abstract class LosslessCodecTests
{
    protected abstract IKvCodec Codec { get; }

    // LZ4 has no entropy coding: normally distributed floats (no repeated byte sequences) do not shrink; zstd's Huffman
    // stage gains on the shuffled exponent bytes.
    protected abstract bool ShrinksNoisyFloats { get; }

    public static TheoryData<KvDataType> Types => [KvDataType.F16, KvDataType.F32, KvDataType.BF16, KvDataType.Q8_0];

    [Theory]
    [MemberData(nameof(Types))]
    public void Kv_like_payloads_round_trip_bit_exactly_and_compress(KvDataType type)
    {
        var format = CodecTestData.Format(type);
        var raw = type == KvDataType.Q8_0 ? RandomBytes(34 * 64, 1) : CodecTestData.KvLike(type, 16384, 1);
        var encoded = new byte[Codec.MaxEncodedLength(raw.Length, format)];
        var n = Codec.Encode(raw, format, encoded);
        var decoded = new byte[raw.Length];
        Assert.True(Codec.TryDecode(encoded.AsSpan(0, n), format, decoded));
        Assert.Equal(raw, decoded);
        if (ShrinksNoisyFloats && type != KvDataType.Q8_0)
        {
            // Normal-ish floats have few distinct exponent bytes: the shuffled payload must shrink.
            Assert.True(n < raw.Length, $"{Codec.Name} did not compress {type} KV: {n} >= {raw.Length}");
        }
    }

    [Fact]
    public void Property_any_bytes_round_trip_bit_exactly()
    {
        var types = Gen.OneOfConst(KvDataType.F16, KvDataType.F32, KvDataType.BF16, KvDataType.Q8_0);
        Gen.Select(Gen.Byte.Array[0, 5000], types, Gen.Bool).Sample((bytes, type, repetitive) =>
        {
            if (repetitive)
            {
                for (var i = 8; i < bytes.Length; i++)
                {
                    bytes[i] = bytes[i % 8];
                }
            }

            var format = CodecTestData.Format(type == KvDataType.Q8_0 ? KvDataType.F16 : type) with { DataType = type };
            var encoded = new byte[Codec.MaxEncodedLength(bytes.Length, format)];
            var n = Codec.Encode(bytes, format, encoded);
            var decoded = new byte[bytes.Length];
            Assert.True(Codec.TryDecode(encoded.AsSpan(0, n), format, decoded));
            Assert.Equal(bytes, decoded);
        }, iter: 300);
    }

    [Fact]
    public void Malformed_or_truncated_input_is_refused_without_throwing()
    {
        var format = CodecTestData.Format(KvDataType.F16);
        var raw = CodecTestData.KvLike(KvDataType.F16, 4096, 2);
        var encoded = new byte[Codec.MaxEncodedLength(raw.Length, format)];
        var n = Codec.Encode(raw, format, encoded);
        var decoded = new byte[raw.Length];
        for (var cut = 0; cut < n; cut += Math.Max(1, n / 50))
        {
            Assert.False(Codec.TryDecode(encoded.AsSpan(0, cut), format, decoded));
        }

        // Too short a destination, and random garbage: false or a decode of the right length, never an exception.
        Assert.False(Codec.TryDecode(encoded.AsSpan(0, n), format, new byte[raw.Length - 2]));
        Gen.Byte.Array[0, 3000].Sample(garbage => { Codec.TryDecode(garbage, format, decoded); }, iter: 300);
    }

    private static byte[] RandomBytes(int n, int seed)
    {
        var bytes = new byte[n];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }
}

public sealed class Lz4CodecTests : LosslessCodecTests
{
    protected override IKvCodec Codec => Lz4Codec.Instance;

    protected override bool ShrinksNoisyFloats => false;
}

public sealed class ZstdCodecTests : LosslessCodecTests
{
    protected override IKvCodec Codec => ZstdCodec.Instance;

    protected override bool ShrinksNoisyFloats => true;
}

public sealed class RawCodecRoundTripTests
{
    [Fact]
    public void Raw_is_the_identity()
    {
        var raw = CodecTestData.KvLike(KvDataType.F16, 100, 3);
        var encoded = new byte[RawCodec.Instance.MaxEncodedLength(raw.Length, default)];
        Assert.Equal(raw.Length, RawCodec.Instance.Encode(raw, default, encoded));
        Assert.Equal(raw, encoded);
    }
}

public sealed class KvElementsTests
{
    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void Shuffle_matches_the_scalar_definition_byte_for_byte(int elementSize)
    {
        // The encoded format must not depend on the machine's SIMD support: compare with the plain definition.
        foreach (var length in new[] { 0, 1, 63, 64, 65, 1000, 4096 + 3 })
        {
            var source = new byte[length];
            new Random(length).NextBytes(source);
            var n = length / elementSize;
            var expected = new byte[length];
            for (var b = 0; b < elementSize; b++)
            {
                for (var i = 0; i < n; i++)
                {
                    expected[(b * n) + i] = source[(i * elementSize) + b];
                }
            }

            source.AsSpan(n * elementSize).CopyTo(expected.AsSpan(n * elementSize));
            var shuffled = new byte[length];
            KvElements.Shuffle(source, shuffled, elementSize);
            Assert.Equal(expected, shuffled);
            var back = new byte[length];
            KvElements.Unshuffle(shuffled, back, elementSize);
            Assert.Equal(source, back);
        }
    }
}
