using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Server;

/// <summary>Sizes and counters of a <see cref="ICacheStore"/>.</summary>
/// <param name="Items">Values held.</param>
/// <param name="UsedBytes">Bytes held (buffer capacity: values are kept in 4 KiB-aligned native buffers).</param>
/// <param name="CapacityBytes">Capacity in bytes.</param>
/// <param name="Evictions">Values evicted to make room since start.</param>
public readonly record struct CacheStoreStats(long Items, long UsedBytes, long CapacityBytes, long Evictions);

/// <summary>
/// Where the cache server keeps values: opaque byte strings under opaque byte keys. The session rents a buffer with
/// <see cref="Rent"/>, fills it from the socket and hands it to <see cref="Put"/>; reads hand back the stored buffer with a
/// reference the caller releases, so a value evicted while it is being sent stays valid. Thread-safe.
/// This is the seam for persistence: a store that writes through to a disk tier implements the same interface.
/// </summary>
public interface ICacheStore : IDisposable
{
    /// <summary>A buffer for an incoming value of <paramref name="length"/> bytes; the caller holds its only reference.</summary>
    KvChunk Rent(int length);

    /// <summary>
    /// Stores <paramref name="value"/> (its first <see cref="KvChunk.Length"/> bytes) under <paramref name="key"/>, replacing
    /// any value there. The store takes its own reference. False when the value can never fit (larger than the capacity).
    /// </summary>
    bool Put(ReadOnlySpan<byte> key, KvChunk value);

    /// <summary>The value under <paramref name="key"/> with one reference for the caller (marks it recently used), or null.</summary>
    KvChunk? Get(ReadOnlySpan<byte> key);

    /// <summary>Whether <paramref name="key"/> is present (marks it recently used).</summary>
    bool Contains(ReadOnlySpan<byte> key);

    /// <summary>Removes <paramref name="key"/>; false when it was absent.</summary>
    bool Remove(ReadOnlySpan<byte> key);

    /// <summary>Removes every value.</summary>
    void Clear();

    /// <summary>Current sizes and counters.</summary>
    CacheStoreStats GetStats();
}
