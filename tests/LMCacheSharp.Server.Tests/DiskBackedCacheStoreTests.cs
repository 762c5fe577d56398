using LMCacheSharp.Core.Codecs;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Metrics;
using LMCacheSharp.Core.Storage;
using LMCacheSharp.Remote;

namespace LMCacheSharp.Server.Tests;

/// <summary><see cref="DiskBackedCacheStore"/> on its own and behind the real server, client and remote tier.</summary>
public sealed class DiskBackedCacheStoreTests : IDisposable
{
    private static readonly KvFormat Format = new(2, 64, 64, KvDataType.F16, KvLayout.LayerKV); // 256 B/token

    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("lmcache-server-disk-test-");

    public void Dispose() => _dir.Delete(recursive: true);

    private DiskStoreOptions DiskOptions(long capacityBytes = 64L << 20) => new() { Directory = _dir.FullName, CapacityBytes = capacityBytes };

    private async Task<CacheServer> StartAsync(long memoryBytes = 64L << 20, long diskBytes = 64L << 20)
    {
        var server = CacheServer.Create(new CacheServerOptions { Port = 0, CapacityBytes = memoryBytes, Disk = DiskOptions(diskBytes) });
        await server.StartAsync(TestContext.Current.CancellationToken);
        return server;
    }

    private static CacheClient Client(CacheServer server) => new(new CacheClientOptions { Host = "127.0.0.1", Port = server.EndPoint.Port, Connections = 2 });

    private static ChunkHash Key(int i)
    {
        var bytes = new byte[ChunkHash.Size];
        BitConverter.TryWriteBytes(bytes, i + 1);
        bytes[31] = 0x5A;
        return new ChunkHash(bytes);
    }

    private static byte[] KeyBytes(ChunkHash key)
    {
        var bytes = new byte[ChunkHash.Size];
        key.WriteTo(bytes);
        return bytes;
    }

    /// <summary>A serialized chunk envelope (what the remote tier sends) of <paramref name="tokens"/> tokens.</summary>
    private static byte[] Envelope(ChunkHash key, int tokens, int seed)
    {
        using var pool = new KvBufferPool(0);
        var chunk = pool.Rent((int)Format.PayloadLength(tokens));
        try
        {
            new Random(seed).NextBytes(chunk.Span);
            chunk.Key = key;
            chunk.TokenCount = tokens;
            chunk.Format = Format;
            chunk.SealChecksum();
            var bytes = new byte[ChunkEnvelope.MaxSerializedLength(chunk, RawCodec.Instance)];
            return bytes[..ChunkEnvelope.Serialize(chunk, RawCodec.Instance, bytes)];
        }
        finally
        {
            chunk.Release();
        }
    }

    private static void Put(DiskBackedCacheStore store, ReadOnlySpan<byte> key, byte[] value)
    {
        var buffer = store.Rent(value.Length);
        try
        {
            value.CopyTo(buffer.Span);
            Assert.True(store.Put(key, buffer));
        }
        finally
        {
            buffer.Release();
        }
    }

    private static byte[]? Get(DiskBackedCacheStore store, ReadOnlySpan<byte> key)
    {
        var value = store.Get(key);
        try
        {
            return value?.Span.ToArray();
        }
        finally
        {
            value?.Release();
        }
    }

    [Fact]
    public async Task A_restarted_server_serves_what_the_remote_tier_stored_bit_identical()
    {
        var options = new LMCacheOptions { RemoteTimeoutMs = 5000, ChunkSize = 16, MaxLocalCpuSize = 0.05 };
        var pool = new KvBufferPool();
        using var metrics = new CacheMetrics();
        var chunks = Enumerable.Range(0, 5).Select(i =>
        {
            var chunk = pool.Rent((int)Format.PayloadLength(16 + i));
            new Random(i).NextBytes(chunk.Span);
            chunk.Key = Key(i);
            chunk.TokenCount = 16 + i;
            chunk.Format = Format;
            chunk.SealChecksum();
            return chunk;
        }).ToArray();
        var keys = chunks.Select(c => c.Key).ToArray();

        await using (var server = await StartAsync())
        {
            await using var tier = RemoteTierFactory.Create(server.Url, options, pool, metrics);
            foreach (var chunk in chunks)
            {
                Assert.True(await tier.PutAsync(chunk, TestContext.Current.CancellationToken));
            }
        } // disposing the server finishes the queued disk writes

        await using (var server = await StartAsync())
        {
            var store = Assert.IsType<DiskBackedCacheStore>(server.Store);
            Assert.Equal(5, store.Disk.StartupScan.Recovered);
            Assert.Equal(0, server.Store.GetStats().Items); // nothing in memory yet: every hit below comes from disk
            await using var tier = RemoteTierFactory.Create(server.Url, options, pool, metrics);
            Assert.Equal(5, await tier.CountPrefixAsync(keys, TestContext.Current.CancellationToken));
            foreach (var chunk in chunks)
            {
                var read = await tier.GetAsync(chunk.Key, TestContext.Current.CancellationToken);
                Assert.NotNull(read);
                Assert.Equal(chunk.TokenCount, read.TokenCount);
                Assert.Equal(chunk.Format, read.Format);
                Assert.Equal(chunk.Checksum, read.Checksum);
                Assert.True(read.Span.SequenceEqual(chunk.Span));
                read.Release();
            }

            var stats = server.Store.GetStats();
            Assert.Equal(5, stats.Disk!.Value.Hits);
            Assert.Equal(5, stats.Items); // promoted into memory
            Assert.Equal(0, metrics.Snapshot().CorruptChunks);
        }

        foreach (var chunk in chunks)
        {
            chunk.Release();
        }

        Assert.Equal(0, pool.RentedCount);
        pool.Dispose();
    }

