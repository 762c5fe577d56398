using System.Diagnostics.Metrics;

namespace LMCacheSharp.Core.Metrics;

/// <summary>
/// The cache's instruments on a <see cref="Meter"/> named <see cref="MeterName"/>, named after LMCache's
/// (<c>lmcache.num_lookup_requests</c> is exported to Prometheus as <c>lmcache_num_lookup_requests</c>), plus running
/// totals readable in process through <see cref="Snapshot"/>. One instance is shared by an engine and its tiers.
/// </summary>
public sealed class CacheMetrics : IDisposable
{
    /// <summary>The meter name.</summary>
    public const string MeterName = "LMCacheSharp";

    private readonly Meter _meter;
    private readonly bool _ownsMeter;
    private readonly Counter<long> _lookupRequests;
    private readonly Counter<long> _lookupTokens;
    private readonly Counter<long> _lookupHitTokens;
    private readonly Counter<long> _storeRequests;
    private readonly Counter<long> _storedTokens;
    private readonly Counter<long> _retrieveRequests;
    private readonly Counter<long> _requestedTokens;
    private readonly Counter<long> _retrievedTokens;
    private readonly Counter<long> _evictions;
    private readonly Counter<long> _droppedStores;
    private readonly Counter<long> _corruptChunks;
    private readonly Counter<long> _tierErrors;
    private readonly Counter<long> _droppedKvEvents;
    private readonly Histogram<double> _lookupTime;
    private readonly Histogram<double> _storeTime;
    private readonly Histogram<double> _retrieveTime;
    private readonly List<Func<long>> _usageSources = [];
    private long _totLookupRequests, _totLookupTokens, _totLookupHits, _totStoreRequests, _totStored, _totRetrieveRequests,
        _totRequested, _totRetrieved, _totEvictions, _totDropped, _totCorrupt, _totTierErrors, _totDroppedKvEvents;

    /// <summary>Creates the instruments on a meter from <paramref name="meterFactory"/>, or on a private meter.</summary>
    public CacheMetrics(IMeterFactory? meterFactory = null)
    {
        _meter = meterFactory?.Create(MeterName) ?? new Meter(MeterName);
        _ownsMeter = meterFactory is null;
        _lookupRequests = _meter.CreateCounter<long>("lmcache.num_lookup_requests", "{request}", "Lookup calls.");
        _lookupTokens = _meter.CreateCounter<long>("lmcache.num_lookup_tokens", "{token}", "Prompt tokens looked up.");
        _lookupHitTokens = _meter.CreateCounter<long>("lmcache.num_lookup_hits", "{token}", "Looked-up tokens found cached.");
        _storeRequests = _meter.CreateCounter<long>("lmcache.num_store_requests", "{request}", "Store calls.");
        _storedTokens = _meter.CreateCounter<long>("lmcache.num_stored_tokens", "{token}", "Tokens whose KV was newly stored.");
        _retrieveRequests = _meter.CreateCounter<long>("lmcache.num_retrieve_requests", "{request}", "Retrieve calls.");
        _requestedTokens = _meter.CreateCounter<long>("lmcache.num_requested_tokens", "{token}", "Tokens asked of retrieve.");
        _retrievedTokens = _meter.CreateCounter<long>("lmcache.num_hit_tokens", "{token}", "Tokens whose KV retrieve restored.");
        _evictions = _meter.CreateCounter<long>("lmcache.num_evictions", "{chunk}", "Chunks evicted to make room.");
        _droppedStores = _meter.CreateCounter<long>("lmcache.num_dropped_stores", "{chunk}", "Chunks not written to a tier (full queue or tier refused).");
        _corruptChunks = _meter.CreateCounter<long>("lmcache.num_corrupt_chunks", "{chunk}", "Chunks that failed a checksum or header check (each a miss).");
        _tierErrors = _meter.CreateCounter<long>("lmcache.num_tier_errors", "{error}", "Tier operations that failed or timed out (each a miss).");
        _droppedKvEvents = _meter.CreateCounter<long>("lmcache.num_dropped_kv_events", "{event}", "KV events not published because the publisher fell behind.");
        _lookupTime = _meter.CreateHistogram<double>("lmcache.time_to_lookup", "s", "Time of a lookup.");
        _storeTime = _meter.CreateHistogram<double>("lmcache.time_to_store", "s", "Time of a store call (memory tier; lower tiers write in the background).");
        _retrieveTime = _meter.CreateHistogram<double>("lmcache.time_to_retrieve", "s", "Time of a retrieve call.");
        _meter.CreateObservableGauge("lmcache.local_cache_usage", () => LocalCacheUsageBytes, "By", "Bytes of KV held in memory.");
        _meter.CreateObservableGauge("lmcache.lookup_hit_rate", () => Snapshot().LookupHitRate, "1", "Hit tokens / looked-up tokens since start.");
        _meter.CreateObservableGauge("lmcache.retrieve_hit_rate", () => Snapshot().RetrieveHitRate, "1", "Restored tokens / requested tokens since start.");
    }

    /// <summary>The meter holding the instruments.</summary>
    public Meter Meter => _meter;

    /// <summary>Bytes used by every registered usage source (the memory tiers).</summary>
    public long LocalCacheUsageBytes
    {
        get
        {
            long total = 0;
            lock (_usageSources)
            {
                foreach (var source in _usageSources)
                {
                    total += source();
                }
            }

            return total;
        }
    }

