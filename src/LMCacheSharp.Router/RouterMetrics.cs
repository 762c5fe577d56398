using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using System.Runtime.CompilerServices;

namespace LMCacheSharp.Router;

/// <summary>
/// The router's metrics, on the meter <see cref="MeterName"/>, exported at /metrics as serve's are
/// (<c>lmcachesharp_router_lmcache_router_decisions{instance,policy}</c>, ...; the list is in docs/fleet.md, section Router).
/// The decisions, also read in process (<see cref="DecisionsTotal"/>), are counted once, in totals their observable counter reports.
/// </summary>
public sealed class RouterMetrics : IDisposable
{
    /// <summary>The meter name.</summary>
    public const string MeterName = "LMCacheSharp.Router";

    private readonly Meter _meter;
    private readonly ConcurrentDictionary<(string Policy, string Instance), StrongBox<long>> _decisions = new();
    private readonly Counter<long> _retries;
    private readonly Counter<long> _rejected;
    private readonly Counter<long> _responses;
    private readonly Counter<long> _predicted;
    private readonly Counter<long> _reported;
    private readonly Histogram<double> _predictionError;
    private readonly Counter<long> _lookups;
    private readonly Histogram<double> _lookupTime;
    private readonly Counter<long> _healthChanges;
    private readonly Counter<long> _controllerLookups;
    private readonly Counter<long> _controllerRefreshes;
    private readonly Counter<long> _prefills;
    private readonly Histogram<double> _prefillTime;

