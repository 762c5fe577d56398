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

        var b = pool.Rent(9_000); // same size class: the same native buffer, a new chunk object
        Assert.NotSame(a, b);
        Assert.Equal(pointer, b.Pointer);
        Assert.NotEqual(a.Generation, b.Generation);
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

    [Fact]
    public void A_stale_reference_to_a_chunk_whose_buffer_was_reused_throws_instead_of_reading_the_new_bytes()
    {
        using var pool = new KvBufferPool();
        var stale = pool.Rent(4096);
        stale.Span.Fill(1);
        stale.Release();
        using var fresh = pool.Rent(4096); // reuses the buffer
        fresh.Span.Fill(2);
        Assert.Equal(stale.Capacity, fresh.Capacity);
        Assert.Throws<InvalidOperationException>(() => stale.Span[0]);
        Assert.Throws<InvalidOperationException>(() => stale.Pointer);
        Assert.Throws<InvalidOperationException>(() => stale.AddRef());
        Assert.Throws<InvalidOperationException>(() => stale.Release()); // must not take the fresh chunk's reference
        Assert.Equal(1, fresh.ReferenceCount);
        Assert.Equal(2, fresh.Span[0]);
    }

    [Fact]
    public void Metadata_is_immutable_once_sealed()
    {
        using var pool = new KvBufferPool();
        using var chunk = pool.Rent(100);
        chunk.Key = new Keys.ChunkHash(new byte[32]);
        chunk.TokenCount = 4;
        chunk.SealChecksum();
        Assert.True(chunk.IsSealed);
        Assert.Throws<InvalidOperationException>(() => chunk.Key = default);
        Assert.Throws<InvalidOperationException>(() => chunk.TokenCount = 5);
        Assert.Throws<InvalidOperationException>(() => chunk.Format = default);
        Assert.Throws<InvalidOperationException>(() => chunk.Checksum = 1);
        Assert.Throws<InvalidOperationException>(() => chunk.SetLength(10));
        Assert.Throws<InvalidOperationException>(() => chunk.SealChecksum());
        Assert.Equal(4, chunk.TokenCount);

        using var other = pool.Rent(100); // a new rent starts unsealed
        Assert.False(other.IsSealed);
        other.Checksum = 7;
        other.Seal();
        Assert.Throws<InvalidOperationException>(() => other.Checksum = 8);
    }

    [Fact]
    public void A_dead_chunk_cannot_be_sealed_or_changed()
    {
        using var pool = new KvBufferPool();
        var chunk = pool.Rent(100);
        chunk.Release();
        Assert.Throws<InvalidOperationException>(() => chunk.Key = default);
        Assert.Throws<InvalidOperationException>(() => chunk.Seal());
    }
}
