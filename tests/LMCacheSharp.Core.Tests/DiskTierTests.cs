using System.Buffers.Binary;
using System.IO.Hashing;
using LMCacheSharp.Core.Codecs;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Engine;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Metrics;
using LMCacheSharp.Core.Storage;

namespace LMCacheSharp.Core.Tests;

public sealed class DiskTierTests : IAsyncLifetime
{
    private static readonly KvFormat Format = new(2, 128, 128, KvDataType.F16, KvLayout.LayerKV); // 512 B/token
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("lmcache-disk-test-");
    private readonly KvBufferPool _pool = new();
    private readonly CacheMetrics _metrics = new();
    private readonly List<DiskTier> _tiers = [];

    // Only bounds a failing test; no passing test waits for it.
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    public static TheoryData<string, bool> CodecsAndIo => new()
    {
        { "naive", false }, { "naive", true }, { "lz4", false }, { "zstd", true }, { "int8", false }, { "fp8", true },
    };

    public ValueTask InitializeAsync() => ValueTask.CompletedTask;

    public async ValueTask DisposeAsync()
    {
        foreach (var tier in _tiers)
        {
            await tier.DisposeAsync();
        }

        var leaked = _pool.RentedCount;
        _pool.Dispose();
        _metrics.Dispose();
        _dir.Delete(recursive: true);
        Assert.True(leaked == 0, $"{leaked} pooled chunk buffers were not returned");
    }

    [Theory]
    [MemberData(nameof(CodecsAndIo))]
    public void Put_then_get_returns_the_stored_kv(string codec, bool directIo)
    {
        var tier = Open(codec: codec, directIo: directIo);
        foreach (var tokens in new[] { 16, 13, 1 })
        {
            using var chunk = MakeChunk(tokens, seed: tokens);
            Assert.True(tier.Put(chunk));
            using var hit = tier.TryGet(chunk.Key);
            Assert.NotNull(hit);
            Assert.Equal(chunk.Key, hit.Key);
            Assert.Equal(tokens, hit.TokenCount);
            Assert.Equal(Format, hit.Format);
            Assert.True(hit.VerifyChecksum());
            if (KvCodecs.Find(codec)!.IsLossless)
            {
                Assert.True(hit.Span.SequenceEqual(chunk.Span));
                Assert.Equal(chunk.Checksum, hit.Checksum);
            }
            else
            {
                AssertClose(chunk.Span, hit.Span, 0.2f); // values ~N(0,1): int8/fp8 errors are far below this
            }
        }

        Assert.Equal(3, tier.Count);
        Assert.Equal(0, _metrics.Snapshot().CorruptChunks);
    }

    [Fact]
    public async Task A_reopened_directory_is_warm_and_bit_identical()
    {
        var tier = Open();
        var chunks = Enumerable.Range(0, 8).Select(i => MakeChunk(16, i)).ToList();
        foreach (var chunk in chunks)
        {
            Assert.True(tier.Put(chunk));
        }

        var used = tier.UsedBytes;
        await Close(tier);

        var reopened = Open();
        Assert.Equal(new DiskTierScan(8, 0, 0, 0, reopened.StartupScan.Elapsed), reopened.StartupScan);
        Assert.Equal(8, reopened.Count);
        Assert.Equal(used, reopened.UsedBytes);
        Assert.Equal(8, reopened.CountPrefix(chunks.Select(c => c.Key).ToArray()));
        foreach (var chunk in chunks)
        {
            using var hit = reopened.TryGet(chunk.Key);
            Assert.NotNull(hit);
            Assert.True(hit.Span.SequenceEqual(chunk.Span));
            chunk.Release();
        }
    }

