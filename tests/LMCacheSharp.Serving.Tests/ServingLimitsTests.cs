using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json.Nodes;
using LMCacheSharp.LlamaCpp.Gguf;

namespace LMCacheSharp.Serving.Tests;

/// <summary>
/// Bad and hostile requests through the HTTP surface: each gets a clear 4xx in OpenAI's error shape, and the next good
/// request still succeeds (issue 9: one request must never wedge the server).
/// </summary>
public sealed class ServingLimitsTests : IAsyncLifetime
{
    private TestServer _server = null!;

    public async ValueTask InitializeAsync() => _server = await TestServer.StartAsync();

    public async ValueTask DisposeAsync() => await _server.DisposeAsync();

    [Fact]
    public async Task The_long_prompt_wedge_shape_on_the_default_model_gets_400_and_the_server_keeps_serving()
    {
        // The exact request that wedged 4ac2a97: ~18k tokens, no max_tokens, on the default model's shape (context 4096).
        await using var server = await TestServer.StartAsync(o =>
        {
            o.ModelPath = SmallModel.File;
            o.ContextSize = null;
        });
        Assert.Equal(4096, server.Service.ContextSize);
        var prompt = string.Concat(Enumerable.Repeat("hello world ", 3000));
        var error = await server.PostAsync("/v1/completions", new { prompt }, 400);
        Assert.Equal("context_length_exceeded", error["error"]!["code"]!.GetValue<string>());
        Assert.Equal("prompt", error["error"]!["param"]!.GetValue<string>());

        var chat = await server.PostAsync("/v1/chat/completions", new { messages = new[] { new { role = "user", content = prompt } } }, 400);
        Assert.Equal("context_length_exceeded", chat["error"]!["code"]!.GetValue<string>());
        Assert.Equal("messages", chat["error"]!["param"]!.GetValue<string>());

        var ok = await server.PostAsync("/v1/completions", new { prompt = "hi", max_tokens = 2 });
        Assert.Equal(2, ok["usage"]!["completion_tokens"]!.GetValue<int>());
        var health = await server.Http.GetAsync("/health");
        Assert.Equal(HttpStatusCode.OK, health.StatusCode);
    }

    [Fact]
    public async Task A_prompt_of_exactly_the_context_without_max_tokens_is_rejected_and_one_token_less_is_served()
    {
        var ctx = _server.Service.ContextSize;
        var ids = Enumerable.Repeat(_server.Service.TokenizeCompletion("a")[^1], ctx).ToArray();
        var error = await _server.PostAsync("/v1/completions", new { prompt = ids }, 400);
        Assert.Equal("context_length_exceeded", error["error"]!["code"]!.GetValue<string>());

        var fits = await _server.PostAsync("/v1/completions", new { prompt = ids[..(ctx - 1)], temperature = 0 });
        Assert.Equal(1, fits["usage"]!["completion_tokens"]!.GetValue<int>());
        Assert.Equal("length", fits["choices"]![0]!["finish_reason"]!.GetValue<string>());
    }

    [Fact]
    public async Task Prompt_plus_max_tokens_over_the_context_is_400_naming_max_tokens()
    {
        var ids = Enumerable.Repeat(5, 1000).ToArray();
        var error = await _server.PostAsync("/v1/completions", new { prompt = ids, max_tokens = 1500 }, 400);
        Assert.Equal("context_length_exceeded", error["error"]!["code"]!.GetValue<string>());
        Assert.Equal("max_tokens", error["error"]!["param"]!.GetValue<string>());
        var chat = await _server.PostAsync("/v1/chat/completions", new
        {
            messages = new[] { new { role = "user", content = "hi" } },
            max_completion_tokens = 5000,
        }, 400);
        Assert.Equal("max_completion_tokens", chat["error"]!["param"]!.GetValue<string>());
        await AssertStillServingAsync();
    }

