using System.Threading.Channels;
using LMCacheSharp.Core.Events;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Metrics;

namespace LMCacheSharp.Core.Storage;

/// <summary>
/// An ordered list of tiers (fastest first) behind one interface. Memory tiers are written inline; disk and remote tiers
/// are written in the background through a bounded queue (when it is full the write is dropped and counted: a store never
/// waits for a slow tier). Reads go tier by tier; a hit in a lower tier is promoted into the first memory tier. A tier
/// that fails or throws is a miss for that call, counted in <c>lmcache.num_tier_errors</c>, never an error to the caller.
/// With a <see cref="IKvEventSink"/>, every store and removal of the memory and disk tiers, every store (and delete) this
/// instance makes to a remote tier and every <see cref="ClearAsync"/> is reported to it.
/// </summary>
public sealed class StorageManager : IAsyncDisposable
{
    private readonly IStorageTier[] _tiers;
    private readonly IStorageTier[] _writeBehind;
    private readonly MemoryTier? _memory;
    private readonly CacheMetrics? _metrics;
    private readonly Channel<WriteOp>? _queue;
    private readonly Task? _writer;
    private readonly CancellationTokenSource _stopWriter = new();
    private readonly TimeProvider _time;
    private long _pendingWrites;
    private int _disposed;

    /// <summary>Creates a manager over <paramref name="tiers"/>, fastest first.</summary>
    /// <param name="tiers">The tiers; the manager owns them and disposes them.</param>
    /// <param name="metrics">Where drops and tier errors are counted, or null.</param>
    /// <param name="writeQueueChunks">Chunks the background writer may hold (default 256, range 1..1,000,000).</param>
    /// <param name="timeProvider">The clock of <see cref="DisposeAsync"/>'s wait for the writer (default: the system's).</param>
    /// <param name="events">Where KV events go (see <see cref="IKvEventSink"/>'s rules), or null for none.</param>
    public StorageManager(IEnumerable<IStorageTier> tiers, CacheMetrics? metrics = null, int writeQueueChunks = 256, TimeProvider? timeProvider = null,
        IKvEventSink? events = null)
    {
        ArgumentNullException.ThrowIfNull(tiers);
        ArgumentOutOfRangeException.ThrowIfLessThan(writeQueueChunks, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(writeQueueChunks, 1_000_000);
        _tiers = [.. tiers];
        if (_tiers.Length == 0)
        {
            throw new ArgumentException("At least one storage tier is required.", nameof(tiers));
        }

        _metrics = metrics;
        _time = timeProvider ?? TimeProvider.System;
        if (events is not null)
        {
            Events = new KvEventRelay(events, metrics);
            foreach (var tier in _tiers)
            {
                switch (tier)
                {
                    case MemoryTier m:
                        m.Events = Events;
                        break;
                    case DiskTier d:
                        d.Events = Events;
                        break;
                }
            }
        }

        _memory = _tiers.OfType<MemoryTier>().FirstOrDefault();
        _writeBehind = [.. _tiers.Where(t => t.Kind != StorageTierKind.Memory)];
        if (_writeBehind.Length > 0)
        {
            _queue = Channel.CreateBounded<WriteOp>(new BoundedChannelOptions(writeQueueChunks)
            {
                SingleReader = true,
                FullMode = BoundedChannelFullMode.Wait, // never used: writers call TryWrite and count a drop
            });
            _writer = Task.Run(WriteBehindLoopAsync);
        }
    }

    /// <summary>The tiers, fastest first.</summary>
    public IReadOnlyList<IStorageTier> Tiers => _tiers;

    /// <summary>Where KV events go, or null.</summary>
    internal KvEventRelay? Events { get; }

    /// <summary>The first memory tier, or null.</summary>
    public MemoryTier? Memory => _memory;

    /// <summary>Background writes queued or in progress.</summary>
    public long PendingWrites => Interlocked.Read(ref _pendingWrites);

    /// <summary>
    /// How many leading <paramref name="keys"/> are held by some tier. A key may be in any tier: the run continues as long as
    /// one tier holds the next key. Each tier is asked once per stretch, so a remote tier costs one round trip per stretch.
    /// </summary>
    public ValueTask<int> CountPrefixAsync(ReadOnlyMemory<ChunkHash> keys, CancellationToken cancellationToken = default) =>
        CountPrefixAsync(keys, null, cancellationToken);

    /// <summary>
    /// As <see cref="CountPrefixAsync(ReadOnlyMemory{ChunkHash}, CancellationToken)"/>, over only the tiers whose kind
    /// <paramref name="kinds"/> accepts (null: every tier); the others are not asked.
    /// </summary>
    public async ValueTask<int> CountPrefixAsync(ReadOnlyMemory<ChunkHash> keys, Func<StorageTierKind, bool>? kinds,
        CancellationToken cancellationToken = default)
    {
        var found = 0;
        while (found < keys.Length)
        {
            var advanced = false;
            foreach (var tier in _tiers)
            {
                if (kinds is not null && !kinds(tier.Kind))
                {
                    continue;
                }

                var n = tier is MemoryTier memory
                    ? memory.CountPrefix(keys.Span[found..])
                    : await GuardAsync(tier, static (t, k, ct) => t.CountPrefixAsync(k, ct), keys[found..], 0, cancellationToken).ConfigureAwait(false);
                if (n > 0)
                {
                    found += Math.Min(n, keys.Length - found);
                    advanced = true;
                    break;
                }
            }

            if (!advanced)
            {
                break;
            }
        }

        return found;
    }

    /// <summary>Whether a lower tier keeps a child index (<see cref="IChildIndexTier"/>): partial chunks go there too.</summary>
    public bool HasChildIndex => _tiers.Any(t => t is IChildIndexTier { HasChildIndex: true });

    /// <summary>
    /// The children of <paramref name="parent"/> that the lower tiers with a child index report for <paramref name="next"/>,
    /// best first per tier, one round trip per such tier (asked together). Unchecked: the caller verifies the tokens.
    /// </summary>
    public async ValueTask<IReadOnlyList<StoredChild>> FindChildrenAsync(ChunkHash parent, ReadOnlyMemory<int> next, int max,
        CancellationToken cancellationToken = default)
    {
        var asks = _tiers.OfType<IChildIndexTier>().Where(t => t.HasChildIndex).Select(t => t.FindChildrenAsync(parent, next, max, cancellationToken).AsTask()).ToArray();
        if (asks.Length == 0)
        {
            return [];
        }

        var answers = await Task.WhenAll(asks).ConfigureAwait(false);
        return answers.Length == 1 ? answers[0] : [.. answers.SelectMany(a => a)];
    }

    /// <summary>The chunk under <paramref name="key"/> from the fastest tier holding it, with one reference for the caller; null on a miss.</summary>
    public async ValueTask<KvChunk?> GetAsync(ChunkHash key, CancellationToken cancellationToken = default)
    {
        if (_memory?.TryGet(key) is { } hot)
        {
            return hot;
        }

        foreach (var tier in _tiers)
        {
            if (tier == _memory)
            {
                continue;
            }

            var chunk = await GuardAsync(tier, static (t, k, ct) => t.GetAsync(k, ct), key, null, cancellationToken).ConfigureAwait(false);
            if (chunk is null)
            {
                continue;
            }

            if (chunk.Key != key)
            {
                // A tier handed back another key's chunk: treat as corruption.
                chunk.Release();
                _metrics?.CorruptChunk(tier.Name);
                continue;
            }

            _memory?.Put(chunk);
            return chunk;
        }

        return null;
    }

    /// <summary>
    /// Stores a filled, sealed chunk: into the memory tier now, and queued for the other tiers. The caller keeps its
    /// reference. Returns false when no tier took it or queued it.
    /// </summary>
    public bool Put(KvChunk chunk) => Put(chunk, localOnly: false);

    /// <summary>
    /// As <see cref="Put(KvChunk)"/>; with <paramref name="localOnly"/> the remote tiers are skipped (a partial chunk for
    /// token-exact reuse: the disk tier indexes it by its lineage, a remote store could not find it).
    /// </summary>
    public bool Put(KvChunk chunk, bool localOnly)
    {
        ArgumentNullException.ThrowIfNull(chunk);
        var stored = _memory?.Put(chunk) ?? false;
        if (localOnly && !_writeBehind.Any(t => t.Kind == StorageTierKind.Disk))
        {
            return stored;
        }

        if (_queue is not null)
        {
            chunk.AddRef();
            Interlocked.Increment(ref _pendingWrites);
            if (Volatile.Read(ref _disposed) == 0 && _queue.Writer.TryWrite(new WriteOp(chunk, chunk.Key) { LocalOnly = localOnly }))
            {
                stored = true;
            }
            else
            {
                Interlocked.Decrement(ref _pendingWrites);
                chunk.Release();
                foreach (var tier in _writeBehind)
                {
                    _metrics?.DroppedStore(tier.Name);
                }
            }
        }

        return stored;
    }

    /// <summary>Whether the memory tier holds <paramref name="key"/>.</summary>
    public bool ContainsInMemory(ChunkHash key) => _memory?.Contains(key) ?? false;

    /// <summary>How long <see cref="DisposeAsync"/> lets the writer finish queued writes before it cancels them.</summary>
    public static TimeSpan DisposeWriteTimeout { get; } = TimeSpan.FromSeconds(10);

    /// <summary>
    /// Completes once every background write and delete queued before this call has been done (writes queued after it are
    /// not waited for), or dropped by <see cref="DisposeAsync"/>. A marker goes through the queue behind them; when the
    /// queue is full the marker waits for room.
    /// </summary>
    public async Task FlushAsync(CancellationToken cancellationToken = default)
    {
        if (_queue is null)
        {
            return;
        }

        var flushed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        try
        {
            await _queue.Writer.WriteAsync(new WriteOp(null, default, flushed), cancellationToken).ConfigureAwait(false);
        }
        catch (ChannelClosedException)
        {
            // Disposing: nothing more is accepted; what was queued is written or dropped by the time the writer stops.
            await _writer!.WaitAsync(cancellationToken).ConfigureAwait(false);
            return;
        }

        await flushed.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Removes <paramref name="key"/> from the memory tier now and from the other tiers in the background (the caller never
    /// waits on disk or network for it). When the queue is full the lower-tier delete is skipped: those tiers verify what
    /// they return, so a stale copy there is a miss at worst.
    /// </summary>
    public void RemoveInBackground(ChunkHash key) => RemoveInBackground(key, localOnly: false);

    /// <summary>As <see cref="RemoveInBackground(ChunkHash)"/>; with <paramref name="localOnly"/> the remote tiers are left alone.</summary>
    public void RemoveInBackground(ChunkHash key, bool localOnly)
    {
        _memory?.Remove(key);
        if (localOnly && !_writeBehind.Any(t => t.Kind == StorageTierKind.Disk))
        {
            return;
        }

        if (_queue is not null && Volatile.Read(ref _disposed) == 0)
        {
            Interlocked.Increment(ref _pendingWrites);
            if (!_queue.Writer.TryWrite(new WriteOp(null, key) { LocalOnly = localOnly }))
            {
                Interlocked.Decrement(ref _pendingWrites);
            }
        }
    }

    /// <summary>Removes <paramref name="key"/> from every tier.</summary>
    public async ValueTask RemoveAsync(ChunkHash key, CancellationToken cancellationToken = default)
    {
        foreach (var tier in _tiers)
        {
            var removed = await GuardAsync(tier, static (t, k, ct) => t.RemoveAsync(k, ct), key, false, cancellationToken).ConfigureAwait(false);
            ReportRemoteRemoval(tier, key, removed);
        }
    }

    // The memory and disk tiers report their own changes; a remote store cannot tell us of others' changes, only ours.
    private void ReportRemoteRemoval(IStorageTier tier, ChunkHash key, bool removed)
    {
        if (removed && tier.Kind == StorageTierKind.Remote)
        {
            Events?.Removed(KvMedium.Remote, key);
        }
    }

    /// <summary>Clears every tier.</summary>
    public async ValueTask ClearAsync(CancellationToken cancellationToken = default)
    {
        foreach (var tier in _tiers)
        {
            await GuardAsync(tier, static async (t, _, ct) => { await t.ClearAsync(ct).ConfigureAwait(false); return true; }, 0, false, cancellationToken)
                .ConfigureAwait(false);
        }

        // After the tiers' own removals: a consumer that knows AllBlocksCleared resets, one that does not has seen each removal.
        Events?.AllCleared();
    }

    /// <summary>
    /// Finishes queued writes (up to <see cref="DisposeWriteTimeout"/>), then cancels the writer and waits for it to stop, drops
    /// what is left in the queue and disposes every tier. No tier is disposed while the writer is inside it.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        if (_queue is not null)
        {
            _queue.Writer.TryComplete();
            try
            {
                await _writer!.WaitAsync(DisposeWriteTimeout, _time).ConfigureAwait(false);
            }
            catch (TimeoutException)
            {
                await _stopWriter.CancelAsync().ConfigureAwait(false);
                await _writer!.ConfigureAwait(false); // the writer catches its own cancellation; it never throws
            }

            // The writer has stopped: this is now the queue's only reader.
            while (_queue.Reader.TryRead(out var left))
            {
                if (left.Flushed is { } marker)
                {
                    marker.TrySetResult();
                    continue;
                }

                left.Chunk?.Release();
                Interlocked.Decrement(ref _pendingWrites);
            }
        }

        _stopWriter.Dispose();

        foreach (var tier in _tiers)
        {
            try
            {
                await tier.DisposeAsync().ConfigureAwait(false);
            }
            catch (Exception)
            {
                _metrics?.TierError(tier.Name);
            }
        }
    }

    private async Task WriteBehindLoopAsync()
    {
        var stop = _stopWriter.Token;
        try
        {
            await foreach (var op in _queue!.Reader.ReadAllAsync(stop).ConfigureAwait(false))
            {
                if (op.Flushed is { } marker)
                {
                    marker.TrySetResult();
                    continue;
                }

                try
                {
                    foreach (var tier in _writeBehind)
                    {
                        if (op.LocalOnly && tier.Kind == StorageTierKind.Remote)
                        {
                            continue;
                        }

                        if (op.Chunk is null)
                        {
                            var removed = await GuardAsync(tier, static (t, k, ct) => t.RemoveAsync(k, ct), op.Key, false, stop).ConfigureAwait(false);
                            ReportRemoteRemoval(tier, op.Key, removed);
                            continue;
                        }

                        var ok = await GuardAsync(tier, static (t, c, ct) => t.PutAsync(c, ct), op.Chunk, false, stop).ConfigureAwait(false);
                        if (!ok)
                        {
                            _metrics?.DroppedStore(tier.Name);
                        }
                        else if (tier.Kind == StorageTierKind.Remote)
                        {
                            Events?.Stored(KvMedium.Remote, op.Chunk.Key, op.Chunk.Lineage);
                        }
                    }
                }
                finally
                {
                    op.Chunk?.Release();
                    Interlocked.Decrement(ref _pendingWrites);
                }
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
            // DisposeAsync gave up waiting; it drops what is left once this task has ended.
        }
    }

    /// <summary>
    /// A background write (<see cref="Chunk"/> set) or delete (<see cref="Chunk"/> null) of <see cref="Key"/>; or, with
    /// <see cref="Flushed"/> set, a flush marker the writer completes when it reaches it.
    /// </summary>
    private readonly record struct WriteOp(KvChunk? Chunk, ChunkHash Key, TaskCompletionSource? Flushed = null)
    {
        /// <summary>Skip the remote tiers (a partial chunk only the local tiers can index).</summary>
        public bool LocalOnly { get; init; }
    }

    private async ValueTask<TResult> GuardAsync<TArg, TResult>(IStorageTier tier, Func<IStorageTier, TArg, CancellationToken, ValueTask<TResult>> call,
        TArg arg, TResult onFailure, CancellationToken cancellationToken)
    {
        try
        {
            return await call(tier, arg, cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            throw;
        }
        catch (Exception)
        {
            _metrics?.TierError(tier.Name);
            return onFailure;
        }
    }
}
