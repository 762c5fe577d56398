using System.Buffers.Binary;
using System.IO.Hashing;
using LMCacheSharp.Core.Codecs;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Storage;

namespace LMCacheSharp.Core.Tests;

/// <summary>
/// The disk tier's chunk file on its own, without a tier: written, read back, and damaged in every way a file can be
/// (each truncation, each byte flipped, a header that names something else; in the header block's zero padding, where
/// all offsets act alike, a sample). Every damaged file is refused, never read as KV; only bytes no checksum covers (the
/// padding) may change without effect, and a damaged lineage is only lost.
/// </summary>
public sealed class DiskChunkFileTests : IDisposable
{
    private static readonly KvFormat Format = new(2, 16, 16, KvDataType.F16, KvLayout.LayerKV); // 64 B/token
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("lmcache-disk-file-");
    private readonly KvBufferPool _pool = new();
    private long _sequence;

    public void Dispose()
    {
        var leaked = _pool.RentedCount;
        _pool.Dispose();
        _dir.Delete(recursive: true);
        Assert.True(leaked == 0, $"{leaked} pooled chunk buffers were not returned");
    }

    public static TheoryData<string, bool> CodecsAndIo => new()
    {
        { "naive", false }, { "naive", true }, { "lz4", false }, { "lz4", true }, { "zstd", false }, { "int8", false },
    };

    [Theory]
    [MemberData(nameof(CodecsAndIo))]
    public void A_written_file_reads_back_as_the_chunk_with_its_lineage(string codecName, bool directIo)
    {
        var codec = KvCodecs.Find(codecName)!;
        var direct = directIo && DiskFile.ProbeDirectIo(_dir.FullName); // tmpfs refuses O_DIRECT: buffered then
        foreach (var tokens in new[] { 16, 5, 1 })
        {
            using var chunk = MakeChunk(tokens, seed: tokens, withLineage: true);
            var (path, record, lineage) = Write(chunk, codec, direct);
            Assert.Equal(new DiskChunkRecord(chunk.Key, codec.Id, new FileInfo(path).Length, chunk.Length, record.EncodedChecksum), record);
            Assert.Equal(chunk.Lineage, lineage);
            Assert.Equal(DiskChunkFile.HeaderBlockSize, DiskChunkFile.BlockRound(1));
            Assert.Equal(DiskChunkFile.BlockRound(record.FileLength), record.BlockBytes);

            Assert.Equal(ChunkReadStatus.Ok, DiskChunkFile.Read(path, record, _pool, direct, out var read));
            using (read)
            {
                Assert.Equal(chunk.Key, read!.Key);
                Assert.Equal(tokens, read.TokenCount);
                Assert.Equal(Format, read.Format);
                Assert.True(read.VerifyChecksum());
                if (codec.IsLossless)
                {
                    Assert.True(read.Span.SequenceEqual(chunk.Span));
                }
            }

            // The start-up scan's view: the header block alone gives the same record and the lineage.
            var block = new byte[DiskChunkFile.HeaderBlockSize];
            Assert.True(DiskChunkFile.TryReadHeaderBlock(path, chunk.Key, block, out var scanned, out var scannedLineage));
            Assert.Equal(record, scanned);
            Assert.Equal(chunk.Lineage!.Parent, scannedLineage!.Parent);
            Assert.Equal(chunk.Lineage.Tokens, scannedLineage.Tokens);
        }
    }