    [Fact]
    public async Task The_start_up_scan_reports_its_progress_where_asked()
    {
        var tier = Open();
        for (var i = 0; i < 5; i++)
        {
            using var chunk = MakeChunk(4, 200 + i);
            Assert.True(tier.Put(chunk));
        }

        await Close(tier);
        var reports = new List<DiskTierScanProgress>();
        var progress = new SynchronousProgress(reports.Add);
        await using var reopened = new DiskTier(
            new DiskTierOptions { Directory = Path.Join(_dir.FullName, "main"), CapacityBytes = 64 << 20, ScanProgress = progress }, _pool, _metrics);
        Assert.Equal(5, reopened.StartupScan.Recovered);
        Assert.Equal(0, reports[0].DirectoriesScanned);
        Assert.Equal(1.0, reports[^1].Fraction);
        Assert.Equal(5, reports[^1].ChunkFilesRead);
    }

    [Fact]
    public async Task Recency_order_survives_a_restart()
    {
        var tier = Open();
        var keys = new List<ChunkHash>();
        for (var i = 0; i < 4; i++)
        {
            using var chunk = MakeChunk(8, i);
            tier.Put(chunk);
            keys.Add(chunk.Key);
        }

        // Make the file times distinct and in a known order: key 2 newest, then 0, 3, 1.
        var order = new[] { 1, 3, 0, 2 };
        for (var i = 0; i < order.Length; i++)
        {
            File.SetLastWriteTimeUtc(tier.PathOf(keys[order[i]]), new DateTime(2030, 1, 1, 0, 0, i, DateTimeKind.Utc));
        }

        await Close(tier);
        var reopened = Open();
        Assert.Equal(order.Reverse().Select(i => keys[i]), reopened.KeysByRecency());
    }

    [Fact]
    public async Task A_partial_file_left_by_a_killed_writer_is_ignored_and_deleted()
    {
        var tier = Open();
        using var chunk = MakeChunk(16, 1);
        Assert.True(tier.Put(chunk));
        var path = tier.PathOf(chunk.Key);
        await Close(tier);

        // A writer killed mid-way leaves a temp file (the real name appears only on rename): copy half a file there,
        // and a second one for a key that has no finished file at all.
        var bytes = File.ReadAllBytes(path);
        File.Delete(path);
        File.WriteAllBytes(path + ".4242.1.tmp", bytes[..(bytes.Length / 2)]);
        using var other = MakeChunk(16, 2);
        var otherPath = path.Replace(chunk.Key.ToString()[2..], other.Key.ToString()[2..], StringComparison.Ordinal);
        File.WriteAllBytes(otherPath + ".4242.2.tmp", bytes);

        var reopened = Open();
        Assert.Equal(0, reopened.Count);
        Assert.Equal(2, reopened.StartupScan.TempFilesRemoved);
        Assert.False(File.Exists(path + ".4242.1.tmp"));
        Assert.Null(reopened.TryGet(chunk.Key));
        Assert.Equal(0, _metrics.Snapshot().CorruptChunks);
    }

    public static TheoryData<string> Corruptions => ["header-byte", "payload-byte", "last-byte", "truncated", "truncated-header", "extended",
        "other-key", "foreign", "old-version", "empty", "unknown-codec"];

    [Theory]
    [MemberData(nameof(Corruptions))]
    public void Corruption_found_on_read_is_a_miss_deleted_and_counted(string corruption)
    {
        foreach (var codec in new[] { "naive", "zstd" })
        {
            var tier = Open(codec: codec, subdir: codec);
            using var chunk = MakeChunk(16, 3);
            Assert.True(tier.Put(chunk));
            var path = tier.PathOf(chunk.Key);
            Corrupt(path, corruption, tier);
            var before = _metrics.Snapshot().CorruptChunks;

            Assert.Null(tier.TryGet(chunk.Key));
            Assert.False(File.Exists(path));
            Assert.Equal(0, tier.Count);
            Assert.Equal(0, tier.UsedBytes);
            Assert.Equal(before + 1, _metrics.Snapshot().CorruptChunks);

            // The key can be stored again afterwards.
            Assert.True(tier.Put(chunk));
            using var hit = tier.TryGet(chunk.Key);
            Assert.True(hit!.Span.SequenceEqual(chunk.Span));
        }
    }