    [Fact]
    public async Task A_corrupted_file_is_a_miss_and_the_server_stays_up()
    {
        var envelopes = Enumerable.Range(0, 3).Select(i => Envelope(Key(i), 32, i)).ToArray();
        string corruptPath;
        await using (var server = await StartAsync())
        {
            await using var client = Client(server);
            for (var i = 0; i < 3; i++)
            {
                Assert.True(await client.PutAsync(KeyBytes(Key(i)), envelopes[i]));
            }

            corruptPath = ((DiskBackedCacheStore)server.Store).Disk.PathOf(Key(1));
        }

        // Flip one payload byte of the second value's file.
        await using (var file = new FileStream(corruptPath, FileMode.Open, FileAccess.ReadWrite))
        {
            file.Position = file.Length - 10;
            var b = file.ReadByte();
            file.Position = file.Length - 10;
            file.WriteByte((byte)(b ^ 0xFF));
        }

        await using (var server = await StartAsync())
        {
            await using var client = Client(server);
            Assert.Equal(envelopes[0], await client.GetAsync(KeyBytes(Key(0))));
            Assert.Null(await client.GetAsync(KeyBytes(Key(1))));
            Assert.Equal(envelopes[2], await client.GetAsync(KeyBytes(Key(2))));
            await client.PingAsync();
            Assert.False(File.Exists(corruptPath)); // deleted, so the next restart does not find it either
            var stats = await client.StatsAsync();
            Assert.Equal(1, stats["disk_corrupt"]);
            Assert.Equal(2, stats["disk_items"]);
            Assert.Equal(2, stats["disk_hits"]);
            Assert.Equal(0, await client.ExistsPrefixAsync([KeyBytes(Key(1))]));
        }
    }

    [Fact]
    public async Task The_disk_capacity_is_respected_and_the_most_recent_values_survive()
    {
        const long diskBytes = 1L << 20;
        var envelopes = Enumerable.Range(0, 20).Select(i => Envelope(Key(i), 400, i)).ToArray(); // ~100 KiB each
        await using (var server = await StartAsync(memoryBytes: 4L << 20, diskBytes: diskBytes))
        {
            await using var client = Client(server);
            for (var i = 0; i < envelopes.Length; i++)
            {
                Assert.True(await client.PutAsync(KeyBytes(Key(i)), envelopes[i]));
            }

            await ((DiskBackedCacheStore)server.Store).FlushAsync(TestContext.Current.CancellationToken);
            var stats = await client.StatsAsync();
            Assert.True(stats["disk_used_bytes"] <= diskBytes, $"{stats["disk_used_bytes"]} bytes on a {diskBytes}-byte disk");
            Assert.Equal(20, stats["disk_writes"]);
            Assert.True(stats["disk_evictions"] >= 10);
            Assert.Equal(20, stats["items"]); // memory holds them all
        }

        Assert.True(_dir.EnumerateFiles("*.kv", SearchOption.AllDirectories).Sum(f => (f.Length + 4095) / 4096 * 4096) <= diskBytes);
        await using (var server = await StartAsync(diskBytes: diskBytes))
        {
            await using var client = Client(server);
            Assert.Equal(envelopes[19], await client.GetAsync(KeyBytes(Key(19))));
            Assert.Null(await client.GetAsync(KeyBytes(Key(0))));
        }
    }