    /// <summary>Registers a source for <c>lmcache.local_cache_usage</c>.</summary>
    public void AddUsageSource(Func<long> bytesUsed)
    {
        lock (_usageSources)
        {
            _usageSources.Add(bytesUsed);
        }
    }

    internal void Lookup(int tokens, int hitTokens, double seconds)
    {
        _lookupRequests.Add(1);
        _lookupTokens.Add(tokens);
        _lookupHitTokens.Add(hitTokens);
        _lookupTime.Record(seconds);
        Interlocked.Increment(ref _totLookupRequests);
        Interlocked.Add(ref _totLookupTokens, tokens);
        Interlocked.Add(ref _totLookupHits, hitTokens);
    }

    internal void Store(int storedTokens, double seconds)
    {
        _storeRequests.Add(1);
        _storedTokens.Add(storedTokens);
        _storeTime.Record(seconds);
        Interlocked.Increment(ref _totStoreRequests);
        Interlocked.Add(ref _totStored, storedTokens);
    }

    internal void Retrieve(int requestedTokens, int retrievedTokens, double seconds)
    {
        _retrieveRequests.Add(1);
        _requestedTokens.Add(requestedTokens);
        _retrievedTokens.Add(retrievedTokens);
        _retrieveTime.Record(seconds);
        Interlocked.Increment(ref _totRetrieveRequests);
        Interlocked.Add(ref _totRequested, requestedTokens);
        Interlocked.Add(ref _totRetrieved, retrievedTokens);
    }

    /// <summary>Counts chunks evicted from <paramref name="tier"/>.</summary>
    public void Evicted(string tier, int chunks = 1)
    {
        _evictions.Add(chunks, new KeyValuePair<string, object?>("tier", tier));
        Interlocked.Add(ref _totEvictions, chunks);
    }

    /// <summary>
    /// Where faults counted here are also logged (rate-limited: see <see cref="FaultLog"/>), or null for metrics only.
    /// Hosts set it once at start.
    /// </summary>
    public FaultLog? Faults { get; set; }

    /// <summary>Counts a chunk that a tier did not take (queue full, too large, tier down).</summary>
    public void DroppedStore(string tier)
    {
        _droppedStores.Add(1, new KeyValuePair<string, object?>("tier", tier));
        Interlocked.Increment(ref _totDropped);
        Faults?.Count("dropped store", tier, "those chunks were not written there (write queue full, tier full or down)");
    }

    /// <summary>Counts a chunk rejected by a header or checksum check.</summary>
    public void CorruptChunk(string tier)
    {
        _corruptChunks.Add(1, new KeyValuePair<string, object?>("tier", tier));
        Interlocked.Increment(ref _totCorrupt);
        Faults?.Count("corrupt chunk", tier, "each was a miss, recomputed and dropped");
    }

    /// <summary>Counts a failed or timed-out tier operation.</summary>
    public void TierError(string tier)
    {
        _tierErrors.Add(1, new KeyValuePair<string, object?>("tier", tier));
        Interlocked.Increment(ref _totTierErrors);
        Faults?.Count("failed operation", tier, "each was a miss");
    }

    /// <summary>Counts a KV event dropped because its queue was full (the publisher fell behind).</summary>
    public void DroppedKvEvent()
    {
        _droppedKvEvents.Add(1);
        Interlocked.Increment(ref _totDroppedKvEvents);
        Faults?.Count("dropped KV event", "kv-events", "the publisher fell behind; subscribers miss those changes");
    }

    /// <summary>Totals since this instance was created.</summary>
    public CacheMetricsSnapshot Snapshot() => new(
        Interlocked.Read(ref _totLookupRequests), Interlocked.Read(ref _totLookupTokens), Interlocked.Read(ref _totLookupHits),
        Interlocked.Read(ref _totStoreRequests), Interlocked.Read(ref _totStored), Interlocked.Read(ref _totRetrieveRequests),
        Interlocked.Read(ref _totRequested), Interlocked.Read(ref _totRetrieved), Interlocked.Read(ref _totEvictions),
        Interlocked.Read(ref _totDropped), Interlocked.Read(ref _totCorrupt), Interlocked.Read(ref _totTierErrors), LocalCacheUsageBytes,
        Interlocked.Read(ref _totDroppedKvEvents));

    /// <inheritdoc />
    public void Dispose()
    {
        if (_ownsMeter)
        {
            _meter.Dispose();
        }
    }
}

/// <summary>Running totals of <see cref="CacheMetrics"/>.</summary>
public readonly record struct CacheMetricsSnapshot(
    long LookupRequests, long LookupTokens, long LookupHitTokens,
    long StoreRequests, long StoredTokens,
    long RetrieveRequests, long RequestedTokens, long RetrievedTokens,
    long Evictions, long DroppedStores, long CorruptChunks, long TierErrors, long LocalCacheUsageBytes, long DroppedKvEvents = 0)
{
    /// <summary>Hit tokens / looked-up tokens (0 when nothing was looked up).</summary>
    public double LookupHitRate => LookupTokens == 0 ? 0 : (double)LookupHitTokens / LookupTokens;

    /// <summary>Restored tokens / requested tokens (0 when nothing was requested).</summary>
    public double RetrieveHitRate => RequestedTokens == 0 ? 0 : (double)RetrievedTokens / RequestedTokens;
}