    [Theory]
    [MemberData(nameof(Corruptions))]
    public async Task Corruption_found_at_startup_or_on_first_read_never_serves_wrong_kv(string corruption)
    {
        var tier = Open();
        using var chunk = MakeChunk(16, 4);
        using var good = MakeChunk(16, 5);
        Assert.True(tier.Put(chunk));
        Assert.True(tier.Put(good));
        var path = tier.PathOf(chunk.Key);
        Corrupt(path, corruption, tier);
        await Close(tier);

        var reopened = Open();
        // Header-level damage is caught by the scan, payload damage by the first read: either way a miss, deleted, counted.
        Assert.Null(reopened.TryGet(chunk.Key));
        Assert.False(File.Exists(path));
        Assert.Equal(1, _metrics.Snapshot().CorruptChunks);
        using var hit = reopened.TryGet(good.Key);
        Assert.True(hit!.Span.SequenceEqual(good.Span));
    }

    [Fact]
    public async Task Files_with_names_the_tier_does_not_write_are_left_alone()
    {
        await Close(Open());
        var strays = new[]
        {
            Path.Join(_dir.FullName, "main", "00", "notes.txt"),
            Path.Join(_dir.FullName, "main", "README"),
            Path.Join(_dir.FullName, "main", "ab", "not-a-key.kv"),
        };
        foreach (var stray in strays)
        {
            Directory.CreateDirectory(Path.GetDirectoryName(stray)!);
            File.WriteAllText(stray, "not a chunk");
        }

        var tier = Open();
        Assert.Equal(0, tier.Count);
        Assert.Equal(0, tier.StartupScan.Discarded);
        Assert.All(strays, p => Assert.True(File.Exists(p)));
    }

    [Fact]
    public void Capacity_is_kept_by_evicting_the_least_recently_used()
    {
        // 1 MiB; a 16-token chunk is 8 KiB of KV + a 4 KiB header block = 12 KiB on disk: 85 fit.
        var tier = Open(capacity: 1 << 20);
        var keys = new List<ChunkHash>();
        for (var i = 0; i < 100; i++)
        {
            using var chunk = MakeChunk(16, 100 + i);
            Assert.True(tier.Put(chunk));
            keys.Add(chunk.Key);
            if (i == 50)
            {
                tier.TryGet(keys[0])!.Release(); // keep the first one warm
            }

            Assert.True(tier.UsedBytes <= tier.CapacityBytes);
        }

        Assert.Equal(85, tier.Count);
        Assert.True(tier.Contains(keys[0]));
        Assert.False(tier.Contains(keys[1]));
        Assert.True(tier.Contains(keys[99]));
        Assert.Equal(15, _metrics.Snapshot().Evictions);
        var files = Directory.EnumerateFiles(tier.Root, "*.kv", SearchOption.AllDirectories).Count();
        Assert.Equal(85, files);

        using var huge = _pool.Rent(2 << 20);
        huge.Key = keys[1];
        huge.Format = Format;
        huge.TokenCount = 4096;
        Assert.False(tier.Put(huge)); // larger than the whole capacity
    }

