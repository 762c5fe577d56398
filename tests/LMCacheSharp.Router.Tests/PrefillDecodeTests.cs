using System.Net.Http.Json;
using System.Text;
using System.Text.Json.Nodes;
using LMCacheSharp.Server;
using LMCacheSharp.Serving;

namespace LMCacheSharp.Router.Tests;

/// <summary><c>router --pd</c> over real <c>serve --role prefill</c> and <c>--role decode</c> instances sharing a cache server.</summary>
public sealed class PrefillDecodeTests
{
    [Fact]
    public async Task Disaggregated_greedy_text_equals_a_colocated_instance_and_the_decode_instance_prefills_only_the_tail()
    {
        await using var pd = await PdFleet.StartAsync(RoutingPolicyKind.LeastLoaded, pdMinTokens: 0); // every request through the prefill step
        var (prefill, decode, router) = (pd.Prefill, pd.Decode, pd.Router);
        await using var colocated = await ServeInstance.StartAsync();

        foreach (var topic in new[] { "disaggregation", "prefill and decode" })
        {
            var body = new { model = "tiny", prompt = TinyModel.Document(topic) + " Why split?", max_tokens = 10, temperature = 0 };
            using var response = await router.Http.PostAsJsonAsync("/v1/completions", body, TestContext.Current.CancellationToken);
            Assert.Equal(200, (int)response.StatusCode);
            Assert.Equal(decode.BaseUrl, response.Headers.GetValues(RouterProxy.InstanceHeader).Single());
            Assert.Equal(prefill.BaseUrl, response.Headers.GetValues(RouterProxy.PrefillInstanceHeader).Single());
            var routed = (await response.Content.ReadFromJsonAsync<JsonObject>(TestContext.Current.CancellationToken))!;
            var usage = routed["usage"]!;
            var promptTokens = usage["prompt_tokens"]!.GetValue<int>();
            Assert.Equal(10, usage["completion_tokens"]!.GetValue<int>());
            Assert.True(usage["prompt_tokens_details"]!["cached_tokens"]!.GetValue<int>() >= promptTokens - 1, usage.ToJsonString());

            using var direct = await colocated.Http.PostAsJsonAsync("/v1/completions", body, TestContext.Current.CancellationToken);
            var alone = (await direct.Content.ReadFromJsonAsync<JsonObject>(TestContext.Current.CancellationToken))!;
            Assert.Equal(alone["choices"]![0]!["text"]!.GetValue<string>(), routed["choices"]![0]!["text"]!.GetValue<string>());
        }

        // A stream passes through the decode step as usual; chat works the same way.
        var stream = new { model = "tiny", prompt = TinyModel.Document("streamed") + " Go.", max_tokens = 6, temperature = 0, stream = true };
        using (var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = JsonContent.Create(stream) })
        using (var response = await router.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, TestContext.Current.CancellationToken))
        {
            Assert.Equal(200, (int)response.StatusCode);
            var text = Encoding.UTF8.GetString(await response.Content.ReadAsByteArrayAsync(TestContext.Current.CancellationToken));
            Assert.Contains("data: [DONE]", text, StringComparison.Ordinal);
        }

        var (chat, instance, _) = await router.PostAsync("/v1/chat/completions",
            new { model = "tiny", messages = new[] { new { role = "user", content = TinyModel.Document("chat") } }, max_tokens = 4, temperature = 0 });
        Assert.Equal((200, decode.BaseUrl), (chat, instance));
        var metrics = await router.MetricsAsync();
        Assert.Equal(4, RouterTests.Metric(metrics, "pd_prefills", $"instance=\"{prefill.BaseUrl}\",outcome=\"ok\""));
    }

    [Fact]
    public async Task A_dead_prefill_instance_leaves_the_prefill_to_the_decode_instance()
    {
        await using var pd = await PdFleet.StartAsync(RoutingPolicyKind.RoundRobin, pdMinTokens: 0);
        var (prefill, decode, router) = (pd.Prefill, pd.Decode, pd.Router);
        await prefill.StopAsync(); // still healthy for the router until a probe: the prefill step fails on the connection

        var (status, instance, body) = await router.PostAsync("/v1/completions", new { model = "tiny", prompt = TinyModel.Document("alone"), max_tokens = 3, temperature = 0 });
        Assert.Equal((200, decode.BaseUrl), (status, instance));
        Assert.Equal(0, body!["usage"]!["prompt_tokens_details"]!["cached_tokens"]!.GetValue<int>()); // prefilled by the decode instance itself
        Assert.Equal(1, RouterTests.Metric(await router.MetricsAsync(), "pd_prefills", $"instance=\"{prefill.BaseUrl}\",outcome=\"error\""));

        // With only prefill instances left, nobody can generate: 503, named.
        await router.Monitor.ProbeAllAsync();
        await decode.StopAsync();
        await router.Monitor.ProbeAllAsync();
        Assert.Equal(503, (await router.PostAsync("/v1/completions", new { prompt = "anyone?" })).Status);
    }

    [Fact]
    public async Task A_prompt_the_decode_instance_would_prefill_less_than_pd_min_tokens_of_skips_the_prefill_step()
    {
        await using var pd = await PdFleet.StartAsync(RoutingPolicyKind.LeastLoaded, pdMinTokens: 100);
        var (prefill, decode, router) = (pd.Prefill, pd.Decode, pd.Router);

        // A short prompt (under 100 tokens) is prefilled where it decodes.
        var shortBody = new { model = "tiny", prompt = "A short question?", max_tokens = 3, temperature = 0 };
        using (var response = await router.Http.PostAsJsonAsync("/v1/completions", shortBody, TestContext.Current.CancellationToken))
        {
            Assert.Equal(200, (int)response.StatusCode);
            Assert.False(response.Headers.Contains(RouterProxy.PrefillInstanceHeader));
        }

        // A long one (~200 tokens) goes through the prefill instance; asked again, the decode instance holds it: local.
        var longBody = new { model = "tiny", prompt = TinyModel.Document("conditional"), max_tokens = 3, temperature = 0 };
        foreach (var expectPrefill in new[] { true, false })
        {
            using var response = await router.Http.PostAsJsonAsync("/v1/completions", longBody, TestContext.Current.CancellationToken);
            Assert.Equal(200, (int)response.StatusCode);
            Assert.Equal(expectPrefill, response.Headers.Contains(RouterProxy.PrefillInstanceHeader));
        }

        var metrics = await router.MetricsAsync();
        Assert.Equal(2, RouterTests.Metric(metrics, "pd_prefills", $"instance=\"{decode.BaseUrl}\",outcome=\"local\""));
        Assert.Equal(1, RouterTests.Metric(metrics, "pd_prefills", $"instance=\"{prefill.BaseUrl}\",outcome=\"ok\""));
    }

    /// <summary>A cache server, a prefill and a decode instance on it, and a router --pd in front of both (probed once).</summary>
    private sealed class PdFleet : IAsyncDisposable
    {
        private CacheServer _store = null!;

        public ServeInstance Prefill { get; private set; } = null!;

        public ServeInstance Decode { get; private set; } = null!;

        public RouterHost Router { get; private set; } = null!;

        public static async Task<PdFleet> StartAsync(RoutingPolicyKind policy, int pdMinTokens)
        {
            var fleet = new PdFleet { _store = CacheServer.Create(new CacheServerOptions { Port = 0, CapacityBytes = 256L << 20 }) };
            await fleet._store.StartAsync(TestContext.Current.CancellationToken);
            fleet.Prefill = await ServeInstance.StartAsync(role: ServeRole.Prefill, remoteUrl: fleet._store.Url);
            fleet.Decode = await ServeInstance.StartAsync(role: ServeRole.Decode, remoteUrl: fleet._store.Url);
            fleet.Router = await RouterHost.StartAsync(policy, [fleet.Prefill.BaseUrl, fleet.Decode.BaseUrl], o =>
            {
                o.PrefillDecode = true;
                o.PdMinTokens = pdMinTokens;
            });
            await fleet.Router.Monitor.ProbeAllAsync();
            return fleet;
        }

        public async ValueTask DisposeAsync()
        {
            await Router.DisposeAsync();
            await Decode.DisposeAsync();
            await Prefill.DisposeAsync();
            await _store.DisposeAsync();
        }
    }
}