    [Theory]
    [InlineData("naive")]
    [InlineData("lz4")]
    public void A_file_is_its_envelope_with_the_header_padded_to_a_block_and_the_envelope_round_trips(string codecName)
    {
        var codec = KvCodecs.Find(codecName)!;
        using var chunk = MakeChunk(16, seed: 3, withLineage: false);
        var (path, record, _) = Write(chunk, codec, direct: false);
        var envelope = new byte[ChunkEnvelope.MaxSerializedLength(chunk, codec)];
        envelope = envelope[..ChunkEnvelope.Serialize(chunk, codec, envelope)];
        var file = File.ReadAllBytes(path);
        Assert.True(file.AsSpan(0, ChunkEnvelope.HeaderSize).SequenceEqual(envelope.AsSpan(0, ChunkEnvelope.HeaderSize)));
        Assert.True(file.AsSpan(ChunkEnvelope.HeaderSize, DiskChunkFile.HeaderBlockSize - ChunkEnvelope.HeaderSize).IndexOfAnyExcept((byte)0) < 0);
        Assert.True(file.AsSpan(DiskChunkFile.HeaderBlockSize).SequenceEqual(envelope.AsSpan(ChunkEnvelope.HeaderSize)));

        using (var read = DiskChunkFile.ReadEnvelope(path, record, _pool))
        {
            Assert.NotNull(read);
            Assert.Equal(chunk.Key, read.Key);
            Assert.True(read.Span.SequenceEqual(envelope));
        }

        // The cache server's path writes the same file from the envelope.
        Assert.True(DiskChunkFile.TryCheckEnvelope(envelope, chunk.Key, out var header));
        Assert.Equal(record, DiskChunkRecord.Of(header));
        var again = Path.Join(_dir.FullName, "again" + DiskChunkFile.Extension);
        DiskChunkFile.WriteEnvelope(again + ".1.tmp", envelope, fsync: true);
        DiskChunkFile.Publish(again + ".1.tmp", again);
        Assert.Equal(file, File.ReadAllBytes(again));

        Assert.False(DiskChunkFile.TryCheckEnvelope(envelope, Key(99), out _)); // another key
        Assert.False(DiskChunkFile.TryCheckEnvelope(envelope.AsSpan(0, envelope.Length - 1), chunk.Key, out _));
        var damaged = envelope.ToArray();
        damaged[^1] ^= 1;
        Assert.False(DiskChunkFile.TryCheckEnvelope(damaged, chunk.Key, out _));
    }

    [Theory]
    [InlineData("naive")]
    [InlineData("lz4")]
    public void Every_truncation_and_an_extension_are_refused(string codecName)
    {
        using var chunk = MakeChunk(4, seed: 4, withLineage: true);
        var (path, record, _) = Write(chunk, KvCodecs.Find(codecName)!, direct: false);
        var intact = File.ReadAllBytes(path);
        var block = new byte[DiskChunkFile.HeaderBlockSize];
        foreach (var length in Offsets(intact.Length + 2, ChunkEnvelope.HeaderSize + ChunkLineage.SerializedLength(chunk.TokenCount)))
        {
            if (length == intact.Length)
            {
                continue;
            }

            File.WriteAllBytes(path, length < intact.Length ? intact[..length] : [.. intact, 0]);
            AssertRefused(path, record, block, $"length {length} of {intact.Length}");
        }
    }

    [Theory]
    [InlineData("naive")]
    [InlineData("lz4")]
    public void Every_flipped_byte_is_refused_unless_no_checksum_covers_it_and_then_it_changes_nothing(string codecName)
    {
        using var chunk = MakeChunk(4, seed: 5, withLineage: true);
        var (path, record, _) = Write(chunk, KvCodecs.Find(codecName)!, direct: false);
        var intact = File.ReadAllBytes(path);
        var lineageEnd = ChunkEnvelope.HeaderSize + ChunkLineage.SerializedLength(chunk.TokenCount);
        var block = new byte[DiskChunkFile.HeaderBlockSize];
        foreach (var offset in Offsets(intact.Length, lineageEnd))
        {
            var bytes = intact.ToArray();
            bytes[offset] ^= 0x01;
            File.WriteAllBytes(path, bytes);
            var where = $"byte {offset} flipped";
            if (offset < ChunkEnvelope.HeaderSize)
            {
                AssertRefused(path, record, block, where);
                continue;
            }

            if (offset >= DiskChunkFile.HeaderBlockSize)
            {
                // The scan reads header blocks only: a damaged payload is left to the first read, which refuses it.
                Assert.True(DiskChunkFile.TryReadHeaderBlock(path, chunk.Key, block, out _, out _), where);
                AssertRefused(path, record, block, where, scanMayAccept: true);
                continue;
            }

            // The lineage and the padding after it: the chunk reads as before; a damaged lineage is only lost.
            Assert.True(DiskChunkFile.TryReadHeaderBlock(path, chunk.Key, block, out var scanned, out var lineage), where);
            Assert.Equal(record, scanned);
            Assert.True(offset < lineageEnd ? lineage is null : lineage is not null, where);
            Assert.Equal(ChunkReadStatus.Ok, DiskChunkFile.Read(path, record, _pool, direct: false, out var read));
            using (read)
            {
                Assert.True(read!.Span.SequenceEqual(chunk.Span), where);
            }
        }
    }

