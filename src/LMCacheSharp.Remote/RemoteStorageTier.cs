using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Metrics;
using LMCacheSharp.Core.Storage;

namespace LMCacheSharp.Remote;

/// <summary>
/// A remote store as a storage tier (<see cref="StorageTierKind.Remote"/>): every call has a timeout and goes through a
/// <see cref="CircuitBreaker"/>, so a dead or slow remote turns into misses (and refused stores), never into errors or
/// stalls. Failures and timeouts are counted in <c>lmcache.num_tier_errors</c>, values that fail their checks in
/// <c>lmcache.num_corrupt_chunks</c>. Only the caller's own cancellation throws.
/// </summary>
public sealed class RemoteStorageTier : IStorageTier, IChildIndexTier, IPinnableTier
{
    private readonly IRemoteConnector _connector;
    private readonly CacheMetrics? _metrics;
    private long _hits, _misses, _stored, _failures;
    private int _down;

    /// <summary>Creates the tier; it owns <paramref name="connector"/>.</summary>
    /// <param name="connector">The remote store.</param>
    /// <param name="timeout">Longest wait for one call (LMCache's <c>remote_timeout_ms</c>).</param>
    /// <param name="metrics">Where errors and corrupt chunks are counted, or null.</param>
    /// <param name="breaker">The circuit breaker, or null for the defaults.</param>
    /// <param name="displayName">How logs name the remote (its URL without credentials). Default: the connector's name.</param>
    public RemoteStorageTier(IRemoteConnector connector, TimeSpan timeout, CacheMetrics? metrics = null, CircuitBreaker? breaker = null,
        string? displayName = null)
    {
        ArgumentNullException.ThrowIfNull(connector);
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(timeout, TimeSpan.Zero);
        _connector = connector;
        DisplayName = displayName ?? connector.Name;
        Timeout = timeout;
        _metrics = metrics;
        Breaker = breaker ?? new CircuitBreaker();
    }

    /// <inheritdoc />
    public string Name => "remote";

    /// <inheritdoc />
    public StorageTierKind Kind => StorageTierKind.Remote;

    /// <summary>The connector.</summary>
    public IRemoteConnector Connector => _connector;

    /// <summary>Longest wait for one call.</summary>
    public TimeSpan Timeout { get; }

    /// <summary>The circuit breaker.</summary>
    public CircuitBreaker Breaker { get; }

    /// <summary>How logs name the remote.</summary>
    public string DisplayName { get; }

    /// <summary>Counters of this tier in this process.</summary>
    public (long Hits, long Misses, long Stored, long Failures) Counters =>
        (Interlocked.Read(ref _hits), Interlocked.Read(ref _misses), Interlocked.Read(ref _stored), Interlocked.Read(ref _failures));

    /// <inheritdoc />
    public async ValueTask<int> CountPrefixAsync(ReadOnlyMemory<ChunkHash> keys, CancellationToken cancellationToken = default)
    {
        if (keys.IsEmpty)
        {
            return 0;
        }

        var (ok, n) = await CallAsync(static (c, k, ct) => c.CountPrefixAsync(k, ct), keys, null, cancellationToken).ConfigureAwait(false);
        return ok ? Math.Clamp(n, 0, keys.Length) : 0;
    }

    /// <inheritdoc />
    public async ValueTask<KvChunk?> GetAsync(ChunkHash key, CancellationToken cancellationToken = default)
    {
        var (ok, read) = await CallAsync(static (c, k, ct) => c.GetAsync(k, ct), key, static r => r.Chunk?.Release(), cancellationToken).ConfigureAwait(false);
        if (!ok || read.Chunk is null)
        {
            if (read.Rejected is not null)
            {
                _metrics?.CorruptChunk(Name);
            }

            Interlocked.Increment(ref _misses);
            return null;
        }

        Interlocked.Increment(ref _hits);
        return read.Chunk;
    }

    /// <inheritdoc />
    public async ValueTask<bool> PutAsync(KvChunk chunk, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(chunk);
        var (ok, stored) = await CallAsync(static async (c, k, ct) =>
        {
            // The connector may still be sending after a timeout: it keeps its own reference until it is done.
            k.AddRef();
            try
            {
                // The link goes with the value (pipelined): a child index lists only children whose value is there.
                if (k.Lineage is { } lineage && c.HasChildIndex)
                {
                    var put = c.PutAsync(k, ct);
                    var link = c.LinkAsync(k.Key, lineage, ct);
                    await Task.WhenAll(put, link).ConfigureAwait(false);
                    return put.Result;
                }

                return await c.PutAsync(k, ct).ConfigureAwait(false);
            }
            finally
            {
                k.Release();
            }
        }, chunk, null, cancellationToken).ConfigureAwait(false);
        if (ok && stored)
        {
            Interlocked.Increment(ref _stored);
        }

        return ok && stored;
    }

    /// <inheritdoc />
    public bool HasChildIndex => _connector.HasChildIndex;