    [Fact]
    public async Task Values_that_cannot_go_to_disk_are_kept_in_memory_only()
    {
        var key = KeyBytes(Key(7));
        await using (var store = new DiskBackedCacheStore(16L << 20, DiskOptions()))
        {
            Put(store, "short-key"u8, [1, 2, 3]);
            Put(store, key, [4, 5, 6]); // 32-byte key, but not an envelope
            Put(store, KeyBytes(Key(8)), Envelope(Key(9), 16, 1)); // an envelope for another key
            await store.FlushAsync(TestContext.Current.CancellationToken);
            Assert.Equal([1, 2, 3], Get(store, "short-key"u8));
            Assert.Equal([4, 5, 6], Get(store, key));
            Assert.True(store.Contains(key));
            var stats = store.GetStats();
            Assert.Equal(3, stats.Disk!.Value.Refused);
            Assert.Equal(0, stats.Disk.Value.Items);
        }

        await using (var store = new DiskBackedCacheStore(16L << 20, DiskOptions()))
        {
            Assert.Null(Get(store, key));
            Assert.Null(Get(store, "short-key"u8));
        }
    }

    [Fact]
    public async Task Put_replaces_delete_and_clear_reach_the_disk()
    {
        byte[] K(int i) => KeyBytes(Key(i));
        var first = Envelope(Key(0), 16, 1);
        var second = Envelope(Key(0), 24, 2);
        await using (var store = new DiskBackedCacheStore(16L << 20, DiskOptions()))
        {
            Put(store, K(0), first);
            Put(store, K(0), second); // same key, another chunk envelope: replaces on disk too
            Put(store, K(1), Envelope(Key(1), 16, 3));
            Put(store, K(2), Envelope(Key(2), 16, 4));
            Assert.True(store.Remove(K(1)));
            Assert.False(store.Remove(K(1)));
            Assert.Null(Get(store, K(1)));
            await store.FlushAsync(TestContext.Current.CancellationToken);
            Assert.Equal(2, store.GetStats().Disk!.Value.Items);
        }

        await using (var store = new DiskBackedCacheStore(16L << 20, DiskOptions()))
        {
            Assert.Equal(second, Get(store, K(0)));
            Assert.Null(Get(store, K(1)));
            Assert.True(store.Contains(K(2)));
            Assert.True(store.Remove(K(2))); // present on disk only: still found
            store.Clear();
            Assert.Null(Get(store, K(0))); // the clear is still queued: the disk's old contents are not served
            Put(store, K(3), Envelope(Key(3), 16, 5)); // put after the clear survives it
        }

        await using (var store = new DiskBackedCacheStore(16L << 20, DiskOptions()))
        {
            Assert.Null(Get(store, K(0)));
            Assert.Null(Get(store, K(2)));
            Assert.NotNull(Get(store, K(3)));
            Assert.Equal(1, store.Disk.Count);
        }
    }

    [Fact]
    public async Task The_start_up_scan_reports_its_progress_where_the_options_ask()
    {
        await using (var store = new DiskBackedCacheStore(16L << 20, DiskOptions()))
        {
            for (var i = 0; i < 3; i++)
            {
                Put(store, KeyBytes(Key(i)), Envelope(Key(i), 16, i));
            }

            await store.FlushAsync(TestContext.Current.CancellationToken);
        }

        var reports = new List<DiskTierScanProgress>();
        var options = DiskOptions();
        options.ScanProgress = new Reports(reports);
        await using (var store = new DiskBackedCacheStore(16L << 20, options))
        {
            Assert.Equal(3, store.Disk.StartupScan.Recovered);
            Assert.Equal(1.0, reports[^1].Fraction);
            Assert.Equal(3, reports[^1].ChunkFilesRead);
        }
    }

    [Fact]
    public async Task A_value_evicted_from_memory_is_read_from_disk_and_promoted()
    {
        await using var store = new DiskBackedCacheStore(1L << 20, DiskOptions());
        var envelopes = Enumerable.Range(0, 12).Select(i => Envelope(Key(i), 400, i)).ToArray(); // 12 x ~100 KiB > 1 MiB
        for (var i = 0; i < envelopes.Length; i++)
        {
            Put(store, KeyBytes(Key(i)), envelopes[i]);
        }

        await store.FlushAsync(TestContext.Current.CancellationToken);
        Assert.True(store.Memory.GetStats().Evictions > 0);
        Assert.False(store.Memory.Contains(KeyBytes(Key(0))));
        Assert.True(store.Contains(KeyBytes(Key(0)))); // EXISTS-PREFIX sees the disk
        Assert.Equal(envelopes[0], Get(store, KeyBytes(Key(0))));
        Assert.True(store.Memory.Contains(KeyBytes(Key(0))));
        Assert.Equal(1, store.GetStats().Disk!.Value.Hits);
        Assert.Equal(envelopes[0], Get(store, KeyBytes(Key(0))));
        Assert.Equal(1, store.GetStats().Disk!.Value.Hits); // the second GET came from memory
    }