    [Fact]
    public async Task Concurrent_requests_that_together_overflow_the_context_all_succeed()
    {
        // Four requests of ~300 prompt tokens + 100 each in a 512-token context: before admission reserved cells, the
        // decode ran out of KV slots and the failed request's sequence stayed half-admitted, wedging the loop.
        await using var server = await TestServer.StartAsync(o => o.ContextSize = 512);
        var prompts = Enumerable.Range(0, 4).Select(i => Enumerable.Range(0, 300).Select(t => 3 + ((t * (i + 7)) % 250)).ToArray()).ToArray();
        var results = await Task.WhenAll(prompts.Select(p => server.PostAsync("/v1/completions", new { prompt = p, max_tokens = 100, temperature = 0 })));
        Assert.All(results, r => Assert.True(r["usage"]!["completion_tokens"]!.GetValue<int>() >= 1));
        var ok = await server.PostAsync("/v1/completions", new { prompt = "hi", max_tokens = 2 });
        Assert.NotNull(ok["choices"]);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(8)]
    [InlineData(30)]
    public async Task A_giant_body_is_refused_and_the_server_keeps_serving(int megabytes)
    {
        var prompt = new string('x', megabytes << 20);
        var body = "{\"prompt\":\"" + prompt + "\"}";
        // Expect: 100-continue lets the server answer before the body is sent, as curl does for large bodies.
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = new StringContent(body, Encoding.UTF8, "application/json") };
        request.Headers.ExpectContinue = true;
        using var response = await _server.Http.SendAsync(request);
        var error = JsonNode.Parse(await response.Content.ReadAsStringAsync())!["error"]!;
        Assert.True(response.StatusCode is HttpStatusCode.BadRequest or HttpStatusCode.RequestEntityTooLarge, response.StatusCode.ToString());
        Assert.NotNull(error["message"]);
        await AssertStillServingAsync();
    }

    [Fact]
    public async Task A_chunked_body_without_a_length_is_cut_off_at_the_limit()
    {
        var limit = _server.Service.MaxRequestBodyBytes;
        var content = new PushStreamContent(async stream =>
        {
            await stream.WriteAsync("{\"prompt\":\""u8.ToArray());
            var block = Encoding.ASCII.GetBytes(new string('y', 64 << 10));
            for (long sent = 0; sent < limit + (1 << 20); sent += block.Length)
            {
                await stream.WriteAsync(block);
            }

            await stream.WriteAsync("\"}"u8.ToArray());
        });
        using var response = await _server.Http.PostAsync("/v1/completions", content);
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, response.StatusCode);
        await AssertStillServingAsync();
    }

    [Fact]
    public async Task Invalid_utf8_and_lone_surrogates_get_400_without_a_stack_trace()
    {
        var bytes = new List<byte>(Encoding.UTF8.GetBytes("{\"prompt\":\"ab"));
        bytes.AddRange([0xC3, 0x28, 0xFF]);
        bytes.AddRange(Encoding.UTF8.GetBytes("\",\"max_tokens\":2}"));
        using var invalid = new ByteArrayContent([.. bytes]);
        invalid.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        using var r1 = await _server.Http.PostAsync("/v1/completions", invalid);
        Assert.Equal(HttpStatusCode.BadRequest, r1.StatusCode);
        var e1 = JsonNode.Parse(await r1.Content.ReadAsStringAsync())!["error"]!;
        Assert.Equal("invalid_request_error", e1["type"]!.GetValue<string>());
        Assert.DoesNotContain(" at ", e1["message"]!.GetValue<string>(), StringComparison.Ordinal);

        using var r2 = await _server.Http.PostAsync("/v1/chat/completions",
            new StringContent("""{"messages":[{"role":"user","content":"x\ud800y"}],"max_tokens":2}""", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.BadRequest, r2.StatusCode);
        var e2 = JsonNode.Parse(await r2.Content.ReadAsStringAsync())!["error"]!;
        Assert.Equal("messages[0].content", e2["param"]!.GetValue<string>());
        await AssertStillServingAsync();
    }

    [Fact]
    public async Task A_user_message_without_content_is_400_and_an_assistant_one_is_accepted()
    {
        var error = await _server.PostAsync("/v1/chat/completions", new { messages = new object[] { new { role = "user" } }, max_tokens = 2 }, 400);
        Assert.Equal("messages[0].content", error["error"]!["param"]!.GetValue<string>());
        var ok = await _server.PostAsync("/v1/chat/completions", new
        {
            messages = new object[] { new { role = "user", content = "hi" }, new { role = "assistant" }, new { role = "user", content = "again" } },
            max_tokens = 2,
        });
        Assert.NotNull(ok["choices"]);
    }

    [Fact]
    public async Task Token_id_prompts_are_served_like_the_same_text()
    {
        var ids = _server.Service.TokenizeCompletion("Once upon a time");
        var byText = await _server.PostAsync("/v1/completions", new { prompt = "Once upon a time", max_tokens = 6, temperature = 0 });
        var byIds = await _server.PostAsync("/v1/completions", new { prompt = ids, max_tokens = 6, temperature = 0 });
        var nested = await _server.PostAsync("/v1/completions", new { prompt = new[] { ids }, max_tokens = 6, temperature = 0 });
        Assert.Equal(byText["choices"]![0]!["text"]!.GetValue<string>(), byIds["choices"]![0]!["text"]!.GetValue<string>());
        Assert.Equal(byText["choices"]![0]!["text"]!.GetValue<string>(), nested["choices"]![0]!["text"]!.GetValue<string>());
        Assert.Equal(ids.Length, byIds["usage"]!["prompt_tokens"]!.GetValue<int>());

        var outside = await _server.PostAsync("/v1/completions", new { prompt = new[] { 1, 2, 1_000_000 } }, 400);
        Assert.Equal("prompt", outside["error"]!["param"]!.GetValue<string>());
        var notInt = await _server.PostAsync("/v1/completions", new { prompt = new object[] { 1, 2.5 } }, 400);
        Assert.Equal("prompt", notInt["error"]!["param"]!.GetValue<string>());
    }

    [Fact]
    public async Task Ignore_eos_generates_exactly_max_tokens()
    {
        var json = await _server.PostAsync("/v1/completions", new { prompt = "The end", max_tokens = 300, temperature = 0, ignore_eos = true });
        Assert.Equal(300, json["usage"]!["completion_tokens"]!.GetValue<int>());
        Assert.Equal("length", json["choices"]![0]!["finish_reason"]!.GetValue<string>());
    }

    [Fact]
    public async Task Unknown_parameters_are_ignored_and_n_above_the_sequences_is_rejected()
    {
        var ok = await _server.PostAsync("/v1/completions", new { prompt = "hi", max_tokens = 2, frobnicate = true, logit_scale = 3 });
        Assert.NotNull(ok["choices"]);
        var n = await _server.PostAsync("/v1/chat/completions", new { messages = new[] { new { role = "user", content = "hi" } }, n = 5 }, 400);
        Assert.Equal("n", n["error"]!["param"]!.GetValue<string>());
    }

    [Fact]
    public async Task Unknown_paths_and_wrong_methods_get_openai_error_bodies()
    {
        using var missing = await _server.Http.GetAsync("/v1/nothing-here");
        Assert.Equal(HttpStatusCode.NotFound, missing.StatusCode);
        Assert.Equal("not_found", JsonNode.Parse(await missing.Content.ReadAsStringAsync())!["error"]!["code"]!.GetValue<string>());
        using var wrong = await _server.Http.GetAsync("/v1/completions");
        Assert.Equal(HttpStatusCode.MethodNotAllowed, wrong.StatusCode);
        Assert.Equal("method_not_allowed", JsonNode.Parse(await wrong.Content.ReadAsStringAsync())!["error"]!["code"]!.GetValue<string>());
        await AssertStillServingAsync();
    }

    [Fact]
    public async Task A_full_queue_answers_429_with_retry_after()
    {
        await using var server = await TestServer.StartAsync(o =>
        {
            o.MaxConcurrentRequests = 1;
            o.MaxQueuedRequests = 1;
        });
        using var gate = new ManualResetEventSlim(false);
        using var entered = new ManualResetEventSlim(false);
        server.Service.BeforeSchedulerStep = () =>
        {
            entered.Set();
            gate.Wait(TimeSpan.FromSeconds(30));
        };
        try
        {
            // The loop holds the first request in the queue (one place): the next one finds it full.
            var first = server.PostAsync("/v1/completions", new { prompt = "one", max_tokens = 2 });
            Assert.True(entered.Wait(TimeSpan.FromSeconds(30)));
            using var busy = await server.Http.PostAsJsonAsync("/v1/completions", new { prompt = "three", max_tokens = 2 });
            Assert.Equal(HttpStatusCode.TooManyRequests, busy.StatusCode);
            Assert.Equal("1", busy.Headers.RetryAfter!.ToString());
            Assert.Equal("rate_limit_exceeded", JsonNode.Parse(await busy.Content.ReadAsStringAsync())!["error"]!["type"]!.GetValue<string>());
            server.Service.BeforeSchedulerStep = null;
            gate.Set();
            await first;
            await server.PostAsync("/v1/completions", new { prompt = "after", max_tokens = 2 });
        }
        finally
        {
            server.Service.BeforeSchedulerStep = null;
            gate.Set();
        }
    }

    [Fact]
    public async Task Health_goes_503_while_the_loop_is_blocked_with_work_pending_and_recovers()
    {
        await using var server = await TestServer.StartAsync(o => o.StallTimeout = TimeSpan.FromSeconds(1));
        Assert.Equal(HttpStatusCode.OK, (await server.Http.GetAsync("/health")).StatusCode);
        using var gate = new ManualResetEventSlim(false);
        server.Service.BeforeSchedulerStep = () => gate.Wait(TimeSpan.FromSeconds(60));
        Task<JsonObject>? pending = null;
        try
        {
            pending = server.PostAsync("/v1/completions", new { prompt = "blocked", max_tokens = 2 });
            JsonNode? unhealthy = null;
            for (var i = 0; i < 100 && unhealthy is null; i++)
            {
                using var r = await server.Http.GetAsync("/health");
                if (r.StatusCode == HttpStatusCode.ServiceUnavailable)
                {
                    unhealthy = JsonNode.Parse(await r.Content.ReadAsStringAsync());
                }
                else
                {
                    await Task.Delay(100); // polling an external surface; the assertion is on the state reached, not the time
                }
            }

            Assert.NotNull(unhealthy);
            Assert.Equal("unhealthy", unhealthy["status"]!.GetValue<string>());
            Assert.Contains("no progress", unhealthy["reason"]!.GetValue<string>(), StringComparison.Ordinal);
            var metrics = await server.Http.GetStringAsync("/metrics");
            Assert.Contains("lmcache_serving_loop_progress_age", metrics, StringComparison.Ordinal);
        }
        finally
        {
            server.Service.BeforeSchedulerStep = null;
            gate.Set();
        }

        await pending!;
        Assert.Equal(HttpStatusCode.OK, (await server.Http.GetAsync("/health")).StatusCode);
    }

    [Fact]
    public async Task Tokenize_and_detokenize_follow_llama_server_and_refuse_bad_input()
    {
        var tokens = (await _server.PostAsync("/tokenize", new { content = "Once upon a time" }))["tokens"]!.AsArray().Select(t => t!.GetValue<int>()).ToArray();
        var withBos = (await _server.PostAsync("/tokenize", new { content = "Once upon a time", add_special = true }))["tokens"]!.AsArray();
        Assert.Equal(_server.Service.TokenizeCompletion("Once upon a time"), withBos.Select(t => t!.GetValue<int>()).ToArray());
        Assert.True(withBos.Count >= tokens.Length);
        var pieces = (await _server.PostAsync("/tokenize", new { content = "Once", with_pieces = true }))["tokens"]!.AsArray();
        Assert.All(pieces, p => Assert.NotNull(p!["piece"]));
        var text = (await _server.PostAsync("/detokenize", new { tokens }))["content"]!.GetValue<string>();
        Assert.Contains("upon a time", text, StringComparison.Ordinal);

        Assert.Equal("content", (await _server.PostAsync("/tokenize", new { content = 5 }, 400))["error"]!["param"]!.GetValue<string>());
        Assert.Equal("tokens", (await _server.PostAsync("/detokenize", new { tokens = new[] { -1 } }, 400))["error"]!["param"]!.GetValue<string>());
        Assert.Equal("tokens", (await _server.PostAsync("/detokenize", new { tokens = "x" }, 400))["error"]!["param"]!.GetValue<string>());
        using var bad = await _server.Http.PostAsync("/tokenize", new StringContent("{nope", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.BadRequest, bad.StatusCode);
        await AssertStillServingAsync();
    }

    [Fact]
    public async Task A_model_is_found_by_its_id_and_an_unknown_id_is_404()
    {
        var model = JsonNode.Parse(await _server.Http.GetStringAsync("/v1/models/tiny"))!;
        Assert.Equal("tiny", model["id"]!.GetValue<string>());
        using var missing = await _server.Http.GetAsync("/v1/models/gpt-4");
        Assert.Equal(HttpStatusCode.NotFound, missing.StatusCode);
        Assert.Equal("model_not_found", JsonNode.Parse(await missing.Content.ReadAsStringAsync())!["error"]!["code"]!.GetValue<string>());
        await AssertStillServingAsync();
    }

    private async Task AssertStillServingAsync()
    {
        var (text, _, _) = await _server.CompleteAsync("still alive", 2);
        Assert.NotNull(text);
    }

    private sealed class PushStreamContent(Func<Stream, Task> write) : HttpContent
    {
        protected override Task SerializeToStreamAsync(Stream stream, TransportContext? context) => write(stream);

        protected override bool TryComputeLength(out long length)
        {
            length = -1;
            return false;
        }
    }
}

/// <summary>The default model's shape (the "small" preset: 4 x 256, context 4096), generated once per test run.</summary>
internal static class SmallModel
{
    private static readonly Lazy<string> PathLazy = new(() =>
    {
        var dir = Path.Combine(Path.GetTempPath(), "lmcachesharp-serving-tests");
        Directory.CreateDirectory(dir);
        var path = Path.Combine(dir, "small-" + Environment.ProcessId + ".gguf");
        GgufModelWriter.Write(LlamaModelSpec.FromPreset("small"), path);
        AppDomain.CurrentDomain.ProcessExit += (_, _) => System.IO.File.Delete(path);
        return path;
    });

    public static string File => PathLazy.Value;
}
