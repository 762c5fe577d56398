using System.ClientModel;
using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using Microsoft.Extensions.AI;
using OpenAI;
using OpenAI.Chat;

namespace LMCacheSharp.Serving.Tests;

public sealed class OpenAiEndpointsTests : IAsyncLifetime
{
    private TestServer _server = null!;

    public async ValueTask InitializeAsync() => _server = await TestServer.StartAsync();

    public async ValueTask DisposeAsync() => await _server.DisposeAsync();

    private OpenAIClient Client() => new(new ApiKeyCredential("unused"), new OpenAIClientOptions { Endpoint = new Uri(_server.BaseUrl + "/v1") });

    [Fact]
    public async Task Models_lists_the_served_model()
    {
        var json = JsonNode.Parse(await _server.Http.GetStringAsync("/v1/models"))!;
        Assert.Equal("tiny", json["data"]![0]!["id"]!.GetValue<string>());
        Assert.Equal("ok", JsonNode.Parse(await _server.Http.GetStringAsync("/health"))!["status"]!.GetValue<string>());
    }

    [Fact]
    public async Task Chat_with_the_official_client_streaming_and_not_gives_the_same_greedy_text()
    {
        var chat = Client().GetChatClient("tiny");
        var messages = new List<OpenAI.Chat.ChatMessage> { new SystemChatMessage("You are terse."), new UserChatMessage("Tell me about caches.") };
        var options = new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 10 };
        ChatCompletion completion = await chat.CompleteChatAsync(messages, options);
        Assert.Equal(OpenAI.Chat.ChatFinishReason.Length, completion.FinishReason);
        Assert.Equal(10, completion.Usage.OutputTokenCount);
        Assert.True(completion.Usage.InputTokenCount > 5);

        var streamed = new StringBuilder();
        var updates = 0;
        await foreach (var update in chat.CompleteChatStreamingAsync(messages, options))
        {
            foreach (var part in update.ContentUpdate)
            {
                streamed.Append(part.Text);
            }

            updates++;
        }

