using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using System.Runtime.CompilerServices;

namespace LMCacheSharp.Core.Metrics;

/// <summary>
/// The cache's totals, counted once, and the instruments on a <see cref="Meter"/> named <see cref="MeterName"/> that
/// report them, named after LMCache's (<c>lmcache.num_lookup_requests</c>; exported at /metrics as
/// <c>lmcachesharp_lmcache_num_lookup_requests</c>, see docs/architecture.md). The counters are observable instruments over
/// the same totals that <see cref="Snapshot"/> reads in process. One instance is shared by an engine and its tiers.
/// </summary>
public sealed class CacheMetrics : IDisposable
{
    /// <summary>The meter name.</summary>
    public const string MeterName = "LMCacheSharp";

    private readonly Meter _meter;
    private readonly bool _ownsMeter;
    private readonly Histogram<double> _lookupTime;
    private readonly Histogram<double> _storeTime;
    private readonly Histogram<double> _retrieveTime;
    private readonly List<Func<long>> _usageSources = [];
    private readonly List<Func<Storage.PinStats>> _pinnedSources = [];
    private readonly TierTotals _evictions = new(), _droppedStores = new(), _corruptChunks = new(), _tierErrors = new();
    private long _lookupRequests, _lookupTokens, _lookupHits, _storeRequests, _storedTokens, _retrieveRequests,
        _requestedTokens, _retrievedTokens, _droppedKvEvents;