    public static TheoryData<string> BadHeaders => ["magic", "version", "unknown-codec", "other-key", "encoded-length", "header-checksum",
        "record-of-another-file", "foreign", "empty"];

    [Theory]
    [MemberData(nameof(BadHeaders))]
    public void A_bad_header_is_refused_by_the_scan_and_by_every_read(string damage)
    {
        using var chunk = MakeChunk(16, seed: 6, withLineage: true);
        var (path, record, _) = Write(chunk, RawCodec.Instance, direct: false);
        var bytes = File.ReadAllBytes(path);
        switch (damage)
        {
            case "magic":
                bytes[0] ^= 0xFF;
                Reseal(bytes);
                break;
            case "version":
                BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(4), ChunkEnvelope.Version + 1);
                Reseal(bytes);
                break;
            case "unknown-codec":
                bytes[8] = 200;
                Reseal(bytes);
                break;
            case "other-key":
                Key(77).WriteTo(bytes.AsSpan(64));
                Reseal(bytes);
                break;
            case "encoded-length":
                BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(40), (ulong)(bytes.Length - DiskChunkFile.HeaderBlockSize + 4096));
                Reseal(bytes);
                break;
            case "header-checksum":
                bytes[120] ^= 0x01;
                break;
            case "record-of-another-file":
                // The same key written again with another codec behind the index's back: the record no longer fits it.
                using (var lz4 = MakeChunk(16, seed: 6, withLineage: false))
                {
                    bytes = File.ReadAllBytes(Write(lz4, KvCodecs.Find("lz4")!, direct: false).Path);
                }

