using System.Buffers.Binary;
using System.IO.Hashing;
using LMCacheSharp.Core.Codecs;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Metrics;
using LMCacheSharp.Core.Storage;

namespace LMCacheSharp.Core.Tests;

/// <summary>The disk tier's start-up scan on its own: folders written file by file, scanned into a fresh index, no tier.</summary>
public sealed class DiskTierRecoveryTests : IDisposable
{
    private static readonly KvFormat Format = new(2, 16, 16, KvDataType.F16, KvLayout.LayerKV); // 64 B/token
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("lmcache-disk-recovery-");
    private readonly KvBufferPool _pool = new();
    private readonly CacheMetrics _metrics = new();
    private long _sequence;

    public void Dispose()
    {
        var leaked = _pool.RentedCount;
        _pool.Dispose();
        _metrics.Dispose();
        _dir.Delete(recursive: true);
        Assert.True(leaked == 0, $"{leaked} pooled chunk buffers were not returned");
    }

    [Fact]
    public void Files_are_indexed_oldest_first_and_partial_chunks_keep_their_lineage()
    {
        var whole = Write(MakeChunk(16, 1, lineage: true), time: 3);
        var partial = Write(MakeChunk(5, 2, lineage: true), time: 1); // a prompt's tail
        var plain = Write(MakeChunk(16, 3, lineage: false), time: 2, codec: "lz4");

        var index = new DiskChunkIndex(64 << 20);
        var scan = Recover(index, out var evicted);

        Assert.Equal(new DiskTierScan(3, 0, 0, 0, scan.Elapsed), scan);
        Assert.Empty(evicted);
        Assert.Equal([whole.Key, plain.Key, partial.Key], index.KeysByRecency()); // newest file first
        Assert.Equal(whole.Record.BlockBytes + partial.Record.BlockBytes + plain.Record.BlockBytes, index.UsedBytes);
        var lineages = index.Lineages().ToDictionary(l => l.Key, l => l.Lineage);
        Assert.Equal(2, lineages.Count);
        Assert.Equal(partial.Lineage!.Tokens, lineages[partial.Key].Tokens);
        Assert.Equal(partial.Lineage.Parent, lineages[partial.Key].Parent);
        Assert.Equal(whole.Lineage!.Tokens, lineages[whole.Key].Tokens);
        Assert.True(index.TryTouch(plain.Key, out var entry));
        Assert.Equal(plain.Record, entry.Record);
        Assert.Equal(0, _metrics.Snapshot().CorruptChunks);
    }

    public static TheoryData<string> Damages => ["truncated", "truncated-header-block", "header-checksum", "empty", "under-another-key", "unreadable-lineage"];

    [Theory]
    [MemberData(nameof(Damages))]
    public void A_file_with_a_bad_header_block_is_deleted_and_counted_and_the_others_are_kept(string damage)
    {
        var good = Write(MakeChunk(16, 1, lineage: true), time: 1);
        var bad = Write(MakeChunk(16, 2, lineage: true), time: 2);
        var path = bad.Path;
        var bytes = File.ReadAllBytes(path);
        switch (damage)
        {
            case "truncated":
                bytes = bytes[..^1];
                break;
            case "truncated-header-block":
                bytes = bytes[..2000];
                break;
            case "header-checksum":
                bytes[30] ^= 0x10;
                break;
            case "empty":
                bytes = [];
                break;
            case "under-another-key":
                File.Delete(path);
                path = DiskChunkFile.PathOf(_dir.FullName, Key(4242)); // a valid file, named for a key its header does not hold
                Directory.CreateDirectory(Path.GetDirectoryName(path)!);
                break;
            case "unreadable-lineage":
                bytes[ChunkEnvelope.HeaderSize + 45] ^= 0x01; // only the lineage: the chunk is kept without it
                break;
        }

        File.WriteAllBytes(path, bytes);
        var index = new DiskChunkIndex(64 << 20);
        var scan = Recover(index, out _);

        if (damage == "unreadable-lineage")
        {
            Assert.Equal(new DiskTierScan(2, 0, 0, 0, scan.Elapsed), scan);
            Assert.Equal([good.Key], index.Lineages().Select(l => l.Key));
            Assert.Equal(0, _metrics.Snapshot().CorruptChunks);
            return;
        }

        Assert.Equal(new DiskTierScan(1, 1, 0, 0, scan.Elapsed), scan);
        Assert.False(File.Exists(path));
        Assert.True(File.Exists(good.Path));
        Assert.Equal([good.Key], index.KeysByRecency());
        Assert.Equal(1, _metrics.Snapshot().CorruptChunks);
    }