    /// <summary>Creates the instruments on a meter from <paramref name="meterFactory"/>, or on a private meter.</summary>
    public CacheMetrics(IMeterFactory? meterFactory = null)
    {
        _meter = meterFactory?.Create(MeterName) ?? new Meter(MeterName);
        _ownsMeter = meterFactory is null;
        _meter.CreateObservableCounter("lmcache.num_lookup_requests", () => Interlocked.Read(ref _lookupRequests), "{request}", "Lookup calls.");
        _meter.CreateObservableCounter("lmcache.num_lookup_tokens", () => Interlocked.Read(ref _lookupTokens), "{token}", "Prompt tokens looked up.");
        _meter.CreateObservableCounter("lmcache.num_lookup_hits", () => Interlocked.Read(ref _lookupHits), "{token}", "Looked-up tokens found cached.");
        _meter.CreateObservableCounter("lmcache.num_store_requests", () => Interlocked.Read(ref _storeRequests), "{request}", "Store calls.");
        _meter.CreateObservableCounter("lmcache.num_stored_tokens", () => Interlocked.Read(ref _storedTokens), "{token}", "Tokens whose KV was newly stored.");
        _meter.CreateObservableCounter("lmcache.num_retrieve_requests", () => Interlocked.Read(ref _retrieveRequests), "{request}", "Retrieve calls.");
        _meter.CreateObservableCounter("lmcache.num_requested_tokens", () => Interlocked.Read(ref _requestedTokens), "{token}", "Tokens asked of retrieve.");
        _meter.CreateObservableCounter("lmcache.num_hit_tokens", () => Interlocked.Read(ref _retrievedTokens), "{token}", "Tokens whose KV retrieve restored.");
        _meter.CreateObservableCounter("lmcache.num_evictions", _evictions.Measure, "{chunk}", "Chunks evicted to make room.");
        _meter.CreateObservableCounter("lmcache.num_dropped_stores", _droppedStores.Measure, "{chunk}", "Chunks not written to a tier (full queue or tier refused).");
        _meter.CreateObservableCounter("lmcache.num_corrupt_chunks", _corruptChunks.Measure, "{chunk}", "Chunks that failed a checksum or header check (each a miss).");
        _meter.CreateObservableCounter("lmcache.num_tier_errors", _tierErrors.Measure, "{error}", "Tier operations that failed or timed out (each a miss).");
        _meter.CreateObservableCounter("lmcache.num_dropped_kv_events", () => Interlocked.Read(ref _droppedKvEvents), "{event}",
            "KV events not published because the publisher fell behind.");
        _lookupTime = _meter.CreateHistogram<double>("lmcache.time_to_lookup", "s", "Time of a lookup.");
        _storeTime = _meter.CreateHistogram<double>("lmcache.time_to_store", "s", "Time of a store call (memory tier; lower tiers write in the background).");
        _retrieveTime = _meter.CreateHistogram<double>("lmcache.time_to_retrieve", "s", "Time of a retrieve call.");
        _meter.CreateObservableGauge("lmcache.local_cache_usage", () => LocalCacheUsageBytes, "By", "Bytes of KV held in memory.");
        _meter.CreateObservableGauge("lmcache.pinned_chunks", () => Pinned.Chunks, "{chunk}", "Chunks pinned in memory (exempt from eviction: POST /lmcache/pin).");
        _meter.CreateObservableGauge("lmcache.pinned_bytes", () => Pinned.Bytes, "By", "Bytes of the chunks pinned in memory.");
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

    /// <summary>What every registered pin source (the memory tiers) has pinned: chunks, bytes and the limit, summed.</summary>
    public Storage.PinStats Pinned
    {
        get
        {
            long chunks = 0, bytes = 0, max = 0;
            lock (_pinnedSources)
            {
                foreach (var source in _pinnedSources)
                {
                    var stats = source();
                    chunks += stats.Chunks;
                    bytes += stats.Bytes;
                    max += stats.MaxBytes;
                }
            }

            return new Storage.PinStats(chunks, bytes, max);
        }
    }

    /// <summary>Registers a source for <c>lmcache.pinned_chunks</c> and <c>lmcache.pinned_bytes</c>.</summary>
    public void AddPinnedSource(Func<Storage.PinStats> pinned)
    {
        lock (_pinnedSources)
        {
            _pinnedSources.Add(pinned);
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
        Interlocked.Increment(ref _lookupRequests);
        Interlocked.Add(ref _lookupTokens, tokens);
        Interlocked.Add(ref _lookupHits, hitTokens);
        _lookupTime.Record(seconds);
    }

    internal void Store(int storedTokens, double seconds)
    {
        Interlocked.Increment(ref _storeRequests);
        Interlocked.Add(ref _storedTokens, storedTokens);
        _storeTime.Record(seconds);
    }

    internal void Retrieve(int requestedTokens, int retrievedTokens, double seconds)
    {
        Interlocked.Increment(ref _retrieveRequests);
        Interlocked.Add(ref _requestedTokens, requestedTokens);
        Interlocked.Add(ref _retrievedTokens, retrievedTokens);
        _retrieveTime.Record(seconds);
    }

    /// <summary>Counts chunks evicted from <paramref name="tier"/>.</summary>
    public void Evicted(string tier, int chunks = 1)
    {
        _evictions.Add(tier, chunks);
    }

    /// <summary>
    /// Where faults counted here are also logged (rate-limited: see <see cref="FaultLog"/>), or null for metrics only.
    /// Hosts set it once at start.
    /// </summary>
    public FaultLog? Faults { get; set; }

    /// <summary>Counts a chunk that a tier did not take (queue full, too large, tier down).</summary>
    public void DroppedStore(string tier)
    {
        _droppedStores.Add(tier, 1);
        Faults?.Count("dropped store", tier, "those chunks were not written there (write queue full, tier full or down)");
    }

    /// <summary>Counts a chunk rejected by a header or checksum check.</summary>
    public void CorruptChunk(string tier)
    {
        _corruptChunks.Add(tier, 1);
        Faults?.Count("corrupt chunk", tier, "each was a miss, recomputed and dropped");
    }

    /// <summary>Counts a failed or timed-out tier operation.</summary>
    public void TierError(string tier)
    {
        _tierErrors.Add(tier, 1);
        Faults?.Count("failed operation", tier, "each was a miss");
    }

    /// <summary>Counts a KV event dropped because its queue was full (the publisher fell behind).</summary>
    public void DroppedKvEvent()
    {
        Interlocked.Increment(ref _droppedKvEvents);
        Faults?.Count("dropped KV event", "kv-events", "the publisher fell behind; subscribers miss those changes");
    }

    /// <summary>Totals since this instance was created.</summary>
    public CacheMetricsSnapshot Snapshot() => new(
        Interlocked.Read(ref _lookupRequests), Interlocked.Read(ref _lookupTokens), Interlocked.Read(ref _lookupHits),
        Interlocked.Read(ref _storeRequests), Interlocked.Read(ref _storedTokens), Interlocked.Read(ref _retrieveRequests),
        Interlocked.Read(ref _requestedTokens), Interlocked.Read(ref _retrievedTokens), _evictions.Total,
        _droppedStores.Total, _corruptChunks.Total, _tierErrors.Total, LocalCacheUsageBytes,
        Interlocked.Read(ref _droppedKvEvents));

    /// <inheritdoc />
    public void Dispose()
    {
        if (_ownsMeter)
        {
            _meter.Dispose();
        }
    }

    /// <summary>A total per tier (the tag <c>tier</c> on the meter; their sum in <see cref="Snapshot"/>).</summary>
    private sealed class TierTotals
    {
        private readonly ConcurrentDictionary<string, StrongBox<long>> _byTier = new(StringComparer.Ordinal);

        public long Total
        {
            get
            {
                long total = 0;
                foreach (var (_, count) in _byTier)
                {
                    total += Interlocked.Read(ref count.Value);
                }

                return total;
            }
        }

        public void Add(string tier, long n) => Interlocked.Add(ref _byTier.GetOrAdd(tier, static _ => new StrongBox<long>()).Value, n);

        public IEnumerable<Measurement<long>> Measure() =>
            [.. _byTier.Select(p => new Measurement<long>(Interlocked.Read(ref p.Value.Value), new KeyValuePair<string, object?>("tier", p.Key)))];
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
