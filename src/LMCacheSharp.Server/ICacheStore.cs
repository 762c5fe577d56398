using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Server;

/// <summary>Sizes and counters of a <see cref="ICacheStore"/>.</summary>
/// <param name="Items">Values held.</param>
/// <param name="UsedBytes">Bytes held (buffer capacity: values are kept in 4 KiB-aligned native buffers).</param>
/// <param name="CapacityBytes">Capacity in bytes.</param>
/// <param name="Evictions">Values evicted to make room since start.</param>
public readonly record struct CacheStoreStats(long Items, long UsedBytes, long CapacityBytes, long Evictions)
{
    /// <summary>The disk behind the memory (<see cref="DiskBackedCacheStore"/>), or null for a store without one.</summary>
    public DiskStoreStats? Disk { get; init; }

    /// <summary>Values pinned (PIN), exempt from eviction.</summary>
    public long PinnedItems { get; init; }

    /// <summary>Bytes of the pinned values.</summary>
    public long PinnedBytes { get; init; }

    /// <summary>Bytes that may be pinned at once.</summary>
    public long MaxPinnedBytes { get; init; }

    /// <summary>Values evicted to keep a quota group within its quota (also counted in <see cref="Evictions"/>).</summary>
    public long QuotaEvictions { get; init; }
}

/// <summary>Sizes and counters of the disk behind a <see cref="DiskBackedCacheStore"/> (STATS and /metrics: <c>disk_*</c>).</summary>
/// <param name="Items">Values on disk.</param>
/// <param name="UsedBytes">Bytes of files on disk (whole 4 KiB blocks).</param>
/// <param name="CapacityBytes">Disk capacity in bytes.</param>
/// <param name="QueuedBytes">Bytes of values waiting for the background writer.</param>
/// <param name="Hits">GETs that missed memory and were served from disk.</param>
/// <param name="Writes">Values written to disk.</param>
/// <param name="WritesDropped">PUTs not written to disk because the write queue was full (kept in memory only).</param>
/// <param name="Refused">PUTs kept in memory only because the key is not 32 bytes or the value is not a chunk envelope for it.</param>
/// <param name="WriteFailures">Disk writes that failed (bad payload checksum, larger than the disk, I/O error).</param>
/// <param name="Evictions">Files evicted to make room.</param>
/// <param name="Corrupt">Files that failed verification when read (each a miss; the file is deleted).</param>
/// <param name="Errors">I/O errors of the disk tier.</param>
public readonly record struct DiskStoreStats(long Items, long UsedBytes, long CapacityBytes, long QueuedBytes, long Hits, long Writes,
    long WritesDropped, long Refused, long WriteFailures, long Evictions, long Corrupt, long Errors)
{
    /// <summary>Records waiting for the background writer or being written (PUTs, removals, clears).</summary>
    public long QueuedRecords { get; init; }

    /// <summary>Records queued since start (a PUT or DELETE that replaced a waiting record of its key queued none).</summary>
    public long RecordsEnqueued { get; init; }
}

/// <summary>
/// Where the cache server keeps values: opaque byte strings under opaque byte keys. The session rents a buffer with
/// <see cref="Rent"/>, fills it from the socket and hands it to <see cref="Put(ReadOnlySpan{byte}, KvChunk, ReadOnlySpan{byte})"/>; reads hand back the stored buffer with a
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

    /// <summary>
    /// Stores <paramref name="value"/> under <paramref name="key"/> in the quota group <paramref name="group"/> (empty: none),
    /// as <see cref="Put(ReadOnlySpan{byte}, KvChunk)"/>; a group over its quota evicts its own least recently used values
    /// first. The status says why a value was not stored.
    /// </summary>
    CachePutStatus Put(ReadOnlySpan<byte> key, KvChunk value, ReadOnlySpan<byte> group);

    /// <summary>
    /// Pins the keys the store holds (a key listed twice is pinned twice), exempt from eviction until as many
    /// <see cref="Unpin"/>s; all or nothing against the store's pinned-bytes limit. Absent keys are not pinned.
    /// </summary>
    CachePinResult Pin(IReadOnlyList<byte[]> keys);

    /// <summary>Takes one pin off each pinned key; returns how many were unpinned.</summary>
    int Unpin(IReadOnlyList<byte[]> keys);

    /// <summary>The configured quota groups' use (for /metrics); empty without quotas.</summary>
    IReadOnlyList<QuotaGroupStats> GetGroupStats();

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
