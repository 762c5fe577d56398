using System.Buffers.Binary;
using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Core.Tests;

/// <summary>KV-like test payloads: normally distributed values (a few outlier channels) in a given dtype.</summary>
internal static class CodecTestData
{
    public static KvFormat Format(KvDataType type, int rowElements = 64, int layers = 2)
    {
        var rowBytes = type switch
        {
            KvDataType.F32 => rowElements * 4,
            KvDataType.Q8_0 => rowElements / 32 * 34,
            _ => rowElements * 2,
        };
        return new KvFormat(layers, rowBytes, rowBytes, type, KvLayout.LayerKV);
    }

    public static byte[] KvLike(KvDataType type, int elements, int seed, float sigma = 1f, int outlierEvery = 61)
    {
        var random = new Random(seed);
        var size = type == KvDataType.F32 ? 4 : 2;
        var bytes = new byte[elements * size];
        for (var i = 0; i < elements; i++)
        {
            var u1 = 1.0 - random.NextDouble();
            var u2 = random.NextDouble();
            var v = (float)(sigma * Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
            if (i % outlierEvery == 7)
            {
                v *= 20; // outlier channels, as real keys have
            }

            Write(type, bytes, i, v);
        }

        return bytes;
    }

    public static void Write(KvDataType type, Span<byte> bytes, int index, float v)
    {
        switch (type)
        {
            case KvDataType.F32:
                BinaryPrimitives.WriteSingleLittleEndian(bytes[(index * 4)..], v);
                break;
            case KvDataType.F16:
                BinaryPrimitives.WriteHalfLittleEndian(bytes[(index * 2)..], (Half)v);
                break;
            default:
                BinaryPrimitives.WriteUInt16LittleEndian(bytes[(index * 2)..], (ushort)(BitConverter.SingleToUInt32Bits(v) >> 16));
                break;
        }
    }

    public static float Read(KvDataType type, ReadOnlySpan<byte> bytes, int index) => type switch
    {
        KvDataType.F32 => BinaryPrimitives.ReadSingleLittleEndian(bytes[(index * 4)..]),
        KvDataType.F16 => (float)BinaryPrimitives.ReadHalfLittleEndian(bytes[(index * 2)..]),
        _ => BitConverter.UInt32BitsToSingle((uint)BinaryPrimitives.ReadUInt16LittleEndian(bytes[(index * 2)..]) << 16),
    };

    /// <summary>Half a unit in the last place of <paramref name="v"/> in <paramref name="type"/>: the rounding of a decoded value.</summary>
    public static float HalfUlp(KvDataType type, float v)
    {
        var a = MathF.Abs(v);
        return type switch
        {
            KvDataType.F32 => MathF.BitIncrement(a) - a,
            KvDataType.F16 => (float)Half.BitIncrement((Half)a) - (float)(Half)a,
            _ => MathF.Max(a, 1e-38f) * (1f / 128f),
        };
    }
}
