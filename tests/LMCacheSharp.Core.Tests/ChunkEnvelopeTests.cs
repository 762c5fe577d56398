using LMCacheSharp.Core.Codecs;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Core.Tests;

public sealed class ChunkEnvelopeTests : IDisposable
{
    private readonly KvBufferPool _pool = new();

    private (byte[] Bytes, ChunkHash Key, KvChunk Chunk) Serialized(int tokens = 16)
    {
        var chunk = _pool.Rent((int)TestData.SmallFormat.PayloadLength(tokens));
        new Random(tokens).NextBytes(chunk.Span);
        chunk.Key = PrefixHasher.ComputeKeys(TestData.Namespace(), TestData.Tokens(tokens, 1), tokens)[0];
        chunk.TokenCount = tokens;
        chunk.Format = TestData.SmallFormat;
        chunk.SealChecksum();
        var buffer = new byte[ChunkEnvelope.MaxSerializedLength(chunk, RawCodec.Instance)];
        var n = ChunkEnvelope.Serialize(chunk, RawCodec.Instance, buffer);
        return (buffer[..n], chunk.Key, chunk);
    }

    [Fact]
    public void A_raw_header_whose_two_checksums_or_lengths_differ_is_refused_even_with_a_valid_header_checksum()
    {
        var (bytes, key, original) = Serialized();
        using (original)
        {
            // Someone rewrites the raw checksum field and recomputes the header's own checksum: the payload no longer
            // matches what the header says of it, in a way the header checksum cannot see.
            var forged = (byte[])bytes.Clone();
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(forged.AsSpan(48), 12345);
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(forged.AsSpan(120), System.IO.Hashing.XxHash3.HashToUInt64(forged.AsSpan(0, 120)));
            Assert.Equal(ChunkReadStatus.LengthMismatch, ChunkEnvelope.TryReadHeader(forged, out _));
            Assert.NotEqual(ChunkReadStatus.Ok, ChunkEnvelope.TryDeserialize(forged, key, TestData.SmallFormat, _pool, out var none));
            Assert.Null(none);
        }
    }

    [Fact]
    public void Round_trip_restores_payload_and_metadata_exactly()
    {
        var (bytes, key, original) = Serialized();
        using (original)
        {
            Assert.Equal(ChunkReadStatus.Ok, ChunkEnvelope.TryDeserialize(bytes, key, TestData.SmallFormat, _pool, out var copy));
            using (copy)
            {
                Assert.True(copy!.Span.SequenceEqual(original.Span));
                Assert.Equal(original.Checksum, copy.Checksum);
                Assert.Equal(16, copy.TokenCount);
                Assert.Equal(TestData.SmallFormat, copy.Format);
                Assert.Equal(key, copy.Key);
            }
        }
    }

    [Fact]
    public void Every_single_byte_flip_is_rejected()
    {
        var (bytes, key, original) = Serialized(4);
        original.Release();
        for (var i = 0; i < bytes.Length; i++)
        {
            var corrupted = (byte[])bytes.Clone();
            corrupted[i] ^= 0x01;
            var status = ChunkEnvelope.TryDeserialize(corrupted, key, TestData.SmallFormat, _pool, out var chunk);
            if (i is >= 96 and < 120)
            {
                // Reserved header bytes are covered by the header checksum too.
                Assert.Equal(ChunkReadStatus.HeaderCorrupt, status);
            }

            Assert.NotEqual(ChunkReadStatus.Ok, status);
            Assert.Null(chunk);
        }

        Assert.Equal(0, _pool.RentedCount);
    }

    [Fact]
    public void Truncation_at_every_length_is_rejected_without_throwing()
    {
        var (bytes, key, original) = Serialized(4);
        original.Release();
        for (var n = 0; n < bytes.Length; n++)
        {
            Assert.NotEqual(ChunkReadStatus.Ok, ChunkEnvelope.TryDeserialize(bytes.AsSpan(0, n), key, null, _pool, out _));
        }

        Assert.Equal(ChunkReadStatus.LengthMismatch, ChunkEnvelope.TryDeserialize([.. bytes, 0], key, null, _pool, out _));
    }

    [Fact]
    public void Wrong_key_wrong_format_and_garbage_are_misses()
    {
        var (bytes, key, original) = Serialized();
        original.Release();
        var otherKey = PrefixHasher.ComputeKeys(TestData.Namespace("other"), [1], 1)[0];
        Assert.Equal(ChunkReadStatus.KeyMismatch, ChunkEnvelope.TryDeserialize(bytes, otherKey, null, _pool, out _));
        Assert.Equal(ChunkReadStatus.FormatMismatch,
            ChunkEnvelope.TryDeserialize(bytes, key, TestData.SmallFormat with { DataType = KvDataType.F32 }, _pool, out _));
        var garbage = new byte[500];
        new Random(3).NextBytes(garbage);
        Assert.Equal(ChunkReadStatus.BadMagic, ChunkEnvelope.TryDeserialize(garbage, key, null, _pool, out _));
        Assert.Equal(0, _pool.RentedCount);
    }

    public void Dispose()
    {
        Assert.Equal(0, _pool.RentedCount);
        _pool.Dispose();
    }
}
