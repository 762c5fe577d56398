using LMCacheSharp.Core.Codecs;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using Microsoft.Extensions.Time.Testing;

namespace LMCacheSharp.Server.Tests;

/// <summary>The write-behind queue of <see cref="DiskBackedCacheStore"/>: its bounds and its shutdown, with the writer held by a gate.</summary>
public sealed class DiskBackedCacheStoreQueueTests : IDisposable
{
    private static readonly KvFormat Format = new(2, 64, 64, KvDataType.F16, KvLayout.LayerKV);
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("lmcache-server-queue-test-");
    private readonly TaskCompletionSource _gate = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public void Dispose()
    {
        _gate.TrySetResult();
        _dir.Delete(recursive: true);
    }

    private DiskBackedCacheStore Open(int records = 65536)
    {
        var store = new DiskBackedCacheStore(64L << 20, new DiskStoreOptions { Directory = _dir.FullName, CapacityBytes = 64L << 20, WriteQueueRecords = records });
        store.WriterGate = () => new ValueTask(_gate.Task);
        return store;
    }

    private static ChunkHash Key(int i)
    {
        var bytes = new byte[ChunkHash.Size];
        BitConverter.TryWriteBytes(bytes, i + 1);
        bytes[31] = 0x3C;
        return new ChunkHash(bytes);
    }

    private static byte[] KeyBytes(ChunkHash key)
    {
        var bytes = new byte[ChunkHash.Size];
        key.WriteTo(bytes);
        return bytes;
    }

    private static byte[] EnvelopeBytes(ChunkHash key, int seed)
    {
        using var pool = new KvBufferPool(0);
        var chunk = pool.Rent((int)Format.PayloadLength(4));
        try
        {
            new Random(seed).NextBytes(chunk.Span);
            chunk.Key = key;
            chunk.TokenCount = 4;
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

    private static void PutEnvelope(DiskBackedCacheStore store, ChunkHash key, int seed)
    {
        var bytes = EnvelopeBytes(key, seed);
        var value = store.Rent(bytes.Length);
        try
        {
            bytes.CopyTo(value.Span);
            Assert.True(store.Put(KeyBytes(key), value));
        }
        finally
        {
            value.Release();
        }
    }

    [Fact]
    public async Task Deletes_of_keys_that_are_not_on_disk_queue_nothing()
    {
        await using var store = Open();
        for (var i = 0; i < 10_000; i++)
        {
            Assert.False(store.Remove(KeyBytes(Key(i))));
        }

        Assert.Equal(0, store.GetStats().Disk!.Value.RecordsEnqueued);
    }

    [Fact]
    public async Task Repeated_puts_and_deletes_of_one_key_keep_one_waiting_record_and_the_last_one_wins()
    {
        await using var store = Open();
        for (var i = 0; i < 100; i++)
        {
            PutEnvelope(store, Key(1), seed: i);
            if (i % 10 == 5)
            {
                store.Remove(KeyBytes(Key(1)));
            }
        }

        var stats = store.GetStats().Disk!.Value;
        Assert.True(stats.QueuedRecords <= 2, $"{stats.QueuedRecords} records waiting"); // at most one taken by the writer, one waiting
        Assert.True(stats.RecordsEnqueued <= 2, $"{stats.RecordsEnqueued} records queued");
        _gate.SetResult();
        await store.FlushAsync(TestContext.Current.CancellationToken);
        Assert.Equal(1, store.Disk.Count);
        using var onDisk = store.Disk.GetEnvelope(Key(1));
        Assert.NotNull(onDisk);
        Assert.True(onDisk.Span.SequenceEqual(EnvelopeBytes(Key(1), seed: 99)), "the disk holds the last PUT");
    }

    [Fact]
    public async Task Put_records_are_capped_and_a_put_over_the_cap_stays_in_memory()
    {
        await using var store = Open(records: 16);
        for (var i = 0; i < 100; i++)
        {
            PutEnvelope(store, Key(i), seed: i);
        }

        var stats = store.GetStats().Disk!.Value;
        Assert.True(stats.QueuedRecords <= 16, $"{stats.QueuedRecords} records waiting");
        Assert.Equal(100 - stats.QueuedRecords, stats.WritesDropped);
        Assert.Equal(100, store.GetStats().Items); // every value is served from memory
        _gate.SetResult();
        await store.FlushAsync(TestContext.Current.CancellationToken);
        Assert.Equal(stats.QueuedRecords, store.Disk.Count);
    }

    [Fact]
    public async Task Shutdown_flushes_within_its_time_then_drops_the_rest_and_reports_both()
    {
        var time = new FakeTimeProvider();
        var store = Open();
        for (var i = 0; i < 3; i++)
        {
            PutEnvelope(store, Key(i), seed: i);
        }

        var shutdown = store.ShutdownAsync(TimeSpan.FromSeconds(5), time);
        Assert.False(shutdown.IsCompleted); // the writer is held
        time.Advance(TimeSpan.FromSeconds(5));
        _gate.SetResult();
        var report = await shutdown.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
        Assert.True(report.TimedOut);
        Assert.Equal(3, report.QueuedRecords);
        Assert.Equal(report.QueuedRecords, report.Written + report.Dropped);
        Assert.True(report.Dropped >= 2, $"{report.Dropped} dropped"); // at most the record already taken is written
    }

    [Fact]
    public async Task Shutdown_in_time_writes_everything()
    {
        var store = Open();
        for (var i = 0; i < 3; i++)
        {
            PutEnvelope(store, Key(i), seed: i);
        }

        _gate.SetResult();
        var report = await store.ShutdownAsync(TimeSpan.FromSeconds(30));
        Assert.False(report.TimedOut);
        Assert.Equal(0, report.Dropped);
        Assert.Equal(3, report.Written);
        await using var reopened = new DiskBackedCacheStore(64L << 20, new DiskStoreOptions { Directory = _dir.FullName, CapacityBytes = 64L << 20 });
        Assert.Equal(3, reopened.Disk.Count);
    }
}
