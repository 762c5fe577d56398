using System.Diagnostics.Metrics;

namespace LMCacheSharp.Http.Tests;

public sealed class PrometheusExporterTests
{
    private static string[] Lines(string text) => text.Split('\n');

    private static double Value(string text, string series)
    {
        var line = Lines(text).SingleOrDefault(l => l.StartsWith(series + " ", StringComparison.Ordinal));
        Assert.True(line is not null, $"no {series} in:\n{text}");
        return double.Parse(line[(series.Length + 1)..], System.Globalization.CultureInfo.InvariantCulture);
    }

    [Fact]
    public async Task Meter_and_instrument_naming_joins_both_names_and_exports_counters_as_gauges()
    {
        using var meter = new Meter("LMCacheSharp.Test");
        var counter = meter.CreateCounter<long>("lmcache_test.requests", "{request}", "Requests.");
        using var exporter = new PrometheusExporter(PrometheusNaming.MeterAndInstrument, [meter]);
        counter.Add(2, new("b", "y"), new("a", "x"));
        counter.Add(1, new("a", "x"), new("b", "y"));
        var text = await exporter.ScrapeAsync(TestContext.Current.CancellationToken);
        Assert.Contains("# HELP lmcachesharp_test_lmcache_test_requests ({request}) Requests.", Lines(text));
        Assert.Contains("# TYPE lmcachesharp_test_lmcache_test_requests gauge", Lines(text));
        Assert.Equal(3, Value(text, "lmcachesharp_test_lmcache_test_requests{a=\"x\",b=\"y\"}")); // labels sorted by name
    }

    [Fact]
    public async Task Instrument_naming_exports_counters_as_counters_named_total()
    {
        using var meter = new Meter("LMCacheSharp.Test");
        var hits = meter.CreateCounter<long>("lmcache_test.hits", description: "Hits.");
        long misses = 7;
        meter.CreateObservableCounter("lmcache_test.misses", () => misses, description: "Misses.");
        meter.CreateObservableGauge("lmcache_test.items", () => 4, description: "Items.");
        using var exporter = new PrometheusExporter(PrometheusNaming.Instrument, [meter]);
        hits.Add(3);
        var text = await exporter.ScrapeAsync(TestContext.Current.CancellationToken);
        Assert.Contains("# HELP lmcache_test_hits_total Hits.", Lines(text));
        Assert.Contains("# TYPE lmcache_test_hits_total counter", Lines(text));
        Assert.Equal(3, Value(text, "lmcache_test_hits_total"));
        Assert.Contains("# TYPE lmcache_test_misses_total counter", Lines(text));
        Assert.Equal(7, Value(text, "lmcache_test_misses_total"));
        Assert.Contains("# TYPE lmcache_test_items gauge", Lines(text));
        Assert.Equal(4, Value(text, "lmcache_test_items"));
        misses = 9;
        Assert.Equal(9, Value(await exporter.ScrapeAsync(TestContext.Current.CancellationToken), "lmcache_test_misses_total"));
    }

    [Fact]
    public async Task Each_exporter_sees_only_its_own_meters_even_when_another_has_the_same_name()
    {
        using var first = new Meter("LMCacheSharp");
        using var second = new Meter("LMCacheSharp");
        var a = first.CreateCounter<long>("lmcache.num_lookup_requests");
        var b = second.CreateCounter<long>("lmcache.num_lookup_requests");
        using var one = new PrometheusExporter(PrometheusNaming.MeterAndInstrument, [first]);
        using var two = new PrometheusExporter(PrometheusNaming.MeterAndInstrument, [second]);
        a.Add(1);
        b.Add(5);
        Assert.Equal(1, Value(await one.ScrapeAsync(TestContext.Current.CancellationToken), "lmcachesharp_lmcache_num_lookup_requests"));
        Assert.Equal(5, Value(await two.ScrapeAsync(TestContext.Current.CancellationToken), "lmcachesharp_lmcache_num_lookup_requests"));
    }

    [Fact]
    public async Task Instruments_created_after_the_exporter_are_exported_too()
    {
        using var meter = new Meter("LMCacheSharp.Test");
        using var exporter = new PrometheusExporter(PrometheusNaming.MeterAndInstrument, [meter]);
        meter.CreateObservableGauge("late", () => 1.5);
        Assert.Equal(1.5, Value(await exporter.ScrapeAsync(TestContext.Current.CancellationToken), "lmcachesharp_test_late"));
    }