    [Fact]
    public async Task A_pin_promotes_a_value_found_only_on_disk_and_holds_it_in_memory_under_pressure()
    {
        await using var store = new DiskBackedCacheStore(1L << 20, DiskOptions());
        var envelopes = Enumerable.Range(0, 24).Select(i => Envelope(Key(i), 400, i)).ToArray(); // ~100 KiB each, 1 MiB of memory
        for (var i = 0; i < 12; i++)
        {
            Put(store, KeyBytes(Key(i)), envelopes[i]);
        }

        await store.FlushAsync(TestContext.Current.CancellationToken);
        Assert.False(store.Memory.Contains(KeyBytes(Key(0))));
        Assert.Equal(new CachePinResult(1, false), store.Pin([KeyBytes(Key(0)), KeyBytes(Key(99))])); // 99 is nowhere
        Assert.Equal(1, store.Memory.PinCount(KeyBytes(Key(0))));
        for (var i = 12; i < 24; i++)
        {
            Put(store, KeyBytes(Key(i)), envelopes[i]);
        }

        await store.FlushAsync(TestContext.Current.CancellationToken);
        Assert.True(store.Memory.Contains(KeyBytes(Key(0)))); // memory turned over, the pin stayed
        Assert.Equal(1, store.GetStats().PinnedItems);
        Assert.Equal(1, store.Unpin([KeyBytes(Key(0))]));
        Assert.Equal(envelopes[0], Get(store, KeyBytes(Key(0))));
    }

    [Fact]
    public async Task Concurrent_puts_gets_and_deletes_never_serve_another_keys_value_and_leak_no_buffer()
    {
        await using var store = new DiskBackedCacheStore(1L << 20, DiskOptions(2L << 20));
        var envelopes = Enumerable.Range(0, 24).Select(i => Envelope(Key(i), 200, i)).ToArray(); // ~50 KiB each
        var work = Enumerable.Range(0, 4).Select(t => Task.Run(() =>
        {
            var random = new Random(t);
            for (var n = 0; n < 400; n++)
            {
                var i = random.Next(envelopes.Length);
                switch (random.Next(10))
                {
                    case < 4:
                        Put(store, KeyBytes(Key(i)), envelopes[i]);
                        break;
                    case 4:
                        store.Remove(KeyBytes(Key(i)));
                        break;
                    default:
                        if (Get(store, KeyBytes(Key(i))) is { } value)
                        {
                            Assert.Equal(envelopes[i], value);
                        }

                        break;
                }
            }
        }, TestContext.Current.CancellationToken));
        await Task.WhenAll(work);
        await store.FlushAsync(TestContext.Current.CancellationToken);
        Assert.True(store.GetStats().Disk!.Value.UsedBytes <= 2L << 20);
        store.Clear();
        await store.FlushAsync(TestContext.Current.CancellationToken);
        Assert.Equal(0, store.Memory.Pool.RentedCount);
        Assert.Equal(0, store.Disk.Count);
        Assert.Equal(0, store.GetStats().Disk!.Value.Corrupt);
    }

    [Fact]
    public async Task A_second_server_over_the_same_directory_fails_to_start_with_a_clear_error()
    {
        await using var server = await StartAsync();
        var e = Assert.Throws<IOException>(() => CacheServer.Create(new CacheServerOptions { Port = 0, Disk = DiskOptions() }));
        Assert.Contains("in use", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Bad_disk_options_are_named()
    {
        var options = new CacheServerOptions { Disk = new DiskStoreOptions { Directory = " ", CapacityBytes = 10, WriteQueueBytes = 0 } };
        var errors = options.GetErrors();
        Assert.Contains(errors, e => e.StartsWith("disk: ", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.StartsWith("disk capacity: ", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.StartsWith("disk write queue: ", StringComparison.Ordinal));
    }

    private sealed class Reports(List<DiskTierScanProgress> reports) : IProgress<DiskTierScanProgress>
    {
        public void Report(DiskTierScanProgress value) => reports.Add(value);
    }
}
