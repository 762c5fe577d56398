namespace LMCacheSharp.Server.Tests;

public class MemoryCacheStoreTests
{
    private static void Put(MemoryCacheStore store, string key, int length, byte fill)
    {
        var value = store.Rent(length);
        value.Span.Fill(fill);
        try
        {
            Assert.True(store.Put(System.Text.Encoding.ASCII.GetBytes(key), value));
        }
        finally
        {
            value.Release();
        }
    }

    private static bool Has(MemoryCacheStore store, string key) => store.Contains(System.Text.Encoding.ASCII.GetBytes(key));

    [Fact]
    public void Evicts_least_recently_used_by_bytes()
    {
        using var store = new MemoryCacheStore(3 * 4096, poolRetainedBytes: 0);
        Put(store, "a", 4096, 1);
        Put(store, "b", 4000, 2); // rounds up to 4 KiB
        Put(store, "c", 10, 3);
        Assert.True(Has(store, "a")); // a is now most recently used
        Put(store, "d", 4096, 4);     // evicts b, the least recently used
        Assert.False(Has(store, "b"));
        Assert.True(Has(store, "a") && Has(store, "c") && Has(store, "d"));
        Assert.Equal(new CacheStoreStats(3, 3 * 4096, 3 * 4096, 1) { MaxPinnedBytes = 3 * 4096 / 2 }, store.GetStats());
    }

    [Fact]
    public void Put_replaces_a_value_and_get_returns_exact_bytes()
    {
        using var store = new MemoryCacheStore(1 << 20);
        Put(store, "k", 100, 7);
        Put(store, "k", 50, 9);
        var value = store.Get("k"u8)!;
        try
        {
            Assert.Equal(50, value.Length);
            Assert.All(value.Span.ToArray(), b => Assert.Equal(9, b));
        }
        finally
        {
            value.Release();
        }

        Assert.Equal(1, store.GetStats().Items);
        Assert.Equal(4096, store.GetStats().UsedBytes);
    }

    [Fact]
    public void A_value_held_by_a_reader_survives_eviction_and_buffers_all_return()
    {
        var store = new MemoryCacheStore(4096);
        Put(store, "a", 4096, 1);
        var held = store.Get("a"u8)!;
        Put(store, "b", 4096, 2); // evicts a while it is held
        Assert.False(Has(store, "a"));
        Assert.All(held.Span.ToArray(), b => Assert.Equal(1, b));
        held.Release();
        Assert.False(store.Put("huge"u8, store.Rent(8192)));
        store.Dispose();
        Assert.Equal(1, store.Pool.RentedCount); // the refused "huge" buffer, still owned by this test
    }

    [Fact]
    public void Remove_and_clear_release_everything()
    {
        var store = new MemoryCacheStore(1 << 20);
        Put(store, "a", 10, 1);
        Put(store, "b", 10, 1);
        Assert.True(store.Remove("a"u8));
        Assert.False(store.Remove("a"u8));
        store.Clear();
        Assert.Equal(0, store.GetStats().Items);
        Assert.Equal(0, store.Pool.RentedCount);
        store.Dispose();
    }
}
