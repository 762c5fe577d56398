using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Metrics;
using LMCacheSharp.Core.Storage;

namespace LMCacheSharp.Core.Tests;

public sealed class MemoryTierTests : IDisposable
{
    private readonly KvBufferPool _pool = new();
    private readonly CacheMetrics _metrics = new();

    private KvChunk NewChunk(int i, int length = 4096)
    {
        var chunk = _pool.Rent(length);
        chunk.Span.Fill((byte)i);
        chunk.Key = Key(i);
        chunk.TokenCount = 1;
        chunk.SealChecksum();
        return chunk;
    }

    private static ChunkHash Key(int i) => PrefixHasher.ComputeKeys(TestData.Namespace(), [i], 1)[0];

    [Theory]
    [InlineData(EvictionPolicy.Lru, 1)]  // 0 and 2 were used after 1
    [InlineData(EvictionPolicy.Fifo, 0)] // the oldest insertion, although it was just used
    [InlineData(EvictionPolicy.Mru, 2)]  // the last one used
    [InlineData(EvictionPolicy.Lfu, 1)]  // 0 used twice, 2 once, 1 never since its insertion
    public void Each_cache_policy_evicts_its_victim(EvictionPolicy policy, int victim)
    {
        var tier = new MemoryTier(3 * 4096, _metrics, policy: policy);
        for (var i = 0; i < 3; i++)
        {
            using var c = NewChunk(i);
            Assert.True(tier.Put(c));
        }

        tier.TryGet(Key(0))!.Release();
        tier.TryGet(Key(0))!.Release();
        tier.TryGet(Key(2))!.Release(); // uses: 0 -> 3, 1 -> 1, 2 -> 2; most recent: 2
        using (var c = NewChunk(3))
        {
            Assert.True(tier.Put(c));
        }

        for (var i = 0; i < 4; i++)
        {
            var hit = tier.TryGet(Key(i));
            Assert.Equal(i != victim, hit is not null);
            hit?.Release();
        }

        tier.Clear();
    }

    [Fact]
    public void Evicts_least_recently_used_first_and_holds_capacity()
    {
        var tier = new MemoryTier(3 * 4096, _metrics);
        for (var i = 0; i < 3; i++)
        {
            using var c = NewChunk(i);
            Assert.True(tier.Put(c));
        }

        tier.TryGet(Key(0))!.Release(); // 0 is now most recent: order 0, 2, 1
        using (var c = NewChunk(3))
        {
            tier.Put(c); // evicts 1
        }

        Assert.Equal([Key(3), Key(0), Key(2)], tier.KeysByRecency());
        Assert.Null(tier.TryGet(Key(1)));
        Assert.Equal(3 * 4096, tier.UsedBytes);
        Assert.Equal(1, _metrics.Snapshot().Evictions);
        tier.Clear();
        Assert.Equal(0, _pool.RentedCount);
    }

    [Fact]
    public void A_chunk_being_read_survives_eviction_until_released()
    {
        var tier = new MemoryTier(4096, _metrics);
        using (var c = NewChunk(1))
        {
            tier.Put(c);
        }

        var reader = tier.TryGet(Key(1))!;
        using (var c = NewChunk(2))
        {
            tier.Put(c); // evicts 1 while the reader holds it
        }

        Assert.False(tier.Contains(Key(1)));
        Assert.True(reader.Span.ToArray().All(b => b == 1));
        Assert.True(reader.VerifyChecksum());
        Assert.Equal(2, _pool.RentedCount);
        reader.Release();
        Assert.Equal(1, _pool.RentedCount);
        tier.Clear();
        Assert.Equal(0, _pool.RentedCount);
    }

    [Fact]
    public void A_chunk_larger_than_the_tier_is_refused_and_counted()
    {
        var tier = new MemoryTier(4096, _metrics);
        using var big = NewChunk(1, 8192);
        Assert.False(tier.Put(big));
        Assert.Equal(0, tier.Count);
        Assert.Equal(1, _metrics.Snapshot().DroppedStores);
    }

    [Fact]
    public void CountPrefix_stops_at_the_first_absent_key()
    {
        var tier = new MemoryTier(1 << 20);
        foreach (var i in new[] { 0, 1, 3 })
        {
            using var c = NewChunk(i);
            tier.Put(c);
        }

        Assert.Equal(2, tier.CountPrefix([Key(0), Key(1), Key(2), Key(3)]));
        Assert.Equal(0, tier.CountPrefix([Key(2), Key(3)]));
        tier.Clear();
    }

    [Fact]
    public void Verify_on_read_drops_a_corrupted_chunk_and_counts_it()
    {
        var tier = new MemoryTier(1 << 20, _metrics, verifyOnRead: true);
        using (var c = NewChunk(1))
        {
            tier.Put(c);
            c.Span[7] ^= 1; // corrupt the shared buffer behind the tier's back
        }

        Assert.Null(tier.TryGet(Key(1)));
        Assert.False(tier.Contains(Key(1)));
        Assert.Equal(1, _metrics.Snapshot().CorruptChunks);
        Assert.Equal(0, _pool.RentedCount);
    }

    [Fact]
    public void Concurrent_puts_gets_and_evictions_leak_nothing()
    {
        var tier = new MemoryTier(16 * 4096, _metrics);
        Parallel.For(0, 4000, new ParallelOptions { MaxDegreeOfParallelism = 4 }, i =>
        {
            var k = i % 64;
            if (i % 3 == 0)
            {
                using var c = NewChunk(k);
                tier.Put(c);
            }
            else if (tier.TryGet(Key(k)) is { } hit)
            {
                Assert.True(hit.Span.ToArray().All(b => b == (byte)k));
                hit.Release();
            }
        });
        Assert.True(tier.UsedBytes <= tier.CapacityBytes);
        tier.Clear();
        Assert.Equal(0, _pool.RentedCount);
    }

    public void Dispose()
    {
        Assert.Equal(0, _pool.RentedCount);
        _pool.Dispose();
        _metrics.Dispose();
    }
}
