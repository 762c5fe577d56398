using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using System.Text;
using Prometheus;

namespace LMCacheSharp.Http;

/// <summary>
/// Exports the instruments of a host's own meters (<see cref="System.Diagnostics.Metrics"/>) into a Prometheus registry of
/// its own: the one way every LMCacheSharp host (lmcache serve, the router, the controller, the cache server) serves
/// <c>/metrics</c>. Nothing is process-wide: two hosts in one process export only their own meters (chosen by instance, not
/// by name), and prometheus-net's global registry is never used.
/// </summary>
/// <remarks>
/// <para>Names and types follow <see cref="PrometheusNaming"/>. Labels are the measurement's tags, sorted by name. A counter
/// or up-down counter adds each measurement; an observable instrument is read at each scrape, and a series it no longer
/// reports (an instance the router dropped) leaves the output. A histogram has the bucket boundaries its instrument advises
/// (<see cref="InstrumentAdvice{T}.HistogramBucketBoundaries"/>), else <see cref="DefaultBuckets"/>. HELP is the
/// instrument's description, after its unit in parentheses when it has one.</para>
/// <para>The registry also holds prometheus-net's process metrics (<c>process_*</c>, <c>dotnet_*</c>), as its global
/// registry did (not its debug metrics, <c>prometheus_net_*</c>: prometheus-net offers those on its global registry only).</para>
/// </remarks>
public sealed class PrometheusExporter : IDisposable
{
    /// <summary>
    /// Bucket boundaries of a histogram whose instrument advises none: 0.01 doubling 25 times (to 167772.16), those of
    /// prometheus-net's MeterAdapter, which exported these histograms before.
    /// </summary>
    public static IReadOnlyList<double> DefaultBuckets { get; } = Histogram.ExponentialBuckets(0.01, 2, 25);

    private readonly PrometheusNaming _naming;
    private readonly HashSet<Meter> _meters;
    private readonly MetricFactory _factory;
    private readonly MeterListener _listener = new();
    private readonly Lock _observeLock = new();
    private readonly List<Export> _observables = []; // under _observeLock
    private int _round; // under _observeLock
    private bool _disposed; // under _observeLock

    /// <summary>Starts listening to the instruments of <paramref name="meters"/> (those created later too).</summary>
    /// <param name="naming">How the instruments are named and typed.</param>
    /// <param name="meters">The host's meters; no other meter is exported, whatever its name.</param>
    public PrometheusExporter(PrometheusNaming naming, IEnumerable<Meter> meters)
    {
        ArgumentNullException.ThrowIfNull(meters);
        _naming = naming;
        _meters = [.. meters];
        Registry = Metrics.NewCustomRegistry();
        DotNetStats.Register(Registry);
        _factory = Metrics.WithCustomRegistry(Registry);
        _listener.InstrumentPublished = OnInstrumentPublished;
        _listener.MeasurementsCompleted = OnMeasurementsCompleted;
        _listener.SetMeasurementEventCallback<byte>((_, v, tags, state) => Record(state, v, tags));
        _listener.SetMeasurementEventCallback<short>((_, v, tags, state) => Record(state, v, tags));
        _listener.SetMeasurementEventCallback<int>((_, v, tags, state) => Record(state, v, tags));
        _listener.SetMeasurementEventCallback<long>((_, v, tags, state) => Record(state, v, tags));
        _listener.SetMeasurementEventCallback<float>((_, v, tags, state) => Record(state, v, tags));
        _listener.SetMeasurementEventCallback<double>((_, v, tags, state) => Record(state, v, tags));
        _listener.SetMeasurementEventCallback<decimal>((_, v, tags, state) => Record(state, (double)v, tags));
        _listener.Start();
        Registry.AddBeforeCollectCallback(Observe);
    }

    /// <summary>The registry <c>/metrics</c> serves (see <see cref="PrometheusMetricsEndpoint.MapPrometheusMetrics"/>).</summary>
    public CollectorRegistry Registry { get; }

    /// <summary>The metrics as Prometheus text, as <c>GET /metrics</c> answers them.</summary>
    public async Task<string> ScrapeAsync(CancellationToken cancellationToken = default)
    {
        using var stream = new MemoryStream();
        await Registry.CollectAndExportAsTextAsync(stream, cancellationToken).ConfigureAwait(false);
        return Encoding.UTF8.GetString(stream.GetBuffer(), 0, (int)stream.Length);
    }