    [Fact]
    public void A_file_with_a_bad_payload_checksum_passes_the_scan_and_is_left_to_the_first_read()
    {
        var file = Write(MakeChunk(16, 1, lineage: false), time: 1);
        var bytes = File.ReadAllBytes(file.Path);
        bytes[DiskChunkFile.HeaderBlockSize + 100] ^= 0x80;
        File.WriteAllBytes(file.Path, bytes);

        var index = new DiskChunkIndex(64 << 20);
        Assert.Equal(1, Recover(index, out _).Recovered); // the scan reads header blocks only: start-up stays fast
        Assert.True(index.TryTouch(file.Key, out var entry));
        Assert.Equal(ChunkReadStatus.ChecksumMismatch, DiskChunkFile.Read(file.Path, entry.Record, _pool, direct: false, out var chunk));
        Assert.Null(chunk);
    }

    [Fact]
    public void Temp_files_left_by_a_killed_writer_are_deleted_and_names_not_ours_are_left_alone()
    {
        var good = Write(MakeChunk(16, 1, lineage: false), time: 1);
        var bytes = File.ReadAllBytes(good.Path);
        var temp = DiskChunkFile.TempPathOf(DiskChunkFile.PathOf(_dir.FullName, Key(7)), 1);
        Directory.CreateDirectory(Path.GetDirectoryName(temp)!);
        File.WriteAllBytes(temp, bytes[..(bytes.Length / 2)]);
        File.WriteAllBytes(good.Path + ".999.3.tmp", bytes); // a whole file that was never renamed
        var strays = new[]
        {
            Path.Join(_dir.FullName, "notes.txt"),
            Path.Join(_dir.FullName, "zz", "chunk.kv"),
            Path.Join(_dir.FullName, "zz", "x.tmp"), // not in a directory of ours: not ours to delete
            Path.Join(Path.GetDirectoryName(good.Path)!, "README"),
            Path.Join(Path.GetDirectoryName(good.Path)!, "not-a-key.kv"),
        };
        foreach (var stray in strays)
        {
            Directory.CreateDirectory(Path.GetDirectoryName(stray)!);
            File.WriteAllText(stray, "not a chunk");
        }

        var index = new DiskChunkIndex(64 << 20);
        var scan = Recover(index, out _);
        Assert.Equal(new DiskTierScan(1, 0, 2, 0, scan.Elapsed), scan);
        Assert.False(File.Exists(temp));
        Assert.False(File.Exists(good.Path + ".999.3.tmp"));
        Assert.All(strays, p => Assert.True(File.Exists(p), p));
        Assert.Equal([good.Key], index.KeysByRecency());
        Assert.Equal(0, _metrics.Snapshot().CorruptChunks);
    }

    [Fact]
    public void Over_the_capacity_the_oldest_files_are_evicted_and_left_for_the_caller_to_unlink()
    {
        // 16 tokens: a 1 KiB payload after the 4 KiB header block, two blocks each.
        var files = Enumerable.Range(0, 6).Select(i => Write(MakeChunk(16, 10 + i, lineage: false), time: i)).ToList();
        var index = new DiskChunkIndex(4 * files[0].Record.BlockBytes);
        var scan = Recover(index, out var evicted);

        Assert.Equal(new DiskTierScan(4, 0, 0, 2, scan.Elapsed), scan);
        Assert.Equal([files[0].Key, files[1].Key], evicted);
        Assert.Equal(files.Skip(2).Reverse().Select(f => f.Key), index.KeysByRecency());
        Assert.Equal(index.CapacityBytes, index.UsedBytes);
        Assert.True(File.Exists(files[0].Path)); // the tier unlinks them, outside its lock

        // Until then the evicted keys are held back from writes.
        List<ChunkHash>? none = null;
        Assert.Equal(DiskWriteReservation.BeingDeleted, index.TryReserve(files[0].Key, 4096, null, ref none));
    }

