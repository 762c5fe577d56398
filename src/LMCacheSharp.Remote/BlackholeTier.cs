using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Storage;

namespace LMCacheSharp.Remote;

/// <summary><c>blackhole://</c>: a remote tier that accepts every chunk and forgets it (every read is a miss). For tests and for measuring store overhead.</summary>
public sealed class BlackholeTier : IStorageTier
{
    private long _accepted;

    /// <inheritdoc />
    public string Name => "remote";

    /// <inheritdoc />
    public StorageTierKind Kind => StorageTierKind.Remote;

    /// <summary>Chunks accepted (and forgotten) so far.</summary>
    public long Accepted => Interlocked.Read(ref _accepted);

    /// <inheritdoc />
    public ValueTask<int> CountPrefixAsync(ReadOnlyMemory<ChunkHash> keys, CancellationToken cancellationToken = default) => ValueTask.FromResult(0);

    /// <inheritdoc />
    public ValueTask<KvChunk?> GetAsync(ChunkHash key, CancellationToken cancellationToken = default) => ValueTask.FromResult<KvChunk?>(null);

    /// <inheritdoc />
    public ValueTask<bool> PutAsync(KvChunk chunk, CancellationToken cancellationToken = default)
    {
        Interlocked.Increment(ref _accepted);
        return ValueTask.FromResult(true);
    }

    /// <inheritdoc />
    public ValueTask<bool> RemoveAsync(ChunkHash key, CancellationToken cancellationToken = default) => ValueTask.FromResult(false);

    /// <inheritdoc />
    public ValueTask ClearAsync(CancellationToken cancellationToken = default) => ValueTask.CompletedTask;

    /// <inheritdoc />
    public StorageTierStats GetStats() => new(0, 0, -1);

    /// <inheritdoc />
    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
