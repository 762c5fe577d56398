using System.Buffers;
using LMCacheSharp.Core.Events;
using LMCacheSharp.Core.Keys;
using MessagePack;

namespace LMCacheSharp.KvEvents.Tests;

public class KvEventBatchWriterTests
{
    internal static ChunkHash Key(long first8)
    {
        var bytes = new byte[ChunkHash.Size];
        System.Buffers.Binary.BinaryPrimitives.WriteInt64BigEndian(bytes, first8);
        bytes[31] = 0x5A; // the rest of the hash plays no part in the block hash
        return new ChunkHash(bytes);
    }

    [Fact]
    public void A_batch_is_byte_for_byte_what_msgspec_writes_for_vLLMs_array_like_structs()
    {
        var events = new[]
        {
            KvEvent.Stored(KvMedium.Cpu, Key(5), null, [1, 2]),
            KvEvent.Removed(KvMedium.Disk, Key(-2)),
            KvEvent.AllCleared(),
        };
        var bytes = KvEventBatchWriter.ToArray(1.5, events, blockSize: 2);

        var expected = new List<byte> { 0x93, 0xCB, 0x3F, 0xF8, 0, 0, 0, 0, 0, 0, 0x93 }; // [ts (float64), [3 events], ...
        expected.Add(0x97); // ["BlockStored", [5], nil, [1, 2], 2, nil, "CPU"]
        expected.Add(0xA0 | 11);
        expected.AddRange("BlockStored"u8.ToArray());
        expected.AddRange([0x91, 0x05, 0xC0, 0x92, 0x01, 0x02, 0x02, 0xC0, 0xA3]);
        expected.AddRange("CPU"u8.ToArray());
        expected.Add(0x93); // ["BlockRemoved", [-2], "DISK"]
        expected.Add(0xA0 | 12);
        expected.AddRange("BlockRemoved"u8.ToArray());
        expected.AddRange([0x91, 0xFE, 0xA4]);
        expected.AddRange("DISK"u8.ToArray());
        expected.Add(0x91); // ["AllBlocksCleared"]
        expected.Add(0xA0 | 16);
        expected.AddRange("AllBlocksCleared"u8.ToArray());
        expected.Add(0x00); // data_parallel_rank 0
        Assert.Equal(expected.ToArray(), bytes);
    }

    [Fact]
    public void A_block_hash_is_the_first_8_bytes_of_the_chunk_hash_big_endian_signed()
    {
        var key = ChunkHash.Parse("ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
        Assert.Equal(unchecked((long)0xFF01020304050607UL), KvEventWire.BlockHash(key));
        var bytes = KvEventBatchWriter.ToArray(0, [KvEvent.Removed(KvMedium.Cpu, key)], 16);
        var batch = KvEventBatchReader.Read(bytes);
        Assert.Equal(unchecked((long)0xFF01020304050607UL), Assert.IsType<BlockRemovedEvent>(batch.Events[0]).BlockHashes[0]);
        Assert.Contains((byte)0xD3, bytes); // int64, as msgspec writes a negative number below -2^31
    }

    [Fact]
    public void A_chain_of_whole_chunks_is_one_BlockStored_and_a_partial_chunk_stands_alone()
    {
        int[] T(int start) => [start, start + 1];
        var events = new[]
        {
            KvEvent.Stored(KvMedium.Cpu, Key(1), null, T(10)),
            KvEvent.Stored(KvMedium.Cpu, Key(2), Key(1), T(12)),
            KvEvent.Stored(KvMedium.Cpu, Key(3), Key(2), T(14)),
            KvEvent.Stored(KvMedium.Cpu, Key(4), Key(3), [16]), // a token-exact tail: fewer tokens than a block
            KvEvent.Stored(KvMedium.Disk, Key(1), null, T(10)), // another tier
            KvEvent.Stored(KvMedium.Disk, Key(9), Key(8), T(20)), // not the child of the one before
            KvEvent.Removed(KvMedium.Cpu, Key(1)),
            KvEvent.Removed(KvMedium.Cpu, Key(2)),
            KvEvent.Removed(KvMedium.Disk, Key(1)),
            KvEvent.Stored(KvMedium.Remote, Key(7), Key(6), null), // tokens unknown
        };
        var batch = KvEventBatchReader.Read(KvEventBatchWriter.ToArray(3, events, blockSize: 2));
        Assert.Collection(batch.Events,
            e => AssertStored(e, [1, 2, 3], null, [10, 11, 12, 13, 14, 15], 2, "CPU"),
            e => AssertStored(e, [4], 3, [16], 2, "CPU"),
            e => AssertStored(e, [1], null, [10, 11], 2, "DISK"),
            e => AssertStored(e, [9], 8, [20, 21], 2, "DISK"),
            e => Assert.Equal(new BlockRemovedEvent([1, 2], "CPU"), e with { }, RemovedComparer.Instance),
            e => Assert.Equal(new BlockRemovedEvent([1], "DISK"), e with { }, RemovedComparer.Instance),
            e => AssertStored(e, [7], 6, [], 0, "REMOTE")); // vLLM's offload placeholder shape
        Assert.Equal(0, batch.DataParallelRank);
        Assert.Equal(3, batch.Timestamp);
    }

    private static void AssertStored(KvWireEvent e, long[] hashes, long? parent, int[] tokens, int blockSize, string medium)
    {
        var stored = Assert.IsType<BlockStoredEvent>(e);
        Assert.Equal(hashes, stored.BlockHashes);
        Assert.Equal(parent, stored.ParentBlockHash);
        Assert.Equal(tokens, stored.TokenIds);
        Assert.Equal(blockSize, stored.BlockSize);
        Assert.Null(stored.LoraId);
        Assert.Equal(medium, stored.Medium);
    }

    private sealed class RemovedComparer : IEqualityComparer<KvWireEvent>
    {
        public static readonly RemovedComparer Instance = new();

        public bool Equals(KvWireEvent? x, KvWireEvent? y) =>
            x is BlockRemovedEvent a && y is BlockRemovedEvent b && a.BlockHashes.SequenceEqual(b.BlockHashes) && a.Medium == b.Medium;

        public int GetHashCode(KvWireEvent obj) => 0;
    }
}

public class KvEventBatchReaderTests
{
    private delegate void WriteAction(ref MessagePackWriter writer);