    [Fact]
    public void Progress_is_reported_before_the_first_directory_and_after_each_one()
    {
        var files = Enumerable.Range(0, 12).Select(i => Write(MakeChunk(1, 100 + i, lineage: false), time: i)).ToList();
        Directory.CreateDirectory(Path.Join(_dir.FullName, "not-ours"));
        var directories = files.Select(f => Path.GetDirectoryName(f.Path)).Distinct().Count();
        var progress = new Collected();

        Recover(new DiskChunkIndex(64 << 20), out _, progress);

        Assert.Equal(directories + 1, progress.Reports.Count);
        Assert.Equal(new DiskTierScanProgress(0, directories, 0), progress.Reports[0]);
        Assert.Equal(new DiskTierScanProgress(directories, directories, files.Count), progress.Reports[^1]);
        Assert.Equal(1.0, progress.Reports[^1].Fraction);
        for (var i = 1; i < progress.Reports.Count; i++)
        {
            Assert.Equal(i, progress.Reports[i].DirectoriesScanned);
            Assert.True(progress.Reports[i].ChunkFilesRead >= progress.Reports[i - 1].ChunkFilesRead);
            Assert.True(progress.Reports[i].Fraction > progress.Reports[i - 1].Fraction);
        }

        // An empty directory: one report, done.
        var empty = new Collected();
        DiskTierRecovery.Run(Path.Join(_dir.FullName, "not-ours"), new DiskChunkIndex(1 << 20), null, "disk", empty, out _);
        var only = Assert.Single(empty.Reports);
        Assert.Equal(new DiskTierScanProgress(0, 0, 0), only);
        Assert.Equal(1.0, only.Fraction);
    }

    private DiskTierScan Recover(DiskChunkIndex index, out List<ChunkHash> evicted, IProgress<DiskTierScanProgress>? progress = null) =>
        DiskTierRecovery.Run(_dir.FullName, index, _metrics, "disk", progress, out evicted);

    private sealed record WrittenFile(ChunkHash Key, string Path, DiskChunkRecord Record, ChunkLineage? Lineage);

    /// <summary>Writes a chunk file the way the tier does (temp file, rename) and gives it a file time of 2030 + <paramref name="time"/> s.</summary>
    private WrittenFile Write(KvChunk chunk, int time, string codec = "naive")
    {
        try
        {
            var path = DiskChunkFile.PathOf(_dir.FullName, chunk.Key);
            var temp = DiskChunkFile.TempPathOf(path, Interlocked.Increment(ref _sequence));
            Assert.True(DiskChunkFile.TryWrite(temp, chunk, KvCodecs.Find(codec)!, _pool, direct: false, fsync: false, out var record, out var lineage));
            DiskChunkFile.Publish(temp, path);
            File.SetLastWriteTimeUtc(path, new DateTime(2030, 1, 1, 0, 0, time, DateTimeKind.Utc));
            return new WrittenFile(chunk.Key, path, record, lineage);
        }
        finally
        {
            chunk.Release();
        }
    }

    private KvChunk MakeChunk(int tokens, int seed, bool lineage)
    {
        var chunk = _pool.Rent((int)Format.PayloadLength(tokens));
        CodecTestData.KvLike(KvDataType.F16, chunk.Length / 2, seed).CopyTo(chunk.Span);
        chunk.Key = Key(seed * 1000 + tokens);
        chunk.TokenCount = tokens;
        chunk.Format = Format;
        if (lineage)
        {
            chunk.Lineage = new ChunkLineage(Key(seed), [.. Enumerable.Range(seed * 100, tokens)]);
        }

        chunk.SealChecksum();
        return chunk;
    }

    private static ChunkHash Key(int i)
    {
        var bytes = new byte[ChunkHash.Size];
        BinaryPrimitives.WriteInt32LittleEndian(bytes, i);
        return new ChunkHash([.. XxHash128.Hash(bytes), .. XxHash128.Hash(bytes.AsSpan(0, 8))]);
    }

    /// <summary>Reports kept in order, on the reporting thread (unlike <see cref="Progress{T}"/>, which posts them).</summary>
    private sealed class Collected : IProgress<DiskTierScanProgress>
    {
        public List<DiskTierScanProgress> Reports { get; } = [];

        public void Report(DiskTierScanProgress value) => Reports.Add(value);
    }
}