                break;
            case "foreign":
                bytes = "not a chunk file\n"u8.ToArray();
                break;
            case "empty":
                bytes = [];
                break;
        }

        File.WriteAllBytes(path, bytes);
        var block = new byte[DiskChunkFile.HeaderBlockSize];
        if (damage != "record-of-another-file")
        {
            Assert.False(DiskChunkFile.TryReadHeaderBlock(path, chunk.Key, block, out _, out _));
        }

        AssertRefused(path, record, block, damage, scanMayAccept: damage == "record-of-another-file");
    }

    [Fact]
    public void Names_are_the_key_in_lower_case_hex_under_its_first_byte_and_nothing_else_parses()
    {
        var key = Key(1);
        var hex = key.ToString();
        var path = DiskChunkFile.PathOf("/cache", key);
        Assert.Equal(Path.Join("/cache", hex[..2], hex + ".kv"), path);
        Assert.True(DiskChunkFile.TryParseFileName(hex[..2], Path.GetFileName(path), out var parsed));
        Assert.Equal(key, parsed);
        Assert.True(DiskChunkFile.IsShardDirectoryName(hex[..2]));

        var temp = DiskChunkFile.TempPathOf(path, 7);
        Assert.Equal($"{path}.{Environment.ProcessId}.7.tmp", temp);
        Assert.True(DiskChunkFile.IsTempFileName(Path.GetFileName(temp)));
        Assert.False(DiskChunkFile.IsTempFileName(Path.GetFileName(path)));

        var other = hex[..2] == "00" ? "01" : "00";
        foreach (var (shard, name) in new[]
        {
            (other, hex + ".kv"), // in another key's directory
            (hex[..2], hex.ToUpperInvariant() + ".kv"),
            (hex[..2], hex + ".KV"),
            (hex[..2], hex[..63] + ".kv"),
            (hex[..2], hex + "0.kv"),
            (hex[..2], hex + ".kv.tmp"),
            (hex[..2], hex[..63] + "g.kv"),
            (hex[..2], "not-a-key.kv"),
        })
        {
            Assert.False(DiskChunkFile.TryParseFileName(shard, name, out _), name);
        }

        foreach (var name in new[] { "0", "000", "AB", "g0", "main" })
        {
            Assert.False(DiskChunkFile.IsShardDirectoryName(name), name);
        }
    }

    [Fact]
    public void A_codec_that_cannot_encode_the_chunk_writes_nothing()
    {
        using var chunk = _pool.Rent(68 * 4);
        chunk.Key = Key(9);
        chunk.Format = new KvFormat(1, 34, 34, KvDataType.Q8_0, KvLayout.LayerKV);
        chunk.TokenCount = 4;
        chunk.SealChecksum();
        var temp = DiskChunkFile.TempPathOf(DiskChunkFile.PathOf(_dir.FullName, chunk.Key), 1);
        Assert.False(DiskChunkFile.TryWrite(temp, chunk, KvCodecs.Find("int8")!, _pool, direct: false, fsync: false, out _, out _));
        Assert.False(File.Exists(temp));
    }

    [Fact]
    public void A_missing_file_is_an_io_error_for_the_tier_to_count()
    {
        var path = DiskChunkFile.PathOf(_dir.FullName, Key(5));
        var record = new DiskChunkRecord(Key(5), KvCodecId.Raw, DiskChunkFile.HeaderBlockSize + 64, 64, 0);
        Assert.ThrowsAny<IOException>(() => DiskChunkFile.Read(path, record, _pool, direct: false, out _));
        Assert.ThrowsAny<IOException>(() => DiskChunkFile.ReadEnvelope(path, record, _pool));
        Assert.ThrowsAny<IOException>(() => DiskChunkFile.TryReadHeaderBlock(path, Key(5), new byte[DiskChunkFile.HeaderBlockSize], out _, out _));
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        Assert.True(DiskChunkFile.TryDelete(path)); // nothing to delete is no failure
    }

    /// <summary>
    /// Every offset below <paramref name="length"/> except in the header block's zero padding (from
    /// <paramref name="denseEnd"/> to just before the payload), where every 61st stands for the rest (they all act alike).
    /// </summary>
    private static IEnumerable<int> Offsets(int length, int denseEnd)
    {
        for (var i = 0; i < length; i++)
        {
            if (i < denseEnd + 16 || i >= DiskChunkFile.HeaderBlockSize - 16 || i % 61 == 0)
            {
                yield return i;
            }
        }
    }

    private void AssertRefused(string path, DiskChunkRecord record, byte[] block, string what, bool scanMayAccept = false)
    {
        if (!scanMayAccept)
        {
            Assert.False(DiskChunkFile.TryReadHeaderBlock(path, record.Key, block, out _, out _), what);
        }

        var status = DiskChunkFile.Read(path, record, _pool, direct: false, out var chunk);
        chunk?.Release();
        Assert.True(status != ChunkReadStatus.Ok, $"{what}: read as a chunk");
        Assert.Null(chunk);
        var envelope = DiskChunkFile.ReadEnvelope(path, record, _pool);
        envelope?.Release();
        Assert.True(envelope is null, $"{what}: read as an envelope");
    }

    private (string Path, DiskChunkRecord Record, ChunkLineage? Lineage) Write(KvChunk chunk, IKvCodec codec, bool direct)
    {
        var path = DiskChunkFile.PathOf(Path.Join(_dir.FullName, codec.Name + (direct ? "-direct" : "")), chunk.Key);
        var temp = DiskChunkFile.TempPathOf(path, Interlocked.Increment(ref _sequence));
        Assert.True(DiskChunkFile.TryWrite(temp, chunk, codec, _pool, direct, fsync: direct, out var record, out var lineage));
        DiskChunkFile.Publish(temp, path);
        DiskChunkFile.SyncDirectoryOf(path);
        Assert.False(File.Exists(temp));
        return (path, record, lineage);
    }

    private KvChunk MakeChunk(int tokens, int seed, bool withLineage)
    {
        var chunk = _pool.Rent((int)Format.PayloadLength(tokens));
        CodecTestData.KvLike(KvDataType.F16, chunk.Length / 2, seed).CopyTo(chunk.Span);
        chunk.Key = Key(seed * 1000 + tokens);
        chunk.TokenCount = tokens;
        chunk.Format = Format;
        if (withLineage)
        {
            chunk.Lineage = new ChunkLineage(Key(seed), [.. Enumerable.Range(seed * 100, tokens)]);
        }

        chunk.SealChecksum();
        return chunk;
    }

    private static void Reseal(byte[] bytes) =>
        BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(120), XxHash3.HashToUInt64(bytes.AsSpan(0, 120)));

    private static ChunkHash Key(int i)
    {
        var bytes = new byte[ChunkHash.Size];
        BinaryPrimitives.WriteInt32LittleEndian(bytes, i);
        return new ChunkHash([.. XxHash128.Hash(bytes), .. XxHash128.Hash(bytes.AsSpan(0, 8))]);
    }
}
