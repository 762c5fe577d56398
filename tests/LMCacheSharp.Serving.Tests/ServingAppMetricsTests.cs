using LMCacheSharp.Tests.Shared;

namespace LMCacheSharp.Serving.Tests;

/// <summary>serve's /metrics: the names it has always exported, this server's counts only.</summary>
public sealed class ServingAppMetricsTests
{
    private const string Cache = "lmcachesharp_lmcache_";
    private const string Serving = "lmcachesharp_serving_lmcache_serving_";

    /// <summary>Every family serve exported (after a request), with its TYPE, as dashboards know them.</summary>
    private static readonly (string Name, string Type)[] ExportedFamilies =
    [
        .. new[] { "local_cache_usage", "lookup_hit_rate", "retrieve_hit_rate", "num_lookup_requests", "num_lookup_tokens", "num_lookup_hits",
            "num_store_requests", "num_stored_tokens", "pinned_chunks", "pinned_bytes" }.Select(n => (Cache + n, "gauge")),
        .. new[] { "time_to_lookup", "time_to_store" }.Select(n => (Cache + n, "histogram")),
        .. new[] { "requests_in_flight", "prefilled_tokens", "requests", "prompt_tokens", "cached_prompt_tokens", "generation_tokens", "loop_progress_age" }
            .Select(n => (Serving + n, "gauge")),
        .. new[] { "decode_step_time", "time_to_first_token", "restore_time", "prefill_time", "queue_time", "generation_tokens_per_second" }
            .Select(n => (Serving + n, "histogram")),
    ];

    [Fact]
    public async Task Metrics_keep_their_names_and_count_only_this_server()
    {
        await using var server = await TestServer.StartAsync();
        await using var other = await TestServer.StartAsync();
        await server.CompleteAsync(Prompts.Long("metrics"), 3);
        await server.CompleteAsync(Prompts.Long("metrics"), 3);

        var metrics = new PrometheusText(await server.Http.GetStringAsync("/metrics", TestContext.Current.CancellationToken));
        metrics.AssertFamilies(ExportedFamilies);
        Assert.Equal(2, metrics[Cache + "num_lookup_requests"]);
        Assert.Equal(2, metrics[Serving + "requests{finish_reason=\"length\"}"]);
        Assert.Equal(6, metrics[Serving + "generation_tokens"]);
        Assert.Equal(0, metrics[Serving + "requests_in_flight"]);
        Assert.Equal(2, metrics[Serving + "time_to_first_token_count"]);
        Assert.True(metrics.Has(Serving + "time_to_first_token_bucket{le=\"0.005\"}")); // the buckets the instrument advises
        // Counted once: /metrics and the in-process readers see the same totals.
        var snapshot = server.Service.Cache!.Engine.Metrics.Snapshot();
        Assert.Equal(snapshot.StoredTokens, metrics[Cache + "num_stored_tokens"]);
        Assert.Equal(snapshot.LookupHitTokens, metrics[Cache + "num_lookup_hits"]);
        Assert.Equal(server.Service.Metrics.TotalPrefilledTokens, metrics[Serving + "prefilled_tokens"]);

        // The other server in this process has its own registry: none of those requests.
        var quiet = new PrometheusText(await other.Http.GetStringAsync("/metrics", TestContext.Current.CancellationToken));
        Assert.Equal(0, quiet[Cache + "num_lookup_requests"]);
        Assert.False(quiet.Has(Serving + "requests{finish_reason=\"length\"}"));
    }
}