    private static byte[] Write(WriteAction write)
    {
        var buffer = new ArrayBufferWriter<byte>();
        var writer = new MessagePackWriter(buffer);
        write(ref writer);
        writer.Flush();
        return buffer.WrittenSpan.ToArray();
    }

    [Fact]
    public void The_map_layout_of_newer_vLLM_unsigned_hashes_digest_bytes_and_unknown_fields_decode()
    {
        var digest = Enumerable.Range(0, 32).Select(i => (byte)i).ToArray();
        var bytes = Write((ref MessagePackWriter w) =>
        {
            w.WriteArrayHeader(3);
            w.Write(1700000000.25);
            w.WriteArrayHeader(3);
            w.WriteMapHeader(8); // {"type": "BlockStored", ...} with fields vLLM added since
            w.Write("type");
            w.Write("BlockStored");
            w.Write("block_hashes");
            w.WriteArrayHeader(2);
            w.Write(ulong.MaxValue - 1); // uint64, as vLLM's low 64 bits of a digest often are
            w.Write(digest);
            w.Write("parent_block_hash");
            w.WriteNil();
            w.Write("token_ids");
            w.WriteArrayHeader(2);
            w.Write(7);
            w.Write(8);
            w.Write("block_size");
            w.Write(1);
            w.Write("lora_name");
            w.WriteNil();
            w.Write("medium");
            w.Write("GPU");
            w.Write("group_idx");
            w.Write(0);
            w.WriteArrayHeader(4); // the legacy array layout with a trailing field (lora_name)
            w.Write("BlockRemoved");
            w.WriteArrayHeader(1);
            w.Write(42);
            w.WriteNil();
            w.Write("extra");
            w.WriteArrayHeader(2);
            w.Write("BlockMigrated");
            w.Write("somewhere");
            w.Write(3);
        });
        var batch = KvEventBatchReader.Read(bytes);
        Assert.Equal(1700000000.25, batch.Timestamp);
        Assert.Equal(3, batch.DataParallelRank);
        var stored = Assert.IsType<BlockStoredEvent>(batch.Events[0]);
        Assert.Equal([-2L, 0x18191A1B1C1D1E1FL], stored.BlockHashes);
        Assert.Equal([7, 8], stored.TokenIds);
        Assert.Equal("GPU", stored.Medium);
        var removed = Assert.IsType<BlockRemovedEvent>(batch.Events[1]);
        Assert.Equal([42L], removed.BlockHashes);
        Assert.Null(removed.Medium);
        Assert.Equal("BlockMigrated", Assert.IsType<UnknownKvEvent>(batch.Events[2]).Tag);
    }

    [Fact]
    public void A_payload_cut_at_any_offset_is_a_format_error_never_another_exception()
    {
        var events = new[]
        {
            KvEvent.Stored(KvMedium.Cpu, KvEventBatchWriterTests.Key(1), KvEventBatchWriterTests.Key(-1), [1, 2, 3]),
            KvEvent.Removed(KvMedium.Disk, KvEventBatchWriterTests.Key(1)),
            KvEvent.AllCleared(),
        };
        var bytes = KvEventBatchWriter.ToArray(12.5, events, 3);
        Assert.Equal(3, KvEventBatchReader.Read(bytes).Events.Count);
        for (var cut = 0; cut < bytes.Length; cut++)
        {
            Assert.Throws<KvEventFormatException>(() => KvEventBatchReader.Read(bytes.AsMemory(0, cut)));
        }
    }

    [Theory]
    [InlineData(new byte[] { 0xC0 }, KvEventFormatError.NotABatch)] // nil
    [InlineData(new byte[] { 0x91, 0x00 }, KvEventFormatError.NotABatch)] // [0]
    [InlineData(new byte[] { 0x93, 0x00, 0x91, 0x05, 0x00 }, KvEventFormatError.NotAnEvent)] // an event that is a number
    [InlineData(new byte[] { 0x93, 0x00, 0x91, 0x92, 0xAC, 0x42, 0x6C, 0x6F, 0x63, 0x6B, 0x52, 0x65, 0x6D, 0x6F, 0x76, 0x65, 0x64, 0xA1, 0x78, 0x00 }, KvEventFormatError.BadField)] // hashes "x"
    [InlineData(new byte[] { 0x93, 0xA1, 0x78, 0x90, 0x00 }, KvEventFormatError.BadField)] // ts "x"
    [InlineData(new byte[] { 0x93, 0x00, 0xDD, 0x7F, 0xFF, 0xFF, 0xFF }, KvEventFormatError.Malformed)] // 2^31 events claimed, none there
    public void Bad_payloads_name_their_error(byte[] payload, KvEventFormatError error) =>
        Assert.Equal(error, Assert.Throws<KvEventFormatException>(() => KvEventBatchReader.Read(payload)).Error);
}