    [Fact]
    public async Task A_histogram_has_the_buckets_its_instrument_advises_else_the_default_ones()
    {
        using var meter = new Meter("LMCacheSharp.Test");
        var advised = meter.CreateHistogram<double>("advised", "s", advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.5, 2] });
        var plain = meter.CreateHistogram<double>("plain", "s");
        using var exporter = new PrometheusExporter(PrometheusNaming.MeterAndInstrument, [meter]);
        advised.Record(1);
        plain.Record(1);
        var text = await exporter.ScrapeAsync(TestContext.Current.CancellationToken);
        Assert.Equal(["0.5", "2", "+Inf"], BucketBounds(text, "lmcachesharp_test_advised"));
        Assert.Equal([.. PrometheusExporter.DefaultBuckets.Select(b => b.ToString(System.Globalization.CultureInfo.InvariantCulture)), "+Inf"],
            BucketBounds(text, "lmcachesharp_test_plain"));
        Assert.Equal("0.01", BucketBounds(text, "lmcachesharp_test_plain")[0]);
        Assert.Equal(0, Value(text, "lmcachesharp_test_advised_bucket{le=\"0.5\"}"));
        Assert.Equal(1, Value(text, "lmcachesharp_test_advised_bucket{le=\"2\"}"));
        Assert.Equal(1, Value(text, "lmcachesharp_test_advised_count"));
    }

    private static string[] BucketBounds(string text, string name) =>
        [.. Lines(text).Where(l => l.StartsWith(name + "_bucket{le=\"", StringComparison.Ordinal)).Select(l => l[(name.Length + 12)..l.IndexOf('"', name.Length + 12)])];

    [Fact]
    public async Task A_series_an_observable_instrument_stops_reporting_leaves_the_output()
    {
        using var meter = new Meter("LMCacheSharp.Test");
        string[] instances = ["a", "b"];
        meter.CreateObservableGauge("healthy", () => instances.Select(i => new Measurement<int>(1, new KeyValuePair<string, object?>("instance", i))));
        using var exporter = new PrometheusExporter(PrometheusNaming.MeterAndInstrument, [meter]);
        var text = await exporter.ScrapeAsync(TestContext.Current.CancellationToken);
        Assert.Equal(1, Value(text, "lmcachesharp_test_healthy{instance=\"a\"}"));
        Assert.Equal(1, Value(text, "lmcachesharp_test_healthy{instance=\"b\"}"));
        instances = ["b"];
        text = await exporter.ScrapeAsync(TestContext.Current.CancellationToken);
        Assert.DoesNotContain(Lines(text), l => l.Contains("instance=\"a\"", StringComparison.Ordinal));
        Assert.Equal(1, Value(text, "lmcachesharp_test_healthy{instance=\"b\"}"));
    }

    [Fact]
    public async Task An_up_down_counter_adds_up_and_keeps_its_labels()
    {
        using var meter = new Meter("LMCacheSharp.Test");
        var inFlight = meter.CreateUpDownCounter<long>("in_flight");
        using var exporter = new PrometheusExporter(PrometheusNaming.MeterAndInstrument, [meter]);
        inFlight.Add(3, new KeyValuePair<string, object?>("model", "m"));
        inFlight.Add(-1, new KeyValuePair<string, object?>("model", "m"));
        Assert.Equal(2, Value(await exporter.ScrapeAsync(TestContext.Current.CancellationToken), "lmcachesharp_test_in_flight{model=\"m\"}"));
    }

    [Fact]
    public async Task A_gauge_takes_its_last_measurement()
    {
        using var meter = new Meter("LMCacheSharp.Test");
        var gauge = meter.CreateGauge<double>("queue");
        using var exporter = new PrometheusExporter(PrometheusNaming.Instrument, [meter]);
        gauge.Record(5);
        gauge.Record(2);
        var text = await exporter.ScrapeAsync(TestContext.Current.CancellationToken);
        Assert.Contains("# TYPE queue gauge", Lines(text));
        Assert.Equal(2, Value(text, "queue"));
    }

    [Fact]
    public async Task A_measurement_prometheus_refuses_is_dropped_without_throwing_into_the_caller()
    {
        using var meter = new Meter("LMCacheSharp.Test");
        var counter = meter.CreateCounter<long>("c");
        using var exporter = new PrometheusExporter(PrometheusNaming.Instrument, [meter]);
        counter.Add(2);
        counter.Add(-1); // a Prometheus counter never decreases
        Assert.Equal(2, Value(await exporter.ScrapeAsync(TestContext.Current.CancellationToken), "c_total"));
    }

    [Fact]
    public async Task The_registry_holds_the_process_metrics_and_nothing_after_dispose_is_counted()
    {
        using var meter = new Meter("LMCacheSharp.Test");
        var counter = meter.CreateCounter<long>("c");
        var exporter = new PrometheusExporter(PrometheusNaming.MeterAndInstrument, [meter]);
        counter.Add(1);
        var text = await exporter.ScrapeAsync(TestContext.Current.CancellationToken);
        Assert.Contains("# TYPE process_cpu_seconds_total counter", Lines(text));
        Assert.Contains("# TYPE dotnet_total_memory_bytes gauge", Lines(text));
        exporter.Dispose();
        counter.Add(1);
        Assert.Equal(1, Value(await exporter.ScrapeAsync(TestContext.Current.CancellationToken), "lmcachesharp_test_c"));
    }

    [Theory]
    [InlineData("LMCacheSharp.Serving_lmcache_serving.time_to_first_token", "lmcachesharp_serving_lmcache_serving_time_to_first_token")]
    [InlineData("a-b c", "a_b_c")]
    [InlineData("9lives", "_9lives")]
    [InlineData("", "")]
    public void Sanitize_lowers_and_replaces_what_Prometheus_does_not_take(string name, string expected) =>
        Assert.Equal(expected, PrometheusExporter.Sanitize(name));
}
