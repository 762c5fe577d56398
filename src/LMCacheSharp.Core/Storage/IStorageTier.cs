using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Core.Storage;

/// <summary>Where a tier sits: decides whether the storage manager writes it inline or in the background.</summary>
public enum StorageTierKind
{
    /// <summary>In-process memory: written inline, read synchronously.</summary>
    Memory,
    /// <summary>Local disk: written in the background.</summary>
    Disk,
    /// <summary>A remote store: written in the background; reads may be slow or fail.</summary>
    Remote,
}

/// <summary>Sizes a tier reports.</summary>
/// <param name="Chunks">Chunks held.</param>
/// <param name="UsedBytes">Bytes held (payload, plus headers where the tier stores them).</param>
/// <param name="CapacityBytes">Capacity in bytes, or -1 when the tier does not know (remote).</param>
public readonly record struct StorageTierStats(long Chunks, long UsedBytes, long CapacityBytes);

/// <summary>
/// One storage tier. Implementations are thread-safe. A tier never throws for a missing, corrupt or unreachable chunk:
/// that is a miss (null, 0 or false). Exceptions are for programming errors and cancellation only.
/// </summary>
public interface IStorageTier : IAsyncDisposable
{
    /// <summary>A short name for logs and metric tags ("memory", "disk", "remote").</summary>
    string Name { get; }

    /// <summary>Where the tier sits.</summary>
    StorageTierKind Kind { get; }

    /// <summary>How many leading <paramref name="keys"/> the tier holds (stops at the first absent key).</summary>
    ValueTask<int> CountPrefixAsync(ReadOnlyMemory<ChunkHash> keys, CancellationToken cancellationToken = default);

    /// <summary>
    /// The chunk stored under <paramref name="key"/>, holding one reference that the caller releases, or null on a miss.
    /// The chunk's payload matches its checksum; a tier that finds it does not drops the chunk and returns null.
    /// </summary>
    ValueTask<KvChunk?> GetAsync(ChunkHash key, CancellationToken cancellationToken = default);

    /// <summary>
    /// Stores <paramref name="chunk"/> under <see cref="KvChunk.Key"/>. The tier takes its own reference or copies the bytes;
    /// the caller keeps its reference. Returns false when the tier did not store it (full, too large, unreachable).
    /// Storing a key that is present refreshes it.
    /// </summary>
    ValueTask<bool> PutAsync(KvChunk chunk, CancellationToken cancellationToken = default);

    /// <summary>Removes a key; false when it was absent.</summary>
    ValueTask<bool> RemoveAsync(ChunkHash key, CancellationToken cancellationToken = default);

    /// <summary>Removes everything.</summary>
    ValueTask ClearAsync(CancellationToken cancellationToken = default);

    /// <summary>Current sizes.</summary>
    StorageTierStats GetStats();
}

/// <summary>A stored chunk that continues a parent: its key and token ids, as a tier with a child index reports them.</summary>
/// <param name="Key">The child chunk's key.</param>
/// <param name="Tokens">The tokens the child covers (the tier's word: the engine checks that they hash to the key).</param>
public readonly record struct StoredChild(ChunkHash Key, int[] Tokens);

/// <summary>
/// A tier that can list the stored children of a parent chunk (a remote shared by several instances): the tail lookup of
/// token-exact reuse asks it when the local index has nothing as good. A chunk put with a <see cref="KvChunk.Lineage"/> is
/// recorded as a child of its parent. Never throws for an unreachable tier: that is an empty answer.
/// </summary>
public interface IChildIndexTier
{
    /// <summary>Whether the tier keeps a child index (false: <see cref="FindChildrenAsync"/> always answers empty).</summary>
    bool HasChildIndex { get; }

    /// <summary>
    /// The stored children of <paramref name="parent"/> sharing the most leading tokens with <paramref name="next"/>, best
    /// first, at most <paramref name="max"/>, in one round trip.
    /// </summary>
    ValueTask<IReadOnlyList<StoredChild>> FindChildrenAsync(ChunkHash parent, ReadOnlyMemory<int> next, int max, CancellationToken cancellationToken = default);
}

/// <summary>How a <see cref="IPinnableTier"/> call ended.</summary>
public enum TierPinStatus
{
    /// <summary>Done: <see cref="TierPinOutcome.Changed"/> keys pinned (or unpinned).</summary>
    Ok,

    /// <summary>Refused whole: the pin would take the store's pinned bytes over its limit. Nothing was pinned.</summary>
    OverLimit,

    /// <summary>The store cannot pin (Redis, an older cache server). Nothing was pinned.</summary>
    Unsupported,

    /// <summary>The store did not answer (down, timed out, circuit open). Nothing is known to be pinned.</summary>
    Unavailable,
}

/// <summary>The answer of a <see cref="IPinnableTier"/> call.</summary>
/// <param name="Status">How it ended.</param>
/// <param name="Changed">Keys pinned (or unpinned) when <see cref="TierPinStatus.Ok"/>; keys the store does not hold count as not pinned.</param>
/// <param name="Message">Why, for any other status (a short message for the caller's error answer), or null.</param>
public readonly record struct TierPinOutcome(TierPinStatus Status, int Changed, string? Message = null);

/// <summary>
/// A tier whose store can exempt keys from its own eviction (the cache server's PIN and UNPIN): <c>POST /lmcache/pin</c>
/// with <c>"tier": "remote"</c> pins a prefix there. Pins are counted per key (a key pinned twice needs two unpins) and
/// bounded by the store. Never throws for an unreachable store: that is <see cref="TierPinStatus.Unavailable"/>.
/// </summary>
public interface IPinnableTier
{
    /// <summary>Whether this tier can pin at all (false: every call answers <see cref="TierPinStatus.Unsupported"/>).</summary>
    bool CanPin { get; }

    /// <summary>Pins the keys the store holds, all or nothing against its limit.</summary>
    ValueTask<TierPinOutcome> PinAsync(ReadOnlyMemory<ChunkHash> keys, CancellationToken cancellationToken = default);

    /// <summary>Takes one pin off each pinned key.</summary>
    ValueTask<TierPinOutcome> UnpinAsync(ReadOnlyMemory<ChunkHash> keys, CancellationToken cancellationToken = default);
}
