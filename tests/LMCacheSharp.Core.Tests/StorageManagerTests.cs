using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Metrics;
using LMCacheSharp.Core.Storage;
using Microsoft.Extensions.Time.Testing;

namespace LMCacheSharp.Core.Tests;

public sealed class StorageManagerTests
{
    // Only bounds a failing test; no passing test waits for it.
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    private readonly KvBufferPool _pool = new();

    private KvChunk NewChunk(int i)
    {
        var chunk = _pool.Rent(4096);
        chunk.Span.Fill((byte)i);
        chunk.Key = PrefixHasher.ComputeKeys(TestData.Namespace(), [i], 1)[0];
        chunk.TokenCount = 1;
        chunk.SealChecksum();
        return chunk;
    }

    [Fact]
    public async Task Flush_waits_for_the_writes_queued_before_it_and_not_for_later_ones()
    {
        var tier = new GatedTier();
        var manager = new StorageManager([new MemoryTier(1 << 20, new CacheMetrics()), tier]);
        using (var first = NewChunk(1))
        {
            Assert.True(manager.Put(first));
        }

        await tier.Entered.WaitAsync(TestContext.Current.CancellationToken); // the writer is inside the first write
        var flush = manager.FlushAsync(TestContext.Current.CancellationToken);
        using (var second = NewChunk(2))
        {
            Assert.True(manager.Put(second)); // queued behind the flush's marker
        }

        Assert.False(flush.IsCompleted);
        tier.Gate.Release(); // the first write finishes; the second one then waits at the gate
        await flush.WaitAsync(Bound, TestContext.Current.CancellationToken);
        await tier.Entered.WaitAsync(TestContext.Current.CancellationToken);
        Assert.Equal(1, tier.Completed);
        Assert.Equal(1, manager.PendingWrites);

        tier.Gate.Release();
        await manager.FlushAsync(TestContext.Current.CancellationToken);
        Assert.Equal(2, tier.Completed);
        Assert.Equal(0, manager.PendingWrites);
        await manager.DisposeAsync();
        Assert.Equal(0, _pool.RentedCount);
    }

    [Fact]
    public async Task Flush_is_cancellable_and_returns_at_once_without_lower_tiers()
    {
        await using (var memoryOnly = new StorageManager([new MemoryTier(1 << 20, new CacheMetrics())]))
        {
            await memoryOnly.FlushAsync(TestContext.Current.CancellationToken);
        }

        var tier = new GatedTier();
        var manager = new StorageManager([tier]);
        using (var chunk = NewChunk(1))
        {
            manager.Put(chunk);
        }

        await tier.Entered.WaitAsync(TestContext.Current.CancellationToken);
        using var cts = new CancellationTokenSource();
        var flush = manager.FlushAsync(cts.Token);
        await cts.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => flush);
        tier.Gate.Release();
        await manager.DisposeAsync();
        Assert.Equal(0, _pool.RentedCount);
    }

    [Fact]
    public async Task Dispose_cancels_a_stuck_writer_and_waits_for_it_before_disposing_the_tiers()
    {
        var time = new FakeTimeProvider();
        var tier = new GatedTier();
        var manager = new StorageManager([tier], timeProvider: time);
        using (var stuck = NewChunk(1))
        {
            manager.Put(stuck);
        }

        await tier.Entered.WaitAsync(TestContext.Current.CancellationToken); // the writer waits at the gate for good
        using (var queued = NewChunk(2))
        {
            manager.Put(queued);
        }

        manager.RemoveInBackground(NewKey(3));
        var flushQueued = manager.FlushAsync(TestContext.Current.CancellationToken);

        var dispose = manager.DisposeAsync().AsTask();
        Assert.False(dispose.IsCompleted); // it waits for the writer first
        time.Advance(StorageManager.DisposeWriteTimeout);
        await dispose.WaitAsync(Bound, TestContext.Current.CancellationToken);

        Assert.True(tier.Cancelled);
        Assert.False(tier.DisposedDuringCall, "a tier was disposed while the writer was inside it");
        Assert.True(tier.Disposed);
        Assert.Equal(0, tier.Completed);
        Assert.Equal(0, manager.PendingWrites);
        await flushQueued.WaitAsync(Bound, TestContext.Current.CancellationToken); // dropped, and so done
        await manager.FlushAsync(TestContext.Current.CancellationToken);            // after disposal: at once
        Assert.Equal(0, _pool.RentedCount);
    }

    [Fact]
    public async Task Dispose_finishes_queued_writes_in_time_without_cancelling()
    {
        var time = new FakeTimeProvider();
        var tier = new GatedTier();
        var manager = new StorageManager([tier], timeProvider: time);
        for (var i = 0; i < 3; i++)
        {
            using var chunk = NewChunk(i);
            manager.Put(chunk);
        }

        await tier.Entered.WaitAsync(TestContext.Current.CancellationToken);
        var dispose = manager.DisposeAsync().AsTask();
        tier.Gate.Release(3);
        await dispose.WaitAsync(Bound, TestContext.Current.CancellationToken);
        Assert.Equal(3, tier.Completed);
        Assert.False(tier.Cancelled);
        Assert.Equal(0, _pool.RentedCount);
    }

    private static ChunkHash NewKey(int i) => PrefixHasher.ComputeKeys(TestData.Namespace(), [i], 1)[0];

    /// <summary>A disk-kind tier whose writes and deletes wait at <see cref="Gate"/>; records a dispose during a call.</summary>
    private sealed class GatedTier : IStorageTier
    {
        private int _inCall;

        public SemaphoreSlim Gate { get; } = new(0);

        public SemaphoreSlim Entered { get; } = new(0);

        public int Completed;

        public bool Cancelled { get; private set; }

        public bool Disposed { get; private set; }

        public bool DisposedDuringCall { get; private set; }

        public string Name => "gated";

        public StorageTierKind Kind => StorageTierKind.Disk;

        public ValueTask<int> CountPrefixAsync(ReadOnlyMemory<ChunkHash> keys, CancellationToken cancellationToken = default) => ValueTask.FromResult(0);

        public ValueTask<KvChunk?> GetAsync(ChunkHash key, CancellationToken cancellationToken = default) => ValueTask.FromResult<KvChunk?>(null);

        public async ValueTask<bool> PutAsync(KvChunk chunk, CancellationToken cancellationToken = default)
        {
            await WaitAtGateAsync(cancellationToken);
            return true;
        }

        public async ValueTask<bool> RemoveAsync(ChunkHash key, CancellationToken cancellationToken = default)
        {
            await WaitAtGateAsync(cancellationToken);
            return true;
        }

        public ValueTask ClearAsync(CancellationToken cancellationToken = default) => ValueTask.CompletedTask;

        public StorageTierStats GetStats() => new(0, 0, -1);

        public ValueTask DisposeAsync()
        {
            DisposedDuringCall |= Volatile.Read(ref _inCall) != 0;
            Disposed = true;
            return ValueTask.CompletedTask;
        }

        private async Task WaitAtGateAsync(CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref _inCall);
            try
            {
                Entered.Release();
                await Gate.WaitAsync(cancellationToken);
                Interlocked.Increment(ref Completed);
            }
            catch (OperationCanceledException)
            {
                Cancelled = true;
                throw;
            }
            finally
            {
                Interlocked.Decrement(ref _inCall);
            }
        }
    }
}