    [Fact]
    public async Task Concurrent_readers_and_writers_only_ever_see_the_right_kv()
    {
        var tier = Open(capacity: 1 << 20, codec: "lz4");
        var sources = Enumerable.Range(0, 120).Select(i => MakeChunk(16, 1000 + i)).ToArray();
        var hits = 0;
        var tasks = Enumerable.Range(0, 6).Select(t => Task.Run(() =>
        {
            var random = new Random(t);
            for (var n = 0; n < 400; n++)
            {
                var source = sources[random.Next(sources.Length)];
                if (random.Next(3) == 0)
                {
                    tier.Put(source);
                }
                else if (random.Next(20) == 0)
                {
                    tier.Remove(source.Key);
                }
                else
                {
                    using var hit = tier.TryGet(source.Key);
                    if (hit is not null)
                    {
                        Assert.True(hit.Span.SequenceEqual(source.Span));
                        Interlocked.Increment(ref hits);
                    }
                }
            }
        })).ToArray();
        await Task.WhenAll(tasks);

        Assert.True(hits > 0);
        Assert.Equal(0, _metrics.Snapshot().CorruptChunks);
        Assert.True(tier.UsedBytes <= tier.CapacityBytes);
        Assert.Empty(Directory.EnumerateFiles(tier.Root, "*.tmp", SearchOption.AllDirectories));
        Assert.Equal(tier.Count, Directory.EnumerateFiles(tier.Root, "*.kv", SearchOption.AllDirectories).Count());
        foreach (var source in sources)
        {
            source.Release();
        }
    }

