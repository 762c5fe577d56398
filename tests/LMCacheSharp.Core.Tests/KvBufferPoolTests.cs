using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Core.Tests;

public class KvBufferPoolTests
{
    [Fact]
    public void Rented_buffers_are_aligned_sized_and_reused_after_the_last_release()
    {
        using var pool = new KvBufferPool();
        var a = pool.Rent(10_000);
        Assert.Equal(10_000, a.Length);
        Assert.Equal(12_288, a.Capacity);
        Assert.Equal(0, a.Pointer % KvBufferPool.Alignment);
        var pointer = a.Pointer;
        a.AddRef();
        a.Release();
        Assert.Equal(1, pool.RentedCount);
        a.Release();
        Assert.Equal(0, pool.RentedCount);
        Assert.Equal(12_288, pool.RetainedBytes);

        var b = pool.Rent(9_000); // same size class
        Assert.Same(a, b);
        Assert.Equal(pointer, b.Pointer);
        Assert.Equal(1, b.ReferenceCount);
        b.Release();
    }

    [Fact]
    public void Using_a_chunk_after_its_last_release_throws()
    {
        using var pool = new KvBufferPool(maxRetainedBytes: 0);
        var chunk = pool.Rent(100);
        chunk.Release();
        Assert.Throws<InvalidOperationException>(() => chunk.AddRef());
        Assert.Throws<InvalidOperationException>(() => chunk.Span.Length);
    }

    [Fact]
    public void Retained_bytes_stay_under_the_limit()
    {
        using var pool = new KvBufferPool(maxRetainedBytes: 3 * 4096);
        var chunks = Enumerable.Range(0, 10).Select(_ => pool.Rent(4096)).ToList();
        chunks.ForEach(c => c.Release());
        Assert.Equal(3 * 4096, pool.RetainedBytes);
        Assert.Equal(0, pool.RentedCount);
    }

    [Fact]
    public void Checksum_detects_a_flipped_bit()
    {
        using var pool = new KvBufferPool();
        using var chunk = pool.Rent(1000);
        new Random(1).NextBytes(chunk.Span);
        chunk.SealChecksum();
        Assert.True(chunk.VerifyChecksum());
        chunk.Span[500] ^= 0x10;
        Assert.False(chunk.VerifyChecksum());
    }

    [Fact]
    public void Concurrent_rent_and_release_leaves_the_pool_empty()
    {
        using var pool = new KvBufferPool(maxRetainedBytes: 1 << 20);
        Parallel.For(0, 2000, i =>
        {
            var chunk = pool.Rent(1000 + (i % 5 * 4096));
            chunk.Span[0] = 1;
            chunk.AddRef();
            chunk.Release();
            chunk.Release();
        });
        Assert.Equal(0, pool.RentedCount);
        Assert.Equal(0, pool.RentedBytes);
    }
}
