using System.Net.Http.Json;
using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace LMCacheSharp.Router.Tests;

/// <summary>The router over real <c>lmcache serve</c> instances (the tiny generated model, in process).</summary>
public sealed partial class RouterServeTests
{
    [Fact]
    public async Task Kv_aware_sends_a_shared_prefix_to_the_instance_that_holds_it()
    {
        await using var a = await ServeInstance.StartAsync();
        await using var b = await ServeInstance.StartAsync();
        await using var router = await RouterHost.StartAsync(RoutingPolicyKind.KvAware, [a.BaseUrl, b.BaseUrl], o => o.KvTieTokens = 16);
        // Each instance prefills its own document, directly (not through the router).
        var docA = TinyModel.Document("apples");
        var docB = TinyModel.Document("bananas");
        await CompleteAsync(a.Http, docA);
        await CompleteAsync(b.Http, docB);

        foreach (var (doc, holder) in new[] { (docB, b), (docA, a), (docB, b) })
        {
            var (status, instance, body) = await router.PostAsync("/v1/completions",
                new { model = "tiny", prompt = doc + " What is this about?", max_tokens = 2, temperature = 0 });
            Assert.Equal(200, status);
            Assert.Equal(holder.BaseUrl, instance);
            Assert.True(body!["usage"]!["prompt_tokens_details"]!["cached_tokens"]!.GetValue<int>() > 150, body.ToJsonString());
        }

        // The lookups' predictions match what the instances then reported (in-context sharing is off, so both come from the tiers).
        var metrics = await router.MetricsAsync();
        var predicted = RouterTests.Metric(metrics, "predicted_cached_tokens", $"instance=\"{b.BaseUrl}\"");
        Assert.True(predicted > 300);
        Assert.Equal(predicted, RouterTests.Metric(metrics, "reported_cached_tokens", $"instance=\"{b.BaseUrl}\""));
        // A prompt no instance holds goes to either, by load; the chat route works the same way.
        var (chat, _, _) = await router.PostAsync("/v1/chat/completions",
            new { messages = new[] { new { role = "user", content = "Something new." } }, max_tokens = 2, temperature = 0 });
        Assert.Equal(200, chat);
    }

    [Fact]
    public async Task A_killed_instance_is_retried_elsewhere_and_marked_unhealthy()
    {
        await using var a = await ServeInstance.StartAsync();
        await using var b = await ServeInstance.StartAsync();
        await using var router = await RouterHost.StartAsync(RoutingPolicyKind.RoundRobin, [a.BaseUrl, b.BaseUrl]);
        Assert.Equal(200, (await router.PostAsync("/v1/completions", new { prompt = "warm up", max_tokens = 2 })).Status);
        await a.StopAsync();
        for (var i = 0; i < 4; i++)
        {
            var (status, instance, _) = await router.PostAsync("/v1/completions", new { prompt = "still here?", max_tokens = 2, stream = i % 2 == 1 });
            Assert.Equal(200, status);
            Assert.Equal(b.BaseUrl, instance);
        }

        // The failed request took it out at once (the next probe is a minute away): one retry, never another.
        var health = await router.Http.GetFromJsonAsync<JsonObject>("/health");
        var dead = health!["instances"]!.AsArray().Single(i => i!["url"]!.GetValue<string>() == a.BaseUrl)!;
        Assert.False(dead["healthy"]!.GetValue<bool>());
        Assert.StartsWith("a request failed", dead["reason"]!.GetValue<string>(), StringComparison.Ordinal);
        var metrics = await router.MetricsAsync();
        Assert.Equal(0, RouterTests.Metric(metrics, "instance_healthy", $"instance=\"{a.BaseUrl}\""));
        var retries = metrics.Split('\n').Where(l => l.StartsWith("lmcachesharp_router_lmcache_router_retries{", StringComparison.Ordinal) &&
            l.Contains(a.BaseUrl, StringComparison.Ordinal)).ToList();
        Assert.Single(retries);
        Assert.EndsWith(" 1", retries[0], StringComparison.Ordinal);

        // The probe confirms it; with the other one gone too there is nobody left: 503.
        await router.Monitor.ProbeAllAsync();
        await b.StopAsync();
        await router.Monitor.ProbeAllAsync();
        Assert.Equal(503, (await router.PostAsync("/v1/completions", new { prompt = "anyone?" })).Status);
    }

