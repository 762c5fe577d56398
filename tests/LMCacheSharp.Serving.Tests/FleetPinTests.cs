using System.Net.Http.Json;
using System.Text.Json.Nodes;
using LMCacheSharp.Server;
using LMCacheSharp.Serving.Fleet;
using LMCacheSharp.Tests.Shared;
using Microsoft.Extensions.DependencyInjection;

namespace LMCacheSharp.Serving.Tests;

/// <summary>serve's <c>POST /lmcache/pin</c> and <c>/lmcache/unpin</c>: a prefix kept in memory, in the shared store, or both.</summary>
public sealed class FleetPinTests
{
    private const string Token = "fleet";

    private static Task<TestServer> StartAsync(Action<Core.Configuration.LMCacheOptions>? configureCache = null) =>
        TestServer.StartAsync(o => o.EnableInContextSharing = false, configureCache: configureCache,
            map: app => app.MapFleet(app.Services.GetRequiredService<Inference.InferenceService>(), Token));

    private static async Task<(int Status, JsonObject Body)> PostAsync(TestServer server, string path, object body, string? token = Token)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = JsonContent.Create(body) };
        if (token is not null)
        {
            request.Headers.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", token);
        }

        using var response = await server.Http.SendAsync(request, TestContext.Current.CancellationToken);
        return ((int)response.StatusCode, JsonNode.Parse(await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken))!.AsObject());
    }

    [Fact]
    public async Task A_prefix_pinned_in_memory_and_the_shared_store_is_counted_reported_and_unpinned()
    {
        await using var cacheServer = CacheServer.Create(new CacheServerOptions { Port = 0, CapacityBytes = 256L << 20 });
        await cacheServer.StartAsync(TestContext.Current.CancellationToken);
        await using var server = await StartAsync(c => c.RemoteUrl = cacheServer.Url);
        var prompt = Prompts.Long("pinned prefixes") + " Which chunks stay?";
        var (_, _, promptTokens) = await server.CompleteAsync(prompt);
        await server.Service.Cache!.Engine.FlushAsync(TestContext.Current.CancellationToken);
        var whole = server.Service.TokenizeCompletion(prompt).Length / 16;
        Assert.True(whole >= 2, $"{whole} whole chunks");

        Assert.Equal(401, (await PostAsync(server, "/lmcache/pin", new { prompt }, token: null)).Status);
        var (status, pin) = await PostAsync(server, "/lmcache/pin", new { prompt, tiers = new[] { "memory", "remote" } });
        Assert.True(status == 200, pin.ToJsonString());
        Assert.Equal(promptTokens, pin["prompt_tokens"]!.GetValue<int>());
        Assert.Equal(whole, pin["memory"]!["pinned_chunks"]!.GetValue<int>());
        Assert.Equal(whole * 16, pin["memory"]!["pinned_tokens"]!.GetValue<int>());
        Assert.Equal(whole, pin["remote"]!["pinned_chunks"]!.GetValue<int>());
        Assert.Equal(whole, cacheServer.Store.GetStats().PinnedItems);

        // Counted: a second pin needs a second unpin.
        Assert.Equal(200, (await PostAsync(server, "/lmcache/pin", new { prompt })).Status);
        var metrics = new PrometheusText(await server.Http.GetStringAsync("/metrics", TestContext.Current.CancellationToken));
        Assert.Equal(whole, metrics["lmcachesharp_lmcache_pinned_chunks"]);
        Assert.True(metrics["lmcachesharp_lmcache_pinned_bytes"] > 0);
        var (_, first) = await PostAsync(server, "/lmcache/unpin", new { prompt, tier = "memory" });
        Assert.Equal((whole, whole * 16), (first["memory"]!["unpinned_chunks"]!.GetValue<int>(), first["memory"]!["pinned_tokens"]!.GetValue<int>()));
        var (_, second) = await PostAsync(server, "/lmcache/unpin", new { prompt, tiers = new[] { "memory", "remote" } });
        Assert.Equal((whole, 0), (second["memory"]!["unpinned_chunks"]!.GetValue<int>(), second["memory"]!["pinned_tokens"]!.GetValue<int>()));
        Assert.Equal(whole, second["remote"]!["unpinned_chunks"]!.GetValue<int>());
        Assert.Equal(0, cacheServer.Store.GetStats().PinnedItems);
        Assert.Equal(0, server.Service.Cache.Engine.Metrics.Pinned.Chunks);

        // A salt is another prefix: nothing of it is cached, nothing pinned.
        var (_, salted) = await PostAsync(server, "/lmcache/pin", new { prompt, cache_salt = "tenant-a" });
        Assert.Equal(0, salted["memory"]!["pinned_chunks"]!.GetValue<int>());
    }

    [Fact]
    public async Task A_pin_over_the_limit_is_507_and_pins_nothing_and_bad_tiers_are_400()
    {
        await using var server = await StartAsync(c => c.MaxPinnedBytes = 1);
        var prompt = Prompts.Long("over the limit");
        await server.CompleteAsync(prompt);
        var (status, error) = await PostAsync(server, "/lmcache/pin", new { prompt });
        Assert.Equal(507, status);
        Assert.Equal("pin_limit", error["error"]!["code"]!.GetValue<string>());
        Assert.Contains("max_pinned_size", error["error"]!["message"]!.GetValue<string>(), StringComparison.Ordinal);
        Assert.Equal(0, server.Service.Cache!.Engine.Metrics.Pinned.Chunks);

        foreach (var body in new object[]
        {
            new { prompt, tier = "remote" },             // no remote tier
            new { prompt, tier = "gpu" },                // no such tier
            new { prompt, tiers = Array.Empty<string>() },
            new { tier = "memory" },                     // no prefix
        })
        {
            var (bad, answer) = await PostAsync(server, "/lmcache/pin", body);
            Assert.True(bad == 400, answer.ToJsonString());
        }
    }

    [Fact]
    public async Task Pinning_on_a_redis_remote_is_refused_naming_the_tier_and_pins_nothing_in_memory()
    {
        // Nothing needs to listen there: the refusal comes before any call.
        await using var server = await StartAsync(c => { c.RemoteUrl = "redis://127.0.0.1:1"; c.RemoteTimeoutMs = 200; });
        var prompt = Prompts.Long("redis cannot pin");
        await server.CompleteAsync(prompt);
        var (status, error) = await PostAsync(server, "/lmcache/pin", new { prompt, tiers = new[] { "memory", "remote" } });
        Assert.Equal(400, status);
        Assert.Equal("pin_unsupported", error["error"]!["code"]!.GetValue<string>());
        Assert.Contains("redis://127.0.0.1:1", error["error"]!["message"]!.GetValue<string>(), StringComparison.Ordinal);
        Assert.Contains("Redis has no per-key exemption", error["error"]!["message"]!.GetValue<string>(), StringComparison.Ordinal);
        Assert.Equal(0, server.Service.Cache!.Engine.Metrics.Pinned.Chunks);
    }
}