    /// <inheritdoc />
    public async ValueTask<IReadOnlyList<StoredChild>> FindChildrenAsync(ChunkHash parent, ReadOnlyMemory<int> next, int max,
        CancellationToken cancellationToken = default)
    {
        if (!HasChildIndex)
        {
            return [];
        }

        var (ok, children) = await CallAsync(static (c, a, ct) => c.FindChildrenAsync(a.parent, a.next, a.max, ct), (parent, next, max), null,
            cancellationToken).ConfigureAwait(false);
        return ok ? children : [];
    }

    /// <inheritdoc />
    public bool CanPin => _connector.CanPin;

    /// <inheritdoc />
    public ValueTask<TierPinOutcome> PinAsync(ReadOnlyMemory<ChunkHash> keys, CancellationToken cancellationToken = default) =>
        PinOrUnpinAsync(keys, pin: true, cancellationToken);

    /// <inheritdoc />
    public ValueTask<TierPinOutcome> UnpinAsync(ReadOnlyMemory<ChunkHash> keys, CancellationToken cancellationToken = default) =>
        PinOrUnpinAsync(keys, pin: false, cancellationToken);

    private async ValueTask<TierPinOutcome> PinOrUnpinAsync(ReadOnlyMemory<ChunkHash> keys, bool pin, CancellationToken cancellationToken)
    {
        if (!CanPin)
        {
            return new TierPinOutcome(TierPinStatus.Unsupported, 0, _connector.Name == "redis"
                ? $"the remote tier {DisplayName} cannot pin: Redis has no per-key exemption from its eviction (short of PERSIST with a volatile-* maxmemory-policy), so pinning on a redis:// remote is not supported"
                : $"the remote tier {DisplayName} cannot pin");
        }

        var (ok, outcome) = await CallAsync(static (c, a, ct) => a.pin ? c.PinAsync(a.keys, ct) : c.UnpinAsync(a.keys, ct), (keys, pin), null, cancellationToken)
            .ConfigureAwait(false);
        return ok ? outcome : new TierPinOutcome(TierPinStatus.Unavailable, 0, $"the remote tier {DisplayName} did not answer (down, timed out or its circuit open)");
    }

    /// <inheritdoc />
    public async ValueTask<bool> RemoveAsync(ChunkHash key, CancellationToken cancellationToken = default)
    {
        var (ok, removed) = await CallAsync(static (c, k, ct) => c.RemoveAsync(k, ct), key, null, cancellationToken).ConfigureAwait(false);
        return ok && removed;
    }

    /// <inheritdoc />
    public async ValueTask ClearAsync(CancellationToken cancellationToken = default) =>
        await CallAsync(static async (c, _, ct) =>
        {
            await c.ClearAsync(ct).ConfigureAwait(false);
            return true;
        }, 0, null, cancellationToken).ConfigureAwait(false);

    /// <summary>Sizes are the remote's own business: reported as unknown (0 chunks, 0 bytes, capacity -1).</summary>
    public StorageTierStats GetStats() => new(0, 0, -1);

    /// <inheritdoc />
    public ValueTask DisposeAsync() => _connector.DisposeAsync();

    private async ValueTask<(bool Ok, T Result)> CallAsync<TArg, T>(Func<IRemoteConnector, TArg, CancellationToken, Task<T>> call, TArg arg,
        Action<T>? releaseLate, CancellationToken cancellationToken)
    {
        if (!Breaker.TryEnter(out var ticket))
        {
            return (false, default!);
        }

        if (ticket.IsProbe)
        {
            // The remote failed recently: a pooled connection may still be stuck behind a request it never answered.
            _connector.ResetConnections();
        }

        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(Timeout);
        Task<T>? task = null;
        try
        {
            task = call(_connector, arg, timeout.Token);
            // WaitAsync bounds the wait even for a connector that ignores its token.
            var result = await task.WaitAsync(Timeout, cancellationToken).ConfigureAwait(false);
            Breaker.OnSuccess(ticket);
            if (Breaker.State == CircuitState.Closed && Interlocked.Exchange(ref _down, 0) == 1)
            {
                _metrics?.Faults?.State("remote tier " + DisplayName, "up", "it answers again; hits and stores resume",
                    Microsoft.Extensions.Logging.LogLevel.Information);
            }

            return (true, result);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            ReleaseWhenDone(task, releaseLate);
            throw;
        }
        catch (Exception)
        {
            ReleaseWhenDone(task, releaseLate);
            Breaker.OnFailure(ticket);
            Interlocked.Increment(ref _failures);
            _metrics?.TierError(Name);
            if (Breaker.State == CircuitState.Open && Interlocked.Exchange(ref _down, 1) == 0)
            {
                _metrics?.Faults?.State("remote tier " + DisplayName, "down",
                    "its calls fail or time out; requests go on with misses and skipped stores, and it is probed again in the background");
            }

            return (false, default!);
        }
    }

    private static void ReleaseWhenDone<T>(Task<T>? task, Action<T>? release)
    {
        if (task is null || release is null)
        {
            return;
        }

        // A result that arrives after we stopped waiting still holds a pooled chunk: give it back.
        _ = task.ContinueWith(static (t, state) =>
        {
            if (t.IsCompletedSuccessfully)
            {
                ((Action<T>)state!)(t.Result);
            }
        }, release, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
    }
}
