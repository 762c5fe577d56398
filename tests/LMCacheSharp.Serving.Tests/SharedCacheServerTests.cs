using System.Net;
using System.Net.Http.Json;
using System.Net.Sockets;
using LMCacheSharp.Server;
using LMCacheSharp.Tests.Shared;

namespace LMCacheSharp.Serving.Tests;

/// <summary>Two <c>lmcache serve</c> instances (each its own model context and memory tier) sharing one cache server.</summary>
public sealed class SharedCacheServerTests
{
    [Fact]
    public async Task A_prompt_answered_by_instance_one_is_a_cache_hit_on_instance_two()
    {
        await using var cacheServer = CacheServer.Create(new CacheServerOptions { Port = 0, CapacityBytes = 256L << 20 });
        await cacheServer.StartAsync(TestContext.Current.CancellationToken);
        await using var one = await TestServer.StartAsync(o => o.EnableInContextSharing = false, configureCache: c => c.RemoteUrl = cacheServer.Url);
        await using var two = await TestServer.StartAsync(o => o.EnableInContextSharing = false, configureCache: c => c.RemoteUrl = cacheServer.Url);
        await using var alone = await TestServer.StartAsync(o => { o.EnableCache = false; o.EnableInContextSharing = false; });
        var prompt = Prompts.Long("shared across instances") + " What do caches keep?";

        var (first, cold, promptTokens) = await one.CompleteAsync(prompt);
        Assert.Equal(0, cold);
        await one.Service.Cache!.Engine.FlushAsync(TestContext.Current.CancellationToken); // remote puts go in the background
        Assert.True(cacheServer.Store.GetStats().Items > 0, "instance one stored nothing on the cache server");

        var (second, warm, _) = await two.CompleteAsync(prompt);
        // To the token, through the cache server's child index: all but the last prompt token (its logits are computed).
        Assert.True(warm >= promptTokens - 1, $"instance two restored {warm} of {promptTokens} prompt tokens");
        Assert.Equal(first, second);
        Assert.Equal((await alone.CompleteAsync(prompt)).Text, second); // the same greedy output as without any cache
    }

    [Fact]
    public async Task A_prefill_instance_answers_one_token_once_the_prompt_is_in_the_shared_store_and_a_decode_instance_restores_it()
    {
        await using var cacheServer = CacheServer.Create(new CacheServerOptions { Port = 0, CapacityBytes = 256L << 20 });
        await cacheServer.StartAsync(TestContext.Current.CancellationToken);
        await using var prefill = await TestServer.StartAsync(o => { o.EnableInContextSharing = false; o.Role = ServeRole.Prefill; },
            configureCache: c => c.RemoteUrl = cacheServer.Url);
        await using var decode = await TestServer.StartAsync(o => { o.EnableInContextSharing = false; o.Role = ServeRole.Decode; },
            configureCache: c => c.RemoteUrl = cacheServer.Url);
        await using var alone = await TestServer.StartAsync(o => { o.EnableCache = false; o.EnableInContextSharing = false; });
        var prompt = Prompts.Long("prefilled elsewhere") + " What then?";

        // Asked for 12 tokens, the prefill instance generates one, and answers only after the KV reached the cache server
        // (no flush here: the answer itself waited for it).
        var first = await prefill.PostAsync("/v1/completions", new { prompt, max_tokens = 12, temperature = 0 });
        Assert.Equal(1, first["usage"]!["completion_tokens"]!.GetValue<int>());
        Assert.Equal("length", first["choices"]![0]!["finish_reason"]!.GetValue<string>());
        var promptTokens = first["usage"]!["prompt_tokens"]!.GetValue<int>();
        Assert.True(cacheServer.Store.GetStats().Items >= promptTokens / 16, $"{cacheServer.Store.GetStats().Items} chunks on the cache server");

        // The decode instance restores all but the last prompt token and generates what a lone instance generates.
        var (text, cached, _) = await decode.CompleteAsync(prompt);
        Assert.True(cached >= promptTokens - 1, $"the decode instance restored {cached} of {promptTokens} prompt tokens");
        Assert.Equal((await alone.CompleteAsync(prompt)).Text, text);
        Assert.Equal(promptTokens - cached, decode.Service.Metrics.TotalPrefilledTokens); // only the uncached tail

        // Roles show in /load (what the router reads).
        Assert.Equal("prefill", (await prefill.Http.GetFromJsonAsync<System.Text.Json.Nodes.JsonObject>("/load", TestContext.Current.CancellationToken))!["role"]!.GetValue<string>());
        Assert.Equal("both", (await alone.Http.GetFromJsonAsync<System.Text.Json.Nodes.JsonObject>("/load", TestContext.Current.CancellationToken))!["role"]!.GetValue<string>());
    }

    [Fact]
    public async Task A_prefill_instance_whose_shared_store_is_dead_still_answers()
    {
        // Nothing listens there: every remote write fails fast, the answer goes out, and the next request works too.
        await using var prefill = await TestServer.StartAsync(o => { o.EnableInContextSharing = false; o.Role = ServeRole.Prefill; },
            configureCache: c => { c.RemoteUrl = "lm://127.0.0.1:" + FreePort(); c.RemoteTimeoutMs = 200; });
        for (var i = 0; i < 2; i++)
        {
            var answer = await prefill.PostAsync("/v1/completions", new { prompt = Prompts.Long("no store " + i), max_tokens = 4, temperature = 0 });
            Assert.Equal(1, answer["usage"]!["completion_tokens"]!.GetValue<int>());
        }
    }