        Assert.True(updates >= 2);
        Assert.Equal(completion.Content[0].Text, streamed.ToString());
    }

    [Fact]
    public async Task Completion_streams_server_sent_events_ending_in_done()
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
        {
            Content = JsonContent("""{"prompt":"Once upon a time","max_tokens":6,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}"""),
        };
        using var response = await _server.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType!.MediaType);
        var body = await response.Content.ReadAsStringAsync();
        var events = body.Split("\n\n", StringSplitOptions.RemoveEmptyEntries).Select(e => e.Trim()).ToList();
        Assert.All(events, e => Assert.StartsWith("data: ", e, StringComparison.Ordinal));
        Assert.Equal("data: [DONE]", events[^1]);
        var usage = JsonNode.Parse(events[^2]["data: ".Length..])!["usage"]!;
        Assert.Equal(6, usage["completion_tokens"]!.GetValue<int>());
        var text = string.Concat(events.Take(events.Count - 2).Select(e => JsonNode.Parse(e["data: ".Length..])!["choices"]![0]!["text"]!.GetValue<string>()));
        var (plain, _, _) = await _server.CompleteAsync("Once upon a time", 6);
        Assert.Equal(plain, text);
    }

    [Theory]
    [InlineData("/v1/completions", "{bad json", "not valid JSON", null)]
    [InlineData("/v1/completions", """{"prompt":"x","model":"gpt-4"}""", "does not exist", "model")]
    [InlineData("/v1/completions", """{"prompt":"x","temperature":5}""", "temperature", "temperature")]
    [InlineData("/v1/completions", """{"prompt":"x","max_tokens":0}""", "max_tokens", "max_tokens")]
    [InlineData("/v1/completions", """{"prompt":"x","max_tokens":100000}""", "context", "max_tokens")]
    [InlineData("/v1/completions", """{"max_tokens":3}""", "'prompt' is required", "prompt")]
    [InlineData("/v1/completions", """{"prompt":"x","stop":[1,2]}""", "'stop'", "stop")]
    [InlineData("/v1/completions", """{"prompt":"x","n":9}""", "'n'", "n")]
    [InlineData("/v1/chat/completions", """{"messages":[]}""", "must not be empty", "messages")]
    [InlineData("/v1/chat/completions", """{"messages":[{"role":"wizard","content":"x"}]}""", "role", "messages[0].role")]
    [InlineData("/v1/chat/completions", """[1,2,3]""", "JSON object", null)]
    public async Task Bad_requests_get_400_in_openai_error_shape(string path, string body, string message, string? param)
    {
        using var response = await _server.Http.PostAsync(path, JsonContent(body));
        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        var error = JsonNode.Parse(await response.Content.ReadAsStringAsync())!["error"]!;
        Assert.Contains(message, error["message"]!.GetValue<string>(), StringComparison.Ordinal);
        Assert.Equal(param, error["param"]?.GetValue<string>());
        Assert.NotNull(error["type"]);

        // The server is still fine.
        var (text, _, _) = await _server.CompleteAsync("still alive", 2);
        Assert.NotNull(text);
    }

    [Fact]
    public async Task A_prompt_far_beyond_the_context_is_rejected_before_any_work()
    {
        var huge = string.Concat(Enumerable.Repeat("word ", 5000));
        var json = await _server.PostAsync("/v1/completions", new { prompt = huge, max_tokens = 1 }, 400);
        Assert.Equal("context_length_exceeded", json["error"]!["code"]!.GetValue<string>());
    }

    [Fact]
    public async Task Stop_strings_end_generation_and_are_not_returned()
    {
        var (full, _, _) = await _server.CompleteAsync("The cache said", 12);
        Assert.True(full.Length > 4, full);
        var stop = full.Substring(2, 2);
        var json = await _server.PostAsync("/v1/completions", new { prompt = "The cache said", max_tokens = 12, temperature = 0, stop });
        var text = json["choices"]![0]!["text"]!.GetValue<string>();
        Assert.Equal(full[..full.IndexOf(stop, StringComparison.Ordinal)], text);
        Assert.Equal("stop", json["choices"]![0]!["finish_reason"]!.GetValue<string>());
    }

    [Fact]
    public async Task Metrics_endpoint_exposes_cache_and_request_counters()
    {
        await _server.CompleteAsync(Prompts.Long("metrics"), 3);
        await _server.CompleteAsync(Prompts.Long("metrics"), 3);
        var text = await _server.Http.GetStringAsync("/metrics");
        Assert.Contains("lmcache_num_lookup_requests", text, StringComparison.Ordinal);
        Assert.Contains("lmcache_num_stored_tokens", text, StringComparison.Ordinal);
        Assert.Contains("lmcache_serving_time_to_first_token_bucket", text, StringComparison.Ordinal);
        Assert.Contains("lmcache_serving_requests_in_flight", text, StringComparison.Ordinal);
        Assert.Contains("lmcache_serving_generation_tokens", text, StringComparison.Ordinal);
    }

    [Fact]
    public async Task IChatClient_answers_in_process_like_the_http_api()
    {
        using var client = new LMCacheChatClient(_server.Service);
        var response = await client.GetResponseAsync([new(ChatRole.User, "Tell me about caches.")],
            new ChatOptions { Temperature = 0, MaxOutputTokens = 8 });
        Assert.Equal(Microsoft.Extensions.AI.ChatFinishReason.Length, response.FinishReason);
        Assert.Equal(8, response.Usage!.OutputTokenCount);

        var http = await _server.PostAsync("/v1/chat/completions", new
        {
            messages = new[] { new { role = "user", content = "Tell me about caches." } },
            max_tokens = 8,
            temperature = 0,
        });
        Assert.Equal(http["choices"]![0]!["message"]!["content"]!.GetValue<string>(), response.Text);

        var streamed = new StringBuilder();
        await foreach (var update in client.GetStreamingResponseAsync([new(ChatRole.User, "Tell me about caches.")], new ChatOptions { Temperature = 0, MaxOutputTokens = 8 }))
        {
            streamed.Append(update.Text);
        }

        Assert.Equal(response.Text, streamed.ToString());
    }

    private static StringContent JsonContent(string body) => new(body, Encoding.UTF8, "application/json");
}
