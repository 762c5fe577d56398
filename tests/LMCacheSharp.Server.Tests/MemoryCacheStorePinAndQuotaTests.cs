using System.Text;
using LMCacheSharp.Core.Keys;

namespace LMCacheSharp.Server.Tests;

/// <summary><see cref="MemoryCacheStore"/>'s pins (PIN, UNPIN) and quota groups (PUT-IN-GROUP, isolated LRU).</summary>
public class MemoryCacheStorePinAndQuotaTests
{
    private const int Block = 4096;

    private static byte[] K(string key) => Encoding.ASCII.GetBytes(key);

    private static CachePutStatus Put(MemoryCacheStore store, string key, string? group = null, int length = Block)
    {
        var value = store.Rent(length);
        try
        {
            return store.Put(K(key), value, group is null ? default : Encoding.ASCII.GetBytes(group));
        }
        finally
        {
            value.Release();
        }
    }

    private static bool Has(MemoryCacheStore store, string key) => store.Contains(K(key));

    private static MemoryCacheStore Store(int blocks, long? maxPinned = null, Dictionary<string, long>? quotas = null, long? defaultQuota = null) =>
        new(blocks * Block, poolRetainedBytes: 0, new CacheStoreLimits
        {
            MaxPinnedBytes = maxPinned,
            GroupQuotas = quotas ?? [],
            DefaultGroupQuotaBytes = defaultQuota,
        });

    [Fact]
    public void Pinned_keys_survive_eviction_pressure_and_unpin_makes_them_evictable()
    {
        using var store = Store(4);
        Put(store, "a");
        Put(store, "b");
        Assert.Equal(new CachePinResult(2, false), store.Pin([K("a"), K("b"), K("absent")]));
        for (var i = 0; i < 20; i++)
        {
            Assert.Equal(CachePutStatus.Stored, Put(store, "x" + i));
        }

        Assert.True(Has(store, "a") && Has(store, "b"));
        var stats = store.GetStats();
        Assert.Equal((4L, 2L, 2L * Block, 2L * Block), (stats.Items, stats.PinnedItems, stats.PinnedBytes, stats.MaxPinnedBytes));
        Assert.Equal(2, store.Unpin([K("a"), K("b"), K("absent")]));
        for (var i = 0; i < 4; i++)
        {
            Put(store, "y" + i); // back in the recency order as just used: they go after the two older values
        }

        Assert.False(Has(store, "a") || Has(store, "b"));
        Assert.Equal(0, store.GetStats().PinnedItems);
        Assert.Equal(4, store.Pool.RentedCount);
    }

    [Fact]
    public void Pins_are_counted_and_a_replaced_value_keeps_them()
    {
        using var store = Store(4);
        Put(store, "a");
        store.Pin([K("a")]);
        store.Pin([K("a")]);
        Assert.Equal(2, store.PinCount(K("a")));
        Assert.Equal(CachePutStatus.Stored, Put(store, "a", length: 2 * Block)); // replaced, larger: still pinned twice
        Assert.Equal(2, store.PinCount(K("a")));
        Assert.Equal(2 * Block, store.GetStats().PinnedBytes);
        Assert.Equal(1, store.Unpin([K("a")]));
        Assert.Equal(1, store.Unpin([K("a")]));
        Assert.Equal(0, store.Unpin([K("a")]));
        Assert.Equal(0, store.GetStats().PinnedBytes);
    }

    [Fact]
    public void A_pin_over_the_limit_is_refused_whole_and_a_put_with_no_unpinned_room_is_refused()
    {
        using var store = Store(4, maxPinned: 4 * Block);
        for (var i = 0; i < 4; i++)
        {
            Put(store, "p" + i);
        }

        Assert.Equal(new CachePinResult(4, false), store.Pin([K("p0"), K("p1"), K("p2"), K("p3")]));
        Assert.Equal(CachePutStatus.PinnedFull, Put(store, "new"));
        Assert.False(Has(store, "new"));
        Assert.Equal(4, store.GetStats().Items);
        Assert.Equal(0, store.GetStats().Evictions);
        store.Unpin([K("p0")]);
        Assert.Equal(CachePutStatus.Stored, Put(store, "new")); // p0 goes
        Assert.False(Has(store, "p0"));

        using var small = Store(4); // half may be pinned: two values
        Put(small, "a");
        Put(small, "b");
        Put(small, "c");
        Assert.Equal(new CachePinResult(0, true), small.Pin([K("a"), K("b"), K("c")]));
        Assert.Equal(0, small.GetStats().PinnedItems);
        Assert.Equal(new CachePinResult(2, false), small.Pin([K("a"), K("a")])); // twice, its bytes once
    }