    [Fact]
    public async Task Timings_split_the_restored_tokens_into_fetched_from_the_cache_server_and_found_in_memory()
    {
        await using var cacheServer = CacheServer.Create(new CacheServerOptions { Port = 0, CapacityBytes = 256L << 20 });
        await cacheServer.StartAsync(TestContext.Current.CancellationToken);
        await using var one = await TestServer.StartAsync(o => o.EnableInContextSharing = false, configureCache: c => c.RemoteUrl = cacheServer.Url);
        await using var two = await TestServer.StartAsync(o => o.EnableInContextSharing = false, configureCache: c => c.RemoteUrl = cacheServer.Url);
        var prompt = Prompts.Long("split by tier") + " Where from?";
        var body = new { prompt, max_tokens = 2, temperature = 0 };

        var cold = (await one.PostAsync("/v1/completions", body))["timings"]!;
        Assert.Equal((0, 0), (cold["cache_n"]!.GetValue<int>(), cold["cache_lower_tier_n"]!.GetValue<int>()));
        await one.Service.Cache!.Engine.FlushAsync(TestContext.Current.CancellationToken);

        // Instance two fetches the chunks from the cache server (the token-exact tail after them is not counted).
        var remote = (await two.PostAsync("/v1/completions", body))["timings"]!;
        var restored = remote["cache_n"]!.GetValue<int>();
        var fetched = remote["cache_lower_tier_n"]!.GetValue<int>();
        Assert.True(fetched >= restored - 16 && fetched > 0 && fetched <= restored, $"cache_n {restored}, cache_lower_tier_n {fetched}");

        // Asked again, it finds them in its own memory tier.
        var local = (await two.PostAsync("/v1/completions", body))["timings"]!;
        Assert.Equal((restored, 0), (local["cache_n"]!.GetValue<int>(), local["cache_lower_tier_n"]!.GetValue<int>()));
    }

    [Fact]
    public async Task Two_instances_share_through_redis_when_a_redis_server_runs()
    {
        var url = TestServices.Url("LMCACHE_TEST_REDIS_URL");
        Assert.SkipWhen(url is null, "no redis-server: .ci/services starts one and writes /tmp/lmcache-test-services.env");
        var salt = Guid.NewGuid().ToString("N"); // keys of earlier runs in a long-lived redis never match
        await using var one = await TestServer.StartAsync(o => o.EnableInContextSharing = false, configureCache: c => c.RemoteUrl = url);
        await using var two = await TestServer.StartAsync(o => o.EnableInContextSharing = false, configureCache: c => c.RemoteUrl = url);
        var prompt = Prompts.Long("shared through redis") + " Why?";

        var (first, cold, promptTokens) = await one.CompleteAsync(prompt, salt: salt);
        Assert.Equal(0, cold);
        await one.Service.Cache!.Engine.FlushAsync(TestContext.Current.CancellationToken);
        var (second, warm, _) = await two.CompleteAsync(prompt, salt: salt);
        Assert.True(warm >= promptTokens - 1, $"instance two restored {warm} of {promptTokens} prompt tokens"); // to the token, through Redis
        Assert.Equal(first, second);
    }

    [Fact]
    public async Task A_restarted_instance_finds_its_disk_cache_warm()
    {
        var dir = Directory.CreateTempSubdirectory("lmcache-serving-disk-").FullName;
        try
        {
            void Disk(Core.Configuration.LMCacheOptions c)
            {
                c.LocalCpu = false; // every hit of the second process comes from disk
                c.LocalDisk = dir;
                c.MaxLocalDiskSize = 0.1;
            }

            var prompt = Prompts.Long("kept on disk") + " And then?";
            string first;
            int promptTokens;
            await using (var before = await TestServer.StartAsync(o => o.EnableInContextSharing = false, configureCache: Disk))
            {
                (first, var cold, promptTokens) = await before.CompleteAsync(prompt);
                Assert.Equal(0, cold);
            } // disposing flushes the background writer

            await using var after = await TestServer.StartAsync(o => o.EnableInContextSharing = false, configureCache: Disk);
            var (second, warm, _) = await after.CompleteAsync(prompt);
            Assert.True(warm >= promptTokens - 16, $"the restarted instance restored {warm} of {promptTokens} prompt tokens");
            Assert.Equal(first, second);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public async Task A_dead_cache_server_only_costs_cache_hits()
    {
        int port;
        using (var listener = new TcpListener(IPAddress.Loopback, 0))
        {
            listener.Start();
            port = ((IPEndPoint)listener.LocalEndpoint).Port;
        }

        await using var server = await TestServer.StartAsync(o => o.EnableInContextSharing = false,
            configureCache: c => { c.RemoteUrl = $"lm://127.0.0.1:{port}"; c.LocalCpu = false; c.RemoteTimeoutMs = 200; });
        var prompt = Prompts.Long("nobody listens");
        var (first, cold, _) = await server.CompleteAsync(prompt + " one");
        var (second, warm, _) = await server.CompleteAsync(prompt + " one");
        Assert.Equal(0, cold);
        Assert.Equal(0, warm);
        Assert.Equal(first, second);
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