    /// <summary>The Prometheus form of a name: lower case, every character but a-z, 0-9 and <c>_</c> replaced by <c>_</c>.</summary>
    public static string Sanitize(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        return string.Create(name.Length + (name.Length > 0 && char.IsAsciiDigit(name[0]) ? 1 : 0), name, static (span, name) =>
        {
            var offset = span.Length - name.Length;
            if (offset == 1)
            {
                span[0] = '_';
            }

            for (var i = 0; i < name.Length; i++)
            {
                var c = char.ToLowerInvariant(name[i]);
                span[offset + i] = char.IsAsciiLetterLower(c) || char.IsAsciiDigit(c) || c == '_' ? c : '_';
            }
        });
    }

    /// <inheritdoc />
    public void Dispose()
    {
        lock (_observeLock)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
        }

        _listener.Dispose();
    }

    private void OnInstrumentPublished(Instrument instrument, MeterListener listener)
    {
        if (!_meters.Contains(instrument.Meter) || KindOf(instrument) is not { } kind)
        {
            return;
        }

        var name = _naming == PrometheusNaming.MeterAndInstrument ? Sanitize(instrument.Meter.Name + "_" + instrument.Name) : Sanitize(instrument.Name);
        if (kind is ExportKind.CounterAdd or ExportKind.CounterSet && !name.EndsWith("_total", StringComparison.Ordinal))
        {
            name += "_total";
        }

        var help = string.IsNullOrEmpty(instrument.Unit) ? instrument.Description ?? "" : $"({instrument.Unit}) {instrument.Description}";
        var export = new Export(this, name, help, kind, kind == ExportKind.Histogram ? BucketsOf(instrument) : null, instrument.IsObservable);
        if (instrument.IsObservable)
        {
            lock (_observeLock)
            {
                _observables.Add(export);
            }
        }

        listener.EnableMeasurementEvents(instrument, export);
    }

    private void OnMeasurementsCompleted(Instrument instrument, object? state)
    {
        if (state is Export { Observable: true } export)
        {
            lock (_observeLock)
            {
                // A disposed meter's observable instruments report nothing more: their series go at once.
                _observables.Remove(export);
                export.RemoveSeriesNotSeenIn(-1);
            }
        }
    }

    /// <summary>Before each scrape: reads every observable instrument, then drops the series none of them reported.</summary>
    private void Observe()
    {
        lock (_observeLock)
        {
            if (_disposed)
            {
                return;
            }

            _round++;
            _listener.RecordObservableInstruments(); // Record runs on this thread, under the lock
            foreach (var export in _observables)
            {
                export.RemoveSeriesNotSeenIn(_round);
            }
        }
    }

    private static void Record(object? state, double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
    {
        if (state is not Export export)
        {
            return;
        }

        try
        {
            export.Record(value, tags);
        }
        catch (Exception)
        {
            // A measurement Prometheus cannot take (a negative counter increment, say) is dropped: the exporter never throws
            // into the code that measures.
        }
    }

    private ExportKind? KindOf(Instrument instrument)
    {
        if (!instrument.GetType().IsGenericType)
        {
            return null;
        }

        var type = instrument.GetType().GetGenericTypeDefinition();
        var counters = _naming == PrometheusNaming.Instrument;
        if (type == typeof(Counter<>))
        {
            return counters ? ExportKind.CounterAdd : ExportKind.GaugeAdd;
        }

        if (type == typeof(ObservableCounter<>))
        {
            return counters ? ExportKind.CounterSet : ExportKind.GaugeSet;
        }

        if (type == typeof(UpDownCounter<>))
        {
            return ExportKind.GaugeAdd;
        }

        if (type == typeof(Histogram<>))
        {
            return ExportKind.Histogram;
        }

        return type == typeof(ObservableGauge<>) || type == typeof(ObservableUpDownCounter<>) || type == typeof(Gauge<>) ? ExportKind.GaugeSet : null;
    }

    private static double[] BucketsOf(Instrument instrument) => instrument switch
    {
        Histogram<double> { Advice.HistogramBucketBoundaries: { Count: > 0 } b } => [.. b],
        Histogram<float> { Advice.HistogramBucketBoundaries: { Count: > 0 } b } => [.. b.Select(x => (double)x)],
        Histogram<long> { Advice.HistogramBucketBoundaries: { Count: > 0 } b } => [.. b.Select(x => (double)x)],
        Histogram<int> { Advice.HistogramBucketBoundaries: { Count: > 0 } b } => [.. b.Select(x => (double)x)],
        _ => [.. DefaultBuckets],
    };

    private enum ExportKind
    {
        /// <summary>A gauge each measurement adds to (counters under <see cref="PrometheusNaming.MeterAndInstrument"/>, up-down counters).</summary>
        GaugeAdd,

        /// <summary>A gauge set to each measurement (gauges, observable instruments but counters under <see cref="PrometheusNaming.Instrument"/>).</summary>
        GaugeSet,

        /// <summary>A counter each measurement adds to.</summary>
        CounterAdd,

        /// <summary>A counter raised to each measurement (observable counters).</summary>
        CounterSet,

        /// <summary>A histogram observing each measurement.</summary>
        Histogram,
    }

    /// <summary>One instrument's Prometheus metric: one collector per set of label names, their series.</summary>
    private sealed class Export(PrometheusExporter owner, string name, string help, ExportKind kind, double[]? buckets, bool observable)
    {
        private readonly ConcurrentDictionary<string, Collector> _collectors = new(StringComparer.Ordinal);
        private readonly Dictionary<string, ObservedSeries> _observed = new(StringComparer.Ordinal); // observable only, under _observeLock

        /// <summary>Read at each scrape (on the scraping thread, under <c>_observeLock</c>), so its series are tracked.</summary>
        public bool Observable => observable;

        public void Record(double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            var (names, values) = Labels(tags);
            var collector = _collectors.GetOrAdd(names.Length == 0 ? "" : string.Join(',', names), static (_, arg) => arg.Export.Create(arg.Names), (Export: this, Names: names));
            switch (collector)
            {
                case Gauge gauge:
                    IGauge g = values.Length == 0 ? gauge : gauge.WithLabels(values);
                    if (kind == ExportKind.GaugeAdd)
                    {
                        g.Inc(value);
                    }
                    else
                    {
                        g.Set(value);
                    }

                    break;
                case Counter counter:
                    ICounter c = values.Length == 0 ? counter : counter.WithLabels(values);
                    if (kind == ExportKind.CounterAdd)
                    {
                        c.Inc(value);
                    }
                    else
                    {
                        c.IncTo(value);
                    }

                    break;
                case Histogram histogram:
                    (values.Length == 0 ? (IHistogram)histogram : histogram.WithLabels(values)).Observe(value);
                    break;
            }

            if (observable)
            {
                var key = string.Join(',', names) + "\n" + string.Join('\n', values);
                _observed[key] = new ObservedSeries(collector, values, owner._round);
            }
        }

        /// <summary>Observable instruments: removes the series not reported in <paramref name="round"/>.</summary>
        public void RemoveSeriesNotSeenIn(int round)
        {
            List<string>? gone = null;
            foreach (var (key, series) in _observed)
            {
                if (series.Round != round)
                {
                    (gone ??= []).Add(key);
                    switch (series.Collector)
                    {
                        case Gauge gauge when series.Values.Length == 0:
                            gauge.Unpublish();
                            break;
                        case Gauge gauge:
                            gauge.RemoveLabelled(series.Values);
                            break;
                        case Counter counter when series.Values.Length == 0:
                            counter.Unpublish();
                            break;
                        case Counter counter:
                            counter.RemoveLabelled(series.Values);
                            break;
                    }
                }
            }

            foreach (var key in gone ?? [])
            {
                _observed.Remove(key);
            }
        }

        private Collector Create(string[] labelNames) => kind switch
        {
            ExportKind.GaugeAdd or ExportKind.GaugeSet => owner._factory.CreateGauge(name, help, labelNames),
            ExportKind.CounterAdd or ExportKind.CounterSet => owner._factory.CreateCounter(name, help, labelNames),
            _ => owner._factory.CreateHistogram(name, help, labelNames, new HistogramConfiguration { Buckets = buckets }),
        };

        private static (string[] Names, string[] Values) Labels(ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            if (tags.IsEmpty)
            {
                return ([], []);
            }

            var sorted = tags.ToArray();
            Array.Sort(sorted, static (a, b) => string.CompareOrdinal(a.Key, b.Key));
            var names = new string[sorted.Length];
            var values = new string[sorted.Length];
            for (var i = 0; i < sorted.Length; i++)
            {
                names[i] = Sanitize(sorted[i].Key);
                values[i] = Convert.ToString(sorted[i].Value, System.Globalization.CultureInfo.InvariantCulture) ?? "";
            }

            return (names, values);
        }
    }

    private readonly record struct ObservedSeries(Collector Collector, string[] Values, int Round);
}
