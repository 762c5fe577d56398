using System.Diagnostics.Metrics;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Engine;
using LMCacheSharp.Core.Metrics;

namespace LMCacheSharp.Core.Tests;

public class CacheMetricsTests
{
    [Fact]
    public async Task Engine_calls_are_published_on_the_meter_with_lmcache_names()
    {
        using var metrics = new CacheMetrics();
        var seen = new Dictionary<string, double>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter == metrics.Meter)
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<long>((i, v, _, _) => { lock (seen) { seen[i.Name] = seen.GetValueOrDefault(i.Name) + v; } });
        listener.SetMeasurementEventCallback<double>((i, v, _, _) => { lock (seen) { seen[i.Name] = seen.GetValueOrDefault(i.Name) + v; } });
        listener.Start();

        await using (var engine = CacheEngine.Create(new LMCacheOptions { ChunkSize = 16, MaxLocalCpuSize = 0.01, TokenExactReuse = false }, TestData.Namespace(), metrics))
        {
            var tokens = TestData.Tokens(40, 1);
            await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens));
            await engine.LookupAsync(tokens);
            await engine.RetrieveAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens));
            listener.RecordObservableInstruments();
        }

        Assert.Equal(1, seen["lmcache.num_lookup_requests"]);
        Assert.Equal(40, seen["lmcache.num_lookup_tokens"]);
        Assert.Equal(32, seen["lmcache.num_lookup_hits"]);
        Assert.Equal(32, seen["lmcache.num_stored_tokens"]);
        Assert.Equal(32, seen["lmcache.num_hit_tokens"]);
        Assert.Equal(40, seen["lmcache.num_requested_tokens"]);
        Assert.True(seen["lmcache.local_cache_usage"] > 0);
        Assert.Equal(0.8, seen["lmcache.lookup_hit_rate"], 6);
        Assert.True(seen.ContainsKey("lmcache.time_to_retrieve"));

        var snapshot = metrics.Snapshot();
        Assert.Equal(0.8, snapshot.RetrieveHitRate, 6);
        Assert.Equal(1, snapshot.StoreRequests);
    }
}