    [Fact]
    public void A_directory_is_used_by_one_tier_at_a_time()
    {
        Open();
        var e = Assert.Throws<IOException>(() => Open());
        Assert.Contains("in use", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Lossy_codec_on_quantized_kv_is_refused_not_thrown()
    {
        var tier = Open(codec: "int8");
        using var chunk = _pool.Rent(68 * 4);
        chunk.Key = Key(9);
        chunk.Format = new KvFormat(1, 34, 34, KvDataType.Q8_0, KvLayout.LayerKV);
        chunk.TokenCount = 4;
        chunk.SealChecksum();
        Assert.False(tier.Put(chunk));
        Assert.Equal(0, tier.Count);
        Assert.Equal(0, tier.UsedBytes);
        Assert.DoesNotContain(Directory.EnumerateFiles(tier.Root, "*", SearchOption.AllDirectories), f => !f.EndsWith(".lock", StringComparison.Ordinal));
    }

    [Fact]
    public void Envelopes_are_stored_opaquely_and_checked()
    {
        var tier = Open();
        using var chunk = MakeChunk(16, 6);
        var envelope = new byte[ChunkEnvelope.MaxSerializedLength(chunk, ZstdCodec.Instance)];
        var n = ChunkEnvelope.Serialize(chunk, ZstdCodec.Instance, envelope);
        envelope = envelope[..n];

        Assert.False(tier.PutEnvelope(Key(1), envelope)); // another key
        Assert.False(tier.PutEnvelope(chunk.Key, envelope[..^1])); // truncated
        var flipped = (byte[])envelope.Clone();
        flipped[^1] ^= 1;
        Assert.False(tier.PutEnvelope(chunk.Key, flipped)); // payload checksum
        Assert.True(tier.PutEnvelope(chunk.Key, envelope));

        using (var stored = tier.GetEnvelope(chunk.Key))
        {
            Assert.True(stored!.Span.SequenceEqual(envelope));
        }

        // The same file also serves decoded chunks.
        using (var decoded = tier.TryGet(chunk.Key))
        {
            Assert.True(decoded!.Span.SequenceEqual(chunk.Span));
        }

        var path = tier.PathOf(chunk.Key);
        var bytes = File.ReadAllBytes(path);
        bytes[^3] ^= 0x40;
        File.WriteAllBytes(path, bytes);
        Assert.Null(tier.GetEnvelope(chunk.Key));
        Assert.False(File.Exists(path));
        Assert.Equal(1, _metrics.Snapshot().CorruptChunks);
    }

    [Fact]
    public void An_envelope_put_with_replace_takes_the_place_of_a_different_one_and_only_refreshes_the_same_one()
    {
        var tier = Open();
        using var chunk = MakeChunk(16, 8);
        byte[] Envelope(IKvCodec codec)
        {
            var bytes = new byte[ChunkEnvelope.MaxSerializedLength(chunk, codec)];
            return bytes[..ChunkEnvelope.Serialize(chunk, codec, bytes)];
        }

        var zstd = Envelope(ZstdCodec.Instance);
        var lz4 = Envelope(Lz4Codec.Instance);
        Assert.True(tier.PutEnvelope(chunk.Key, zstd));
        Assert.True(tier.PutEnvelope(chunk.Key, lz4)); // without replace: a key names one chunk, the first file stays
        Assert.Equal(zstd, StoredEnvelope());

        var path = tier.PathOf(chunk.Key);
        Assert.True(tier.PutEnvelope(chunk.Key, zstd, replace: true)); // the same envelope: kept
        Assert.Equal(zstd, StoredEnvelope());
        Assert.True(tier.PutEnvelope(chunk.Key, lz4, replace: true)); // another codec: replaced
        Assert.Equal(lz4, StoredEnvelope());
        Assert.Equal(1, tier.Count);
        Assert.Equal(DiskTier.HeaderBlockSize + lz4.Length - ChunkEnvelope.HeaderSize, new FileInfo(path).Length);

        byte[] StoredEnvelope()
        {
            using var stored = tier.GetEnvelope(chunk.Key);
            return stored!.Span.ToArray();
        }
    }

    [Fact]
    public async Task A_file_delete_in_progress_holds_no_lock_and_keeps_its_key_from_being_rewritten()
    {
        var tier = Open();
        using var a = MakeChunk(16, 21);
        using var b = MakeChunk(16, 22);
        Assert.True(tier.Put(a));
        using var entered = new SemaphoreSlim(0);
        using var gate = new ManualResetEventSlim();
        tier.FileSystemHook = (change, key) =>
        {
            if (change == DiskTier.FileSystemChange.Delete && key == a.Key)
            {
                entered.Release();
                gate.Wait(TestContext.Current.CancellationToken); // a slow unlink
            }
        };
        var removing = Task.Run(() => tier.Remove(a.Key), TestContext.Current.CancellationToken);
        await entered.WaitAsync(TestContext.Current.CancellationToken);

        // While the unlink is held, everything that takes the tier's lock goes ahead.
        var meanwhile = Task.Run(() =>
        {
            Assert.False(tier.Contains(a.Key));
            Assert.Equal(0, tier.CountPrefix([a.Key]));
            Assert.True(tier.Put(b));
            Assert.False(tier.Put(a)); // refused: a file renamed in now could be the one the held unlink removes
            using var hit = tier.TryGet(b.Key);
            Assert.True(hit!.Span.SequenceEqual(b.Span));
        }, TestContext.Current.CancellationToken);
        await meanwhile.WaitAsync(Bound, TestContext.Current.CancellationToken);

        gate.Set();
        Assert.True(await removing);
        Assert.False(File.Exists(tier.PathOf(a.Key)));
        Assert.True(tier.Put(a)); // the delete is done: the key can be written again
        Assert.True(File.Exists(tier.PathOf(a.Key)));
        Assert.Equal(2, tier.Count);
        Assert.Equal(2, Directory.EnumerateFiles(tier.Root, "*.kv", SearchOption.AllDirectories).Count());
    }

    [Fact]
    public async Task A_rename_in_progress_holds_no_lock_and_commits_to_the_index_after_it()
    {
        var tier = Open();
        using var a = MakeChunk(16, 23);
        using var b = MakeChunk(16, 24);
        using var entered = new SemaphoreSlim(0);
        using var gate = new ManualResetEventSlim();
        tier.FileSystemHook = (change, key) =>
        {
            if (change == DiskTier.FileSystemChange.Rename && key == a.Key)
            {
                entered.Release();
                gate.Wait(TestContext.Current.CancellationToken); // a slow rename
            }
        };
        var putting = Task.Run(() => tier.Put(a), TestContext.Current.CancellationToken);
        await entered.WaitAsync(TestContext.Current.CancellationToken);

        var meanwhile = Task.Run(() =>
        {
            Assert.False(tier.Contains(a.Key)); // not in the index before its file is in place
            Assert.Null(tier.TryGet(a.Key));
            Assert.False(tier.Remove(a.Key));
            Assert.True(tier.Put(a)); // being written: taken as stored
            Assert.True(tier.Put(b));
        }, TestContext.Current.CancellationToken);
        await meanwhile.WaitAsync(Bound, TestContext.Current.CancellationToken);

        gate.Set();
        Assert.True(await putting);
        using var hit = tier.TryGet(a.Key);
        Assert.True(hit!.Span.SequenceEqual(a.Span));
        Assert.Equal(2, tier.Count);
        Assert.Empty(Directory.EnumerateFiles(tier.Root, "*.tmp", SearchOption.AllDirectories));
    }

    [Fact]
    public async Task A_replacing_write_that_fails_leaves_neither_file_so_the_old_one_never_comes_back()
    {
        var tier = Open();
        using var chunk = MakeChunk(16, 25);
        byte[] Envelope(IKvCodec codec)
        {
            var bytes = new byte[ChunkEnvelope.MaxSerializedLength(chunk, codec)];
            return bytes[..ChunkEnvelope.Serialize(chunk, codec, bytes)];
        }

        Assert.True(tier.PutEnvelope(chunk.Key, Envelope(ZstdCodec.Instance)));
        tier.FileSystemHook = (change, _) =>
        {
            if (change == DiskTier.FileSystemChange.Rename)
            {
                throw new IOException("injected rename failure");
            }
        };
        Assert.False(tier.PutEnvelope(chunk.Key, Envelope(Lz4Codec.Instance), replace: true));
        Assert.False(tier.Contains(chunk.Key));
        Assert.Equal(0, tier.UsedBytes);
        Assert.False(File.Exists(tier.PathOf(chunk.Key)));
        Assert.Empty(Directory.EnumerateFiles(tier.Root, "*.tmp", SearchOption.AllDirectories));

        await Close(tier);
        Assert.Equal(0, Open().Count);
    }

    [Fact]
    public void Direct_io_is_used_where_the_filesystem_takes_it_and_falls_back_where_it_does_not()
    {
        var root = Path.Join(_dir.FullName, "direct");
        Directory.CreateDirectory(root);
        var tier = Open(directIo: true, subdir: "direct");
        Assert.Equal(OperatingSystem.IsLinux() && DiskFile.ProbeDirectIo(root), tier.DirectIo);

        // A filesystem that refuses O_DIRECT (EINVAL on open: some overlay and network filesystems, tmpfs before Linux 6.6).
        var options = new DiskTierOptions
        {
            Directory = Path.Join(_dir.FullName, "refuses"),
            CapacityBytes = 1 << 20,
            DirectIo = true,
            DirectIoProbe = _ => false,
        };
        var fallback = new DiskTier(options, _pool, _metrics);
        _tiers.Add(fallback);
        Assert.False(fallback.DirectIo);
        foreach (var t in new[] { tier, fallback })
        {
            using var chunk = MakeChunk(13, 7);
            Assert.True(t.Put(chunk));
            using var hit = t.TryGet(chunk.Key);
            Assert.True(hit!.Span.SequenceEqual(chunk.Span));
        }
    }

    [Fact]
    public async Task A_new_engine_over_the_same_directory_restores_from_disk_bit_identically()
    {
        var options = new LMCacheOptions
        {
            ChunkSize = 16,
            MaxLocalCpuSize = 0.01,
            LocalDisk = "file://" + Path.Join(_dir.FullName, "engine"),
            MaxLocalDiskSize = 0.01,
            LocalDiskSerde = "lz4",
            TokenExactReuse = false, // whole chunks: the partial tail lives in memory only
        };
        var tokens = TestData.Tokens(100, 11);
        await using (var first = CacheEngine.Create(options, TestData.Namespace()))
        {
            Assert.Equal(96, await first.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens)));
            await first.FlushAsync();
        }

        var reports = new List<DiskTierScanProgress>();
        await using var second = CacheEngine.Create(options, TestData.Namespace(), diskScanProgress: new SynchronousProgress(reports.Add));
        var disk = Assert.IsType<DiskTier>(second.Storage.Tiers[1]);
        Assert.Equal(6, disk.StartupScan.Recovered);
        Assert.Equal(6, reports[^1].ChunkFilesRead); // the scan reported where the host asked
        Assert.Equal(0, second.Storage.Memory!.Count);
        Assert.Equal(96, await second.LookupAsync(tokens));
        var target = new FakeSequence(TestData.SmallFormat, tokens);
        Assert.Equal(96, await second.RetrieveAsync(tokens, target));
        target.AssertRestoredExact();
        Assert.Equal(6, second.Storage.Memory.Count); // promoted
        Assert.Equal(0, second.Metrics.Snapshot().CorruptChunks);
    }

