using System.Net.Http.Json;
using System.Text.Json.Nodes;

namespace LMCacheSharp.Serving.Tests;

/// <summary>POST /lookup and GET /load (<see cref="CacheEndpoints"/>), what a router asks to place a request.</summary>
public sealed class CacheEndpointsTests
{
    [Fact]
    public async Task Lookup_predicts_the_cached_tokens_the_completion_then_reports()
    {
        // In-context sharing off: what is reused comes from the cache tiers alone, which is what /lookup counts.
        await using var server = await TestServer.StartAsync(o => o.EnableInContextSharing = false);
        var document = Prompts.Long("lookup");
        var cold = await server.PostAsync("/lookup", new { prompt = document });
        Assert.Equal(0, cold["cached_tokens"]!["memory"]!.GetValue<int>());
        Assert.Equal(0, cold["cached_tokens"]!["disk"]!.GetValue<int>());
        Assert.Equal(0, cold["cached_tokens"]!["remote"]!.GetValue<int>());
        Assert.Equal("tiny", cold["model"]!.GetValue<string>());
        Assert.Equal(16, cold["chunk_size"]!.GetValue<int>());

        await server.CompleteAsync(document, 4);
        var question = document + " And a question about it?";
        var warm = await server.PostAsync("/lookup?tiers=memory", new { model = "tiny", prompt = question });
        var predicted = warm["cached_tokens"]!["memory"]!.GetValue<int>();
        Assert.Null(warm["cached_tokens"]!["disk"]);
        Assert.Null(warm["cached_tokens"]!["remote"]);
        var (_, reported, promptTokens) = await server.CompleteAsync(question, 4);
        Assert.Equal(promptTokens, warm["prompt_tokens"]!.GetValue<int>());
        Assert.True(predicted > 100, $"predicted {predicted} cached tokens of {promptTokens}");
        Assert.Equal(reported, predicted);

        // Another tenant's salt sees none of it; the load is idle.
        var salted = await server.PostAsync("/lookup", new { prompt = question, cache_salt = "tenant-b" });
        Assert.Equal(0, salted["cached_tokens"]!["memory"]!.GetValue<int>());
        Assert.Equal(0, salted["load"]!["in_flight"]!.GetValue<int>());
        Assert.Equal(0, salted["load"]!["queued"]!.GetValue<int>());
    }

    [Fact]
    public async Task Chat_messages_and_token_ids_are_tokenized_as_their_requests_are()
    {
        await using var server = await TestServer.StartAsync(o => o.EnableInContextSharing = false);
        var messages = new[] { new { role = "user", content = Prompts.Long("chat lookup") } };
        var chat = await server.PostAsync("/v1/chat/completions", new { messages, max_tokens = 2, temperature = 0 });
        var chatPrompt = chat["usage"]!["prompt_tokens"]!.GetValue<int>();
        var lookup = await server.PostAsync("/lookup", new { messages });
        Assert.Equal(chatPrompt, lookup["prompt_tokens"]!.GetValue<int>());
        Assert.True(lookup["cached_tokens"]!["memory"]!.GetValue<int>() > 0);

        var ids = await server.PostAsync("/lookup", new { prompt = new[] { 1, 2, 3, 4, 5 } });
        Assert.Equal(5, ids["prompt_tokens"]!.GetValue<int>());
    }

    [Fact]
    public async Task Bad_lookups_are_errors_in_OpenAIs_shape_and_the_next_one_succeeds()
    {
        await using var server = await TestServer.StartAsync();
        using (var badJson = await server.Http.PostAsync("/lookup", new StringContent("{\"prompt\": ", System.Text.Encoding.UTF8, "application/json")))
        {
            Assert.Equal(400, (int)badJson.StatusCode);
            Assert.NotNull((await badJson.Content.ReadFromJsonAsync<JsonObject>())!["error"]!["message"]);
        }

        var none = await server.PostAsync("/lookup", new { model = "tiny" }, 400);
        Assert.Equal("prompt", none["error"]!["param"]!.GetValue<string>());
        var model = await server.PostAsync("/lookup", new { model = "other", prompt = "x" }, 404);
        Assert.Equal("model_not_found", model["error"]!["code"]!.GetValue<string>());
        var tiers = await server.PostAsync("/lookup?tiers=gpu", new { prompt = "x" }, 400);
        Assert.Equal("tiers", tiers["error"]!["param"]!.GetValue<string>());
        var vocabulary = await server.PostAsync("/lookup", new { prompt = new[] { 1, -5 } }, 400);
        Assert.Contains("vocabulary", vocabulary["error"]!["message"]!.GetValue<string>(), StringComparison.Ordinal);
        using (var huge = await server.Http.PostAsync("/lookup", new ByteArrayContent(new byte[server.Service.MaxRequestBodyBytes + 1])))
        {
            Assert.Equal(413, (int)huge.StatusCode);
        }

        var ok = await server.PostAsync("/lookup", new { prompt = "fine" });
        Assert.True(ok["prompt_tokens"]!.GetValue<int>() > 0);
    }

    [Fact]
    public async Task Load_reports_running_and_queued_requests()
    {
        await using var server = await TestServer.StartAsync(o => o.MaxConcurrentRequests = 1);
        using var gate = new ManualResetEventSlim(true);
        server.Service.BeforeSchedulerStep = () => gate.Wait(TimeSpan.FromSeconds(30));
        var idle = await server.Http.GetFromJsonAsync<JsonObject>("/load");
        Assert.Equal(0, idle!["in_flight"]!.GetValue<int>());
        gate.Reset();
        var body = new { prompt = "busy", max_tokens = 4, temperature = 0 };
        var first = server.Http.PostAsJsonAsync("/v1/completions", body);
        var second = server.Http.PostAsJsonAsync("/v1/completions", body);
        var deadline = DateTime.UtcNow.AddSeconds(30);
        JsonObject? load;
        do
        {
            await Task.Delay(20);
            load = await server.Http.GetFromJsonAsync<JsonObject>("/load");
        }
        while (load!["queued"]!.GetValue<int>() + load["in_flight"]!.GetValue<int>() < 2 && DateTime.UtcNow < deadline);

        Assert.Equal(2, load["queued"]!.GetValue<int>() + load["in_flight"]!.GetValue<int>());
        gate.Set();
        (await first).Dispose();
        (await second).Dispose();
    }
}