    [Fact]
    public async Task A_greedy_stream_through_the_router_is_the_same_as_a_direct_one()
    {
        await using var serve = await ServeInstance.StartAsync();
        await using var router = await RouterHost.StartAsync(RoutingPolicyKind.KvAware, [serve.BaseUrl]);
        var body = new { model = "tiny", prompt = TinyModel.Document("streams"), max_tokens = 12, temperature = 0, stream = true, stream_options = new { include_usage = true } };
        await ReadStreamAsync(serve.Http, body); // warm: the two compared below both find the prompt cached
        var direct = await ReadStreamAsync(serve.Http, body);
        var routed = await ReadStreamAsync(router.Http, body);
        // Byte for byte, except what differs between any two requests: the id, the creation time and the timings.
        Assert.Equal(Normalize(direct), Normalize(routed));
        Assert.Contains("data: [DONE]", routed, StringComparison.Ordinal);
        Assert.True(Regex.Count(routed, "^data: ", RegexOptions.Multiline) > 5);
        // The usage chunk was tapped: the routed request found the prompt cached, as predicted.
        var metrics = await router.MetricsAsync();
        var reported = RouterTests.Metric(metrics, "reported_cached_tokens", $"instance=\"{serve.BaseUrl}\"");
        Assert.True(reported > 150);
        Assert.Equal(reported, RouterTests.Metric(metrics, "predicted_cached_tokens", $"instance=\"{serve.BaseUrl}\""));
    }

    [Fact]
    public async Task Bad_JSON_is_a_400_as_serve_answers_it_and_the_next_request_succeeds()
    {
        await using var serve = await ServeInstance.StartAsync();
        await using var router = await RouterHost.StartAsync(RoutingPolicyKind.KvAware, [serve.BaseUrl]);
        foreach (var client in new[] { serve.Http, router.Http })
        {
            using var response = await client.PostAsync("/v1/chat/completions", new StringContent("{\"messages\": [", Encoding.UTF8, "application/json"));
            Assert.Equal(400, (int)response.StatusCode);
            var error = (await response.Content.ReadFromJsonAsync<JsonObject>())!["error"]!;
            Assert.StartsWith("the request body is not valid JSON", error["message"]!.GetValue<string>(), StringComparison.Ordinal);
        }

        // Valid JSON with bad fields is the instance's to refuse: forwarded, and its own message comes back.
        var (status, _, body) = await router.PostAsync("/v1/completions", new { prompt = "x", max_tokens = "many" });
        Assert.Equal(400, status);
        Assert.Equal("max_tokens", body!["error"]!["param"]!.GetValue<string>());
        var (unknown, _, error404) = await router.PostAsync("/v1/completions", new { model = "gpt-9", prompt = "x" });
        Assert.Equal(404, unknown);
        Assert.Equal("model_not_found", error404!["error"]!["code"]!.GetValue<string>());
        Assert.Equal(200, (await router.PostAsync("/v1/completions", new { prompt = "fine", max_tokens = 2 })).Status);
    }

    private static async Task CompleteAsync(HttpClient http, string prompt)
    {
        using var response = await http.PostAsJsonAsync("/v1/completions", new { prompt, max_tokens = 2, temperature = 0 });
        Assert.Equal(200, (int)response.StatusCode);
    }

    private static async Task<string> ReadStreamAsync(HttpClient http, object body)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = JsonContent.Create(body) };
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(200, (int)response.StatusCode);
        return Encoding.UTF8.GetString(await response.Content.ReadAsByteArrayAsync());
    }

    private static string Normalize(string stream) =>
        Timings().Replace(Created().Replace(Id().Replace(stream, "\"id\":\"ID\""), "\"created\":0"), "\"timings\":{}");

    [GeneratedRegex("\"id\":\"cmpl-[0-9a-f]+\"")]
    private static partial Regex Id();

    [GeneratedRegex("\"created\":[0-9]+")]
    private static partial Regex Created();

    [GeneratedRegex("\"timings\":\\{[^}]*\\}")]
    private static partial Regex Timings();
}