    [Fact]
    public async Task Background_writes_that_find_the_queue_full_are_dropped_and_counted()
    {
        var options = new LMCacheOptions
        {
            ChunkSize = 16,
            MaxLocalCpuSize = 0.01,
            LocalDisk = Path.Join(_dir.FullName, "queue"),
            MaxLocalDiskSize = 0.01,
            WriteQueueChunks = 1,
            LocalDiskSerde = "zstd",
        };
        await using var engine = CacheEngine.Create(options, TestData.Namespace());
        var disk = (DiskTier)engine.Storage.Tiers[1];
        using var gate = new ManualResetEventSlim();
        disk.FileSystemHook = (change, _) => gate.Wait(TestContext.Current.CancellationToken); // the writer holds at its first rename
        var tokens = TestData.Tokens(16 * 200, 12);
        Assert.Equal(16 * 200, await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens)));
        gate.Set();
        await engine.FlushAsync();
        var dropped = engine.Metrics.Snapshot().DroppedStores;
        // At most one write in the tier and one in the one-slot queue while the 200 stores went by.
        Assert.InRange(dropped, 198, 199);
        Assert.Equal(200, disk.Count + dropped);
    }

    [Fact]
    public async Task A_chunk_lineage_survives_a_restart_and_a_damaged_one_costs_only_the_lineage()
    {
        var lineage = new ChunkLineage(Key(7), [.. Enumerable.Range(100, 16)]);
        var chunk = _pool.Rent((int)Format.PayloadLength(16));
        CodecTestData.KvLike(KvDataType.F16, chunk.Length / 2, 5).CopyTo(chunk.Span);
        chunk.Key = Key(8);
        chunk.TokenCount = 16;
        chunk.Format = Format;
        chunk.Lineage = lineage;
        chunk.SealChecksum();
        var tier = Open();
        Assert.True(tier.Put(chunk));
        await tier.DisposeAsync();

        tier = Open();
        var (key, read) = Assert.Single(tier.GetLineages());
        Assert.Equal(Key(8), key);
        Assert.Equal(lineage.Parent, read.Parent);
        Assert.Equal(lineage.Tokens, read.Tokens);
        await tier.DisposeAsync();

        var file = Directory.EnumerateFiles(_dir.FullName, "*.kv", SearchOption.AllDirectories).Single();
        using (var stream = File.Open(file, FileMode.Open, FileAccess.ReadWrite))
        {
            stream.Position = ChunkEnvelope.HeaderSize + 50; // inside the lineage's tokens
            stream.WriteByte(0xFF);
        }

        tier = Open();
        Assert.Empty(tier.GetLineages());
        using (var hit = tier.TryGet(Key(8)))
        {
            Assert.NotNull(hit); // the chunk itself is intact
            Assert.True(hit.Span.SequenceEqual(chunk.Span));
        }

        chunk.Release();
        await tier.DisposeAsync();
    }

    private DiskTier Open(long capacity = 64 << 20, string codec = "naive", bool directIo = false, string subdir = "main")
    {
        var options = new DiskTierOptions
        {
            Directory = Path.Join(_dir.FullName, subdir),
            CapacityBytes = capacity,
            Codec = KvCodecs.Find(codec)!,
            DirectIo = directIo,
            Fsync = directIo, // exercise the fsync path in half of the runs
        };
        var tier = new DiskTier(options, _pool, _metrics);
        _tiers.Add(tier);
        return tier;
    }

    private async Task Close(DiskTier tier)
    {
        await tier.DisposeAsync();
        _tiers.Remove(tier);
    }

    private KvChunk MakeChunk(int tokens, int seed)
    {
        var chunk = _pool.Rent((int)Format.PayloadLength(tokens));
        var values = CodecTestData.KvLike(KvDataType.F16, chunk.Length / 2, seed);
        values.CopyTo(chunk.Span);
        chunk.Key = Key(seed * 1000 + tokens);
        chunk.TokenCount = tokens;
        chunk.Format = Format;
        chunk.SealChecksum();
        return chunk;
    }

    private static ChunkHash Key(int i)
    {
        var bytes = new byte[32];
        BinaryPrimitives.WriteInt32LittleEndian(bytes, i);
        bytes[31] = 0xC5;
        return new ChunkHash(XxHash128.Hash(bytes).Concat(XxHash128.Hash(bytes.Reverse().ToArray())).ToArray());
    }

    private static void Corrupt(string path, string corruption, DiskTier tier)
    {
        var bytes = File.ReadAllBytes(path);
        switch (corruption)
        {
            case "header-byte":
                bytes[20] ^= 0x01;
                break;
            case "payload-byte":
                bytes[DiskTier.HeaderBlockSize + 100] ^= 0x80;
                break;
            case "last-byte":
                bytes[^1] ^= 0x01;
                break;
            case "truncated":
                bytes = bytes[..^1];
                break;
            case "truncated-header":
                bytes = bytes[..64];
                break;
            case "extended":
                bytes = [.. bytes, 0];
                break;
            case "other-key":
                // A valid file of another chunk, under this chunk's name.
                var otherPath = Directory.EnumerateFiles(tier.Root, "*.kv", SearchOption.AllDirectories).FirstOrDefault(p => p != path);
                if (otherPath is not null)
                {
                    bytes = File.ReadAllBytes(otherPath);
                }
                else
                {
                    bytes[64] ^= 0xFF; // the key field, header checksum fixed below
                    FixHeaderChecksum(bytes);
                }

                break;
            case "foreign":
                bytes = "this is not a KV chunk, it is someone else's file\n"u8.ToArray();
                break;
            case "old-version":
                BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(4), 0);
                FixHeaderChecksum(bytes);
                break;
            case "unknown-codec":
                bytes[8] = 200;
                FixHeaderChecksum(bytes);
                break;
            case "empty":
                bytes = [];
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(corruption));
        }

        File.WriteAllBytes(path, bytes);
    }

    private sealed class SynchronousProgress(Action<DiskTierScanProgress> report) : IProgress<DiskTierScanProgress>
    {
        public void Report(DiskTierScanProgress value) => report(value);
    }

    private static void FixHeaderChecksum(byte[] bytes) =>
        BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(120), XxHash3.HashToUInt64(bytes.AsSpan(0, 120)));

    private static void AssertClose(ReadOnlySpan<byte> expected, ReadOnlySpan<byte> actual, float tolerance)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (var i = 0; i < expected.Length / 2; i++)
        {
            var x = CodecTestData.Read(KvDataType.F16, expected, i);
            var y = CodecTestData.Read(KvDataType.F16, actual, i);
            Assert.True(MathF.Abs(x - y) <= tolerance * MathF.Max(1, MathF.Abs(x)), $"element {i}: {x} vs {y}");
        }
    }
}
