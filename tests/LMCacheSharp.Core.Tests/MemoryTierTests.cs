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

    [Theory]
    [InlineData(EvictionPolicy.Lru)]
    [InlineData(EvictionPolicy.Lfu)]
    [InlineData(EvictionPolicy.Fifo)]
    [InlineData(EvictionPolicy.Mru)]
    public void Pinned_chunks_survive_pressure_under_every_policy(EvictionPolicy policy)
    {
        var tier = new MemoryTier(4 * 4096, _metrics, policy: policy, maxPinnedBytes: 2 * 4096);
        for (var i = 0; i < 4; i++)
        {
            using var c = NewChunk(i);
            Assert.True(tier.Put(c));
        }

        var pin = tier.Pin([Key(0), Key(3)]); // the oldest and the newest: each policy's first victim is one of them
        Assert.Equal(new PinResult(2, 0, new PinStats(2, 2 * 4096, 2 * 4096), false, 2 * 4096), pin);
        for (var i = 10; i < 30; i++)
        {
            using var c = NewChunk(i);
            Assert.True(tier.Put(c));
        }

        Assert.True(tier.Contains(Key(0)));
        Assert.True(tier.Contains(Key(3)));
        Assert.Equal(4, tier.Count);
        Assert.Equal(4 * 4096, tier.UsedBytes);
        Assert.Equal(new HashSet<ChunkHash> { Key(0), Key(3) }, tier.KeysByRecency().Take(2).ToHashSet()); // pinned first
        tier.Clear();
        Assert.Equal(new PinStats(0, 0, 2 * 4096), tier.GetPinStats());
    }

    [Fact]
    public void Unpin_makes_a_chunk_evictable_again_as_just_used()
    {
        var tier = new MemoryTier(3 * 4096, _metrics);
        for (var i = 0; i < 3; i++)
        {
            using var c = NewChunk(i);
            tier.Put(c);
        }

        tier.Pin([Key(0)]);
        tier.TryGet(Key(0))!.Release(); // a hit on a pinned chunk leaves it out of the recency order
        Assert.Equal(1, tier.Unpin([Key(0)]).Changed);
        Assert.Equal([Key(0), Key(2), Key(1)], tier.KeysByRecency()); // back at the head
        for (var i = 3; i < 6; i++)
        {
            using var c = NewChunk(i);
            tier.Put(c);
        }

        Assert.False(tier.Contains(Key(0)));
        Assert.Equal(new PinStats(0, 0, tier.MaxPinnedBytes), tier.GetPinStats());
        tier.Clear();
    }

    [Fact]
    public void Pins_are_counted_a_chunk_pinned_twice_needs_two_unpins()
    {
        var tier = new MemoryTier(2 * 4096, _metrics, maxPinnedBytes: 2 * 4096);
        using (var c = NewChunk(1))
        {
            tier.Put(c);
        }

        Assert.Equal(1, tier.Pin([Key(1)]).Changed);
        var twice = tier.Pin([Key(1), Key(2)]); // 2 is absent
        Assert.Equal((1, 1, 0L), (twice.Changed, twice.Missing, twice.RequestedBytes));
        Assert.Equal(2, tier.PinCount(Key(1)));
        Assert.Equal(new PinStats(1, 4096, 2 * 4096), tier.GetPinStats());
        Assert.Equal(1, tier.Unpin([Key(1)]).Changed);
        Assert.Equal(1, tier.PinCount(Key(1)));
        Assert.Equal(1, tier.Unpin([Key(1)]).Changed);
        var more = tier.Unpin([Key(1), Key(2)]);
        Assert.Equal((0, 2), (more.Changed, more.Missing)); // not pinned, absent
        Assert.Equal(new PinStats(0, 0, 2 * 4096), tier.GetPinStats());
        tier.Clear();
    }

    [Fact]
    public void A_pin_over_the_limit_is_refused_whole()
    {
        var tier = new MemoryTier(4 * 4096, _metrics); // default limit: half, 2 chunks
        Assert.Equal(2 * 4096, tier.MaxPinnedBytes);
        for (var i = 0; i < 3; i++)
        {
            using var c = NewChunk(i);
            tier.Put(c);
        }

        Assert.Equal(1, tier.Pin([Key(0)]).Changed);
        var refused = tier.Pin([Key(0), Key(1), Key(2)]);
        Assert.True(refused.OverLimit);
        Assert.Equal((0, 2 * 4096L), (refused.Changed, refused.RequestedBytes));
        Assert.Equal(0, tier.PinCount(Key(1)));
        Assert.Equal(1, tier.PinCount(Key(0))); // untouched by the refused pin
        var duplicates = tier.Pin([Key(1), Key(1)]); // a key listed twice counts its bytes once: fits
        Assert.Equal((2, false), (duplicates.Changed, duplicates.OverLimit));
        Assert.Equal(new PinStats(2, 2 * 4096, 2 * 4096), duplicates.Totals);
        tier.Clear();
    }

    [Fact]
    public void When_everything_left_is_pinned_a_store_is_dropped_not_a_pin_evicted()
    {
        var tier = new MemoryTier(2 * 4096, _metrics, maxPinnedBytes: 2 * 4096);
        for (var i = 0; i < 2; i++)
        {
            using var c = NewChunk(i);
            tier.Put(c);
        }

        tier.Pin([Key(0), Key(1)]);
        using (var c = NewChunk(2))
        {
            Assert.False(tier.Put(c));
        }

        Assert.True(tier.Contains(Key(0)) && tier.Contains(Key(1)));
        Assert.Equal(1, _metrics.Snapshot().DroppedStores);
        Assert.Equal(0, _metrics.Snapshot().Evictions);
        tier.Unpin([Key(1)]);
        using (var c = NewChunk(2))
        {
            Assert.True(tier.Put(c)); // evicts 1, the only unpinned chunk
        }

        Assert.False(tier.Contains(Key(1)));
        Assert.True(tier.Contains(Key(0)));
        tier.Clear();
    }

    [Fact]
    public void Removing_a_pinned_chunk_takes_its_pins_with_it()
    {
        var tier = new MemoryTier(4 * 4096, _metrics);
        using (var c = NewChunk(1))
        {
            tier.Put(c);
        }

        tier.Pin([Key(1), Key(1)]);
        Assert.True(tier.Remove(Key(1)));
        Assert.Equal(new PinStats(0, 0, tier.MaxPinnedBytes), tier.GetPinStats());
        using (var c = NewChunk(1))
        {
            tier.Put(c);
        }

        Assert.Equal(0, tier.PinCount(Key(1))); // stored again: a fresh, unpinned chunk
        Assert.Equal(0, tier.Unpin([Key(1)]).Changed);
        tier.Clear();
    }

    [Fact]
    public void Pinned_chunks_and_bytes_are_published_on_the_meter()
    {
        var tier = new MemoryTier(4 * 4096, _metrics);
        using (var c = NewChunk(1))
        {
            tier.Put(c);
        }

        tier.Pin([Key(1)]);
        var seen = new Dictionary<string, long>();
        using var listener = new System.Diagnostics.Metrics.MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter == _metrics.Meter)
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<long>((i, v, _, _) => seen[i.Name] = v);
        listener.Start();
        listener.RecordObservableInstruments();
        Assert.Equal(1, seen["lmcache.pinned_chunks"]);
        Assert.Equal(4096, seen["lmcache.pinned_bytes"]);
        Assert.Equal(new PinStats(1, 4096, 2 * 4096), _metrics.Pinned);
        tier.Clear();
    }

    [Fact]
    public void The_pin_limit_is_checked()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new MemoryTier(4096, maxPinnedBytes: 8192));
        Assert.Throws<ArgumentOutOfRangeException>(() => new MemoryTier(4096, maxPinnedBytes: -1));
        var none = new MemoryTier(4096, maxPinnedBytes: 0);
        using (var c = NewChunk(1))
        {
            none.Put(c);
        }

        Assert.True(none.Pin([Key(1)]).OverLimit);
        Assert.Equal(0, none.Pin([Key(2)]).Changed); // nothing held: nothing to pin, not over the limit
        none.Clear();
    }

    public void Dispose()
    {
        Assert.Equal(0, _pool.RentedCount);
        _pool.Dispose();
        _metrics.Dispose();
    }
}
