using System.Diagnostics.Metrics;

namespace LMCacheSharp.Controller;

/// <summary>
/// The controller's metrics, on the meter <see cref="MeterName"/> (exported at /metrics as
/// <c>lmcachesharp_controller_lmcache_controller_*</c>, see docs/fleet.md, section Controller).
/// </summary>
public sealed class ControllerMetrics : IDisposable
{
    /// <summary>The meter name.</summary>
    public const string MeterName = "LMCacheSharp.Controller";

    private readonly Meter _meter = new(MeterName);
    private readonly Counter<long> _batches;
    private readonly Counter<long> _events;
    private readonly Counter<long> _gaps;
    private readonly Counter<long> _replays;
    private readonly Counter<long> _lookups;
    private readonly Histogram<double> _lookupTime;
    private readonly Counter<long> _expired;
    private readonly Counter<long> _authFailures;

    /// <summary>Creates the instruments; <paramref name="instances"/> and <paramref name="chunks"/> are read at each scrape.</summary>
    public ControllerMetrics(Func<int> instances, Func<int> chunks)
    {
        _batches = _meter.CreateCounter<long>("lmcache_controller.event_batches", "{batch}", "KV event batches received from instances (live and replayed).");
        _events = _meter.CreateCounter<long>("lmcache_controller.events", "{event}", "KV events applied to the directory.");
        _gaps = _meter.CreateCounter<long>("lmcache_controller.sequence_gaps", "{gap}", "Sequence gaps seen on an instance's event stream (each answered by a replay).");
        _replays = _meter.CreateCounter<long>("lmcache_controller.replays", "{replay}", "Replay requests made to instances.");
        _lookups = _meter.CreateCounter<long>("lmcache_controller.lookups", "{lookup}", "Lookups answered.");
        _lookupTime = _meter.CreateHistogram<double>("lmcache_controller.lookup_time", "s", "Time to answer a lookup (hashing and directory walk, no tokenization).",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1] });
        _expired = _meter.CreateCounter<long>("lmcache_controller.instances_expired", "{instance}", "Instances that missed their heartbeats and expired.");
        _authFailures = _meter.CreateCounter<long>("lmcache_controller.auth_failures", "{request}", "Mutating calls refused for a missing or wrong token.");
        _meter.CreateObservableGauge("lmcache_controller.instances", instances, "{instance}", "Registered instances.");
        _meter.CreateObservableGauge("lmcache_controller.directory_chunks", chunks, "{chunk}", "Chunks in the directory.");
    }

    /// <summary>The meter holding the instruments.</summary>
    public Meter Meter => _meter;

    internal void Batch(int events)
    {
        _batches.Add(1);
        _events.Add(events);
    }

    internal void Gap() => _gaps.Add(1);

    internal void Replay() => _replays.Add(1);

    internal void Lookup(TimeSpan time)
    {
        _lookups.Add(1);
        _lookupTime.Record(time.TotalSeconds);
    }

    internal void Expired() => _expired.Add(1);

    internal void AuthFailure() => _authFailures.Add(1);

    /// <inheritdoc />
    public void Dispose() => _meter.Dispose();
}