    /// <summary>Creates the instruments; the <paramref name="instances"/> of the moment are observed for health and in-flight gauges.</summary>
    public RouterMetrics(InstanceSet instances, IMeterFactory? meterFactory = null)
    {
        ArgumentNullException.ThrowIfNull(instances);
        _meter = meterFactory?.Create(MeterName) ?? new Meter(MeterName);
        _meter.CreateObservableCounter("lmcache_router.decisions", () => _decisions.Select(p => new Measurement<long>(Interlocked.Read(ref p.Value.Value),
            new KeyValuePair<string, object?>("policy", p.Key.Policy), new KeyValuePair<string, object?>("instance", p.Key.Instance))).ToList(),
            "{request}", "Requests sent to an instance, by policy and instance (a retry counts again).");
        _retries = _meter.CreateCounter<long>("lmcache_router.retries", "{request}", "Requests retried on another instance, by the instance that failed and why.");
        _rejected = _meter.CreateCounter<long>("lmcache_router.rejected", "{request}", "Requests the router answered itself, by reason (bad_json, too_large, unknown_model, no_healthy_instance, all_failed).");
        _responses = _meter.CreateCounter<long>("lmcache_router.responses", "{request}", "Forwarded requests by instance and status code class (2xx, 4xx, 5xx, aborted).");
        _predicted = _meter.CreateCounter<long>("lmcache_router.predicted_cached_tokens", "{token}", "kv-aware: cached prompt tokens the lookup predicted for the chosen instance, for requests whose usage was seen.");
        _reported = _meter.CreateCounter<long>("lmcache_router.reported_cached_tokens", "{token}", "usage.prompt_tokens_details.cached_tokens the instance reported, by instance.");
        _predictionError = _meter.CreateHistogram<double>("lmcache_router.prediction_error", "{token}", "kv-aware: reported minus predicted cached tokens per request.",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [-1024, -256, -64, -16, -1, 0, 1, 16, 64, 256, 1024] });
        _lookups = _meter.CreateCounter<long>("lmcache_router.lookups", "{lookup}", "kv-aware /lookup calls by instance and outcome (ok, timeout, error).");
        _lookupTime = _meter.CreateHistogram<double>("lmcache_router.lookup_time", "s", "Time for all of a request's /lookup answers (bounded by the lookup timeout).",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1] });
        _healthChanges = _meter.CreateCounter<long>("lmcache_router.health_changes", "{change}", "Instances going down or coming back, by instance and new state.");
        _controllerLookups = _meter.CreateCounter<long>("lmcache_router.controller_lookups", "{lookup}",
            "kv-aware with --controller: lookups by outcome (ok; timeout, error: the controller failed; refused: a 4xx for the request; unreadable: a prompt the controller does not take; skipped: within the fallback window). All but ok were asked of the instances instead.");
        _controllerRefreshes = _meter.CreateCounter<long>("lmcache_router.controller_refreshes", "{refresh}", "With --controller: GET /instances refreshes by outcome (ok, error).");
        _prefills = _meter.CreateCounter<long>("lmcache_router.pd_prefills", "{request}",
            "--pd: prefill steps by instance and outcome (ok; error, timeout: the decode instance prefilled itself; none: no healthy prefill instance).");
        _prefillTime = _meter.CreateHistogram<double>("lmcache_router.pd_prefill_time", "s", "--pd: time of a successful prefill step (prefill, store to the shared tier, first token).",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30] });
        _meter.CreateObservableGauge("lmcache_router.instance_healthy", () => instances.Current.Select(i =>
            new Measurement<int>(i.Healthy ? 1 : 0, new KeyValuePair<string, object?>("instance", i.Name))), "1", "1 while an instance takes requests, 0 while it is out.");
        _meter.CreateObservableGauge("lmcache_router.instance_in_flight", () => instances.Current.Select(i =>
            new Measurement<int>(i.InFlight, new KeyValuePair<string, object?>("instance", i.Name))), "{request}", "Requests this router has in flight to each instance.");
    }

    /// <summary>The meter holding the instruments.</summary>
    public Meter Meter => _meter;

    /// <summary>Requests sent to an instance since the router started (a retry counts again): what it reports to the controller.</summary>
    public long DecisionsTotal => _decisions.Values.Sum(count => Interlocked.Read(ref count.Value));

    internal void Decision(string policy, RouterInstance instance) =>
        Interlocked.Increment(ref _decisions.GetOrAdd((policy, instance.Name), static _ => new StrongBox<long>()).Value);

    internal void ControllerLookup(string outcome) => _controllerLookups.Add(1, new KeyValuePair<string, object?>("outcome", outcome));

    internal void ControllerRefresh(bool ok) => _controllerRefreshes.Add(1, new KeyValuePair<string, object?>("outcome", ok ? "ok" : "error"));

    internal void Retry(RouterInstance failed, string cause) =>
        _retries.Add(1, new KeyValuePair<string, object?>("instance", failed.Name), new KeyValuePair<string, object?>("cause", cause));

    internal void Rejected(string reason) => _rejected.Add(1, new KeyValuePair<string, object?>("reason", reason));

    internal void Response(RouterInstance instance, string status) =>
        _responses.Add(1, new KeyValuePair<string, object?>("instance", instance.Name), new KeyValuePair<string, object?>("status", status));

    internal void Usage(RouterInstance instance, int reported, int? predicted)
    {
        var tag = new KeyValuePair<string, object?>("instance", instance.Name);
        _reported.Add(reported, tag);
        if (predicted is { } p)
        {
            _predicted.Add(p, tag);
            _predictionError.Record(reported - p, tag);
        }
    }

    internal void Lookup(RouterInstance instance, string outcome) =>
        _lookups.Add(1, new KeyValuePair<string, object?>("instance", instance.Name), new KeyValuePair<string, object?>("outcome", outcome));

    internal void LookupTime(TimeSpan time) => _lookupTime.Record(time.TotalSeconds);

    internal void HealthChanged(RouterInstance instance, bool healthy) =>
        _healthChanges.Add(1, new KeyValuePair<string, object?>("instance", instance.Name), new KeyValuePair<string, object?>("state", healthy ? "up" : "down"));

    internal void Prefill(string instance, string outcome, TimeSpan? time = null)
    {
        _prefills.Add(1, new KeyValuePair<string, object?>("instance", instance), new KeyValuePair<string, object?>("outcome", outcome));
        if (time is { } t)
        {
            _prefillTime.Record(t.TotalSeconds);
        }
    }

    /// <inheritdoc />
    public void Dispose() => _meter.Dispose();
}
