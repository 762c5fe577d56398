using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Storage;

namespace LMCacheSharp.Remote;

/// <summary>The outcome of a remote read: a hit with a chunk, a miss, or a value that failed its checks.</summary>
/// <param name="Chunk">The chunk (one reference for the receiver) on a hit.</param>
/// <param name="Rejected">Why a stored value was refused (header, checksum, key), or null.</param>
public readonly record struct RemoteRead(KvChunk? Chunk, ChunkReadStatus? Rejected)
{
    /// <summary>Absent.</summary>
    public static RemoteRead Miss => default;

    /// <summary>A value that failed its checks.</summary>
    public static RemoteRead Reject(ChunkReadStatus status) => new(null, status);
}

/// <summary>
/// A remote store as <see cref="RemoteStorageTier"/> uses it. Implementations may throw for transport problems; the tier
/// turns those into misses, applies the timeout and the circuit breaker. Values are <see cref="ChunkEnvelope"/>s.
/// </summary>
public interface IRemoteConnector : IAsyncDisposable
{
    /// <summary>A short name for logs ("lm", "redis").</summary>
    string Name { get; }

    /// <summary>How many leading keys are stored, in one round trip.</summary>
    Task<int> CountPrefixAsync(ReadOnlyMemory<ChunkHash> keys, CancellationToken cancellationToken);

    /// <summary>Reads and checks the chunk under <paramref name="key"/>.</summary>
    Task<RemoteRead> GetAsync(ChunkHash key, CancellationToken cancellationToken);

    /// <summary>Stores <paramref name="chunk"/> (the caller keeps its reference for the duration of the call).</summary>
    Task<bool> PutAsync(KvChunk chunk, CancellationToken cancellationToken);

    /// <summary>Removes a key; false when it was absent.</summary>
    Task<bool> RemoveAsync(ChunkHash key, CancellationToken cancellationToken);

    /// <summary>Removes every chunk this connector's keys cover.</summary>
    Task ClearAsync(CancellationToken cancellationToken);

    /// <summary>Whether the remote keeps a child index (<see cref="LinkAsync"/>, <see cref="FindChildrenAsync"/>). Default false.</summary>
    bool HasChildIndex => false;

    /// <summary>Records that <paramref name="key"/> continues <paramref name="lineage"/>'s parent with its tokens. Default: nothing.</summary>
    Task LinkAsync(ChunkHash key, ChunkLineage lineage, CancellationToken cancellationToken) => Task.CompletedTask;

    /// <summary>The stored children of <paramref name="parent"/> best matching <paramref name="next"/>, at most <paramref name="max"/>. Default: none.</summary>
    Task<IReadOnlyList<StoredChild>> FindChildrenAsync(ChunkHash parent, ReadOnlyMemory<int> next, int max, CancellationToken cancellationToken) =>
        Task.FromResult<IReadOnlyList<StoredChild>>([]);

    /// <summary>Whether the remote can pin keys (<see cref="PinAsync"/>). Default false.</summary>
    bool CanPin => false;

    /// <summary>
    /// Pins the keys the remote holds, exempt from its eviction; a refusal the remote answered (over its limit, an opcode it
    /// does not know) is an outcome, a transport failure throws. Default: <see cref="TierPinStatus.Unsupported"/>.
    /// </summary>
    Task<TierPinOutcome> PinAsync(ReadOnlyMemory<ChunkHash> keys, CancellationToken cancellationToken) =>
        Task.FromResult(new TierPinOutcome(TierPinStatus.Unsupported, 0, $"the {Name} remote cannot pin"));

    /// <summary>Takes one pin off each pinned key. Default: <see cref="TierPinStatus.Unsupported"/>.</summary>
    Task<TierPinOutcome> UnpinAsync(ReadOnlyMemory<ChunkHash> keys, CancellationToken cancellationToken) =>
        Task.FromResult(new TierPinOutcome(TierPinStatus.Unsupported, 0, $"the {Name} remote cannot pin"));

    /// <summary>
    /// Closes pooled connections so that the next call opens a fresh one: the circuit breaker's probe calls this first, so
    /// that it never goes down a connection stuck behind an unanswered request. Default: nothing (a connector without a
    /// pool of its own, or one that reconnects by itself).
    /// </summary>
    void ResetConnections()
    {
    }
}