    [Fact]
    public void Removing_or_clearing_a_pinned_value_takes_its_pins()
    {
        using var store = Store(4);
        Put(store, "a");
        Put(store, "b");
        store.Pin([K("a"), K("b")]);
        Assert.True(store.Remove(K("a")));
        Assert.Equal(1, store.GetStats().PinnedItems);
        store.Clear();
        Assert.Equal((0L, 0L), (store.GetStats().PinnedItems, store.GetStats().PinnedBytes));
        Put(store, "b");
        Assert.Equal(0, store.PinCount(K("b")));
    }

    [Fact]
    public void A_group_over_its_quota_evicts_only_its_own_least_recently_used_values()
    {
        var a = CacheNamespace.QuotaGroupOf("tenant-a");
        var b = CacheNamespace.QuotaGroupOf("tenant-b");
        using var store = Store(16, quotas: new() { [a] = 3 * Block, [b] = 8 * Block });
        for (var i = 0; i < 3; i++)
        {
            Put(store, "b" + i, b);
        }

        for (var i = 0; i < 3; i++)
        {
            Put(store, "a" + i, a);
        }

        Assert.True(Has(store, "a0")); // a0 is now the group's most recently used
        Assert.Equal(CachePutStatus.Stored, Put(store, "a3", a)); // over a's quota: a1, its least recently used, goes
        Assert.False(Has(store, "a1"));
        Assert.True(Has(store, "a0") && Has(store, "a2") && Has(store, "a3"));
        Assert.True(Has(store, "b0") && Has(store, "b1") && Has(store, "b2")); // the other tenant is untouched
        Put(store, "a4", a);
        Put(store, "a5", a);
        Assert.True(Has(store, "b0") && Has(store, "b1") && Has(store, "b2"));
        var stats = store.GetStats();
        Assert.Equal((3L, 3L), (stats.QuotaEvictions, stats.Evictions));
        Assert.Equal(
            [new QuotaGroupStats(a, 3 * Block, 3 * Block, 3), new QuotaGroupStats(b, 3 * Block, 8 * Block, 0)],
            store.GetGroupStats().OrderBy(g => g.QuotaBytes));
    }

    [Fact]
    public void Ungrouped_and_unconfigured_values_are_unaffected_by_quotas_and_global_eviction_still_works()
    {
        var a = CacheNamespace.QuotaGroupOf("tenant-a");
        using var store = Store(4, quotas: new() { [a] = 2 * Block });
        Put(store, "plain");
        Put(store, "other", CacheNamespace.QuotaGroupOf("unconfigured"));
        Put(store, "a0", a);
        Put(store, "a1", a);
        Put(store, "a2", a); // a's own a0 goes, not the others
        Assert.False(Has(store, "a0"));
        Assert.True(Has(store, "plain") && Has(store, "other"));
        Assert.Equal(CachePutStatus.Stored, Put(store, "more")); // full: global LRU takes the least recently used of all (a1)
        Assert.False(Has(store, "a1"));
        Assert.Equal(4, store.GetStats().Items);
        Assert.Single(store.GetGroupStats()); // only configured groups are reported
        Assert.Equal(Block, store.GetGroupStats()[0].UsedBytes);
    }

    [Fact]
    public void A_value_larger_than_its_quota_is_refused_and_a_group_all_pinned_refuses_more()
    {
        var a = CacheNamespace.QuotaGroupOf("tenant-a");
        using var store = Store(8, quotas: new() { [a] = 2 * Block });
        Assert.Equal(CachePutStatus.LargerThanQuota, Put(store, "big", a, length: 3 * Block));
        Assert.Equal(CachePutStatus.LargerThanCapacity, Put(store, "huge", length: 9 * Block));
        Put(store, "a0", a);
        Put(store, "a1", a);
        store.Pin([K("a0"), K("a1")]);
        Assert.Equal(CachePutStatus.PinnedFull, Put(store, "a2", a));
        Assert.True(Has(store, "a0") && Has(store, "a1"));
        Assert.Equal(CachePutStatus.Stored, Put(store, "a1", a)); // replacing a pinned value in place fits
        store.Unpin([K("a0")]);
        Assert.Equal(CachePutStatus.Stored, Put(store, "a2", a));
        Assert.False(Has(store, "a0"));
    }

    [Fact]
    public void The_default_quota_applies_to_each_other_group_on_its_own_and_empty_groups_are_forgotten()
    {
        using var store = Store(16, defaultQuota: 2 * Block);
        for (var i = 0; i < 4; i++)
        {
            Put(store, "x" + i, "group-x");
            Put(store, "y" + i, "group-y");
        }

        Assert.Equal(4, store.GetStats().Items); // two per group
        Assert.True(Has(store, "x3") && Has(store, "x2") && Has(store, "y3") && Has(store, "y2"));
        Assert.Empty(store.GetGroupStats()); // not configured: not on /metrics
        Assert.Equal(CachePutStatus.LargerThanQuota, Put(store, "z", "group-z", length: 3 * Block));
        store.Clear();
        Assert.Equal(0, store.GetStats().UsedBytes);
    }

    [Fact]
    public void A_value_moved_to_another_group_leaves_the_first()
    {
        using var store = Store(8, quotas: new() { ["g1"] = 2 * Block, ["g2"] = 2 * Block });
        Put(store, "k", "g1");
        Put(store, "k", "g2");
        Assert.Equal([0L, Block], store.GetGroupStats().Select(g => g.UsedBytes));
        Put(store, "k");
        Assert.All(store.GetGroupStats(), g => Assert.Equal(0, g.UsedBytes));
    }

    [Fact]
    public void The_server_options_turn_salts_into_the_group_ids_clients_send()
    {
        var options = new CacheServerOptions { CapacityBytes = 64 << 20, MaxPinnedBytes = 1 << 20, DefaultSaltQuotaBytes = 1 << 20 };
        options.SaltQuotas["tenant-a"] = 2 << 20;
        var limits = CacheStoreLimits.FromOptions(options);
        Assert.Equal(2 << 20, limits.GroupQuotas[new CacheNamespace("m", new Core.Kv.KvFormat(1, 2, 2, Core.Kv.KvDataType.F16, Core.Kv.KvLayout.LayerKV), "tenant-a").QuotaGroup!]);
        Assert.Equal((1L << 20, 1L << 20), (limits.MaxPinnedBytes!.Value, limits.DefaultGroupQuotaBytes!.Value));
        Assert.Matches("^[0-9a-f]{16}$", CacheNamespace.QuotaGroupOf("tenant-a"));
        Assert.NotEqual(CacheNamespace.QuotaGroupOf("tenant-a"), CacheNamespace.QuotaGroupOf("tenant-b"));
        Assert.Empty(options.GetErrors());

        options.SaltQuotas[""] = 1 << 20;
        options.SaltQuotas["tiny"] = 10;
        options.MaxPinnedBytes = 128L << 20;
        options.DefaultSaltQuotaBytes = 1;
        var errors = string.Join("; ", options.GetErrors());
        Assert.Contains("salt quota: the salt must not be empty", errors, StringComparison.Ordinal);
        Assert.Contains("must be in 4KB..the capacity", errors, StringComparison.Ordinal);
        Assert.Contains("max pinned", errors, StringComparison.Ordinal);
        Assert.Contains("default salt quota", errors, StringComparison.Ordinal);
        Assert.DoesNotContain("tiny", errors, StringComparison.Ordinal); // a salt is named by its group id, never itself
    }

    [Fact]
    public void Concurrent_puts_pins_and_evictions_keep_the_accounts_and_leak_nothing()
    {
        using var store = Store(16, quotas: new() { ["g"] = 6 * Block });
        Parallel.For(0, 4000, new ParallelOptions { MaxDegreeOfParallelism = 4 }, i =>
        {
            var key = "k" + (i % 40);
            switch (i % 5)
            {
                case 0:
                    Put(store, key, "g");
                    break;
                case 1:
                    Put(store, key);
                    break;
                case 2:
                    store.Pin([K(key)]);
                    break;
                case 3:
                    store.Unpin([K(key)]);
                    break;
                default:
                    store.Get(K(key))?.Release();
                    break;
            }
        });
        var stats = store.GetStats();
        Assert.True(stats.UsedBytes <= stats.CapacityBytes);
        Assert.True(stats.PinnedBytes <= stats.MaxPinnedBytes);
        Assert.True(store.GetGroupStats()[0].UsedBytes <= 6 * Block);
        Assert.Equal(stats.Items, store.Pool.RentedCount);
        store.Clear();
        Assert.Equal(0, store.Pool.RentedCount);
    }
}
