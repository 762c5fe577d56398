using System.ClientModel;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using OpenAI;
using OpenAI.Chat;

namespace LMCacheSharp.Serving.Tests;

/// <summary>One server for the parameter tests (model loading is the slow part; the tests do not depend on each other's state).</summary>
public sealed class ParameterServerFixture : IAsyncLifetime
{
    public TestServer Server { get; private set; } = null!;

    public async ValueTask InitializeAsync() => Server = await TestServer.StartAsync();

    public async ValueTask DisposeAsync() => await Server.DisposeAsync();
}

/// <summary>
/// The OpenAI parameters beyond the basics (logprobs, samplers, logit_bias, n, response_format, the rejected ones), through
/// the official .NET client where it has the parameter and raw JSON otherwise.
/// </summary>
public sealed class OpenAiParametersTests(ParameterServerFixture fixture) : IClassFixture<ParameterServerFixture>
{
    private TestServer Server => fixture.Server;

    private ChatClient Chat() => new OpenAIClient(new ApiKeyCredential("unused"), new OpenAIClientOptions { Endpoint = new Uri(Server.BaseUrl + "/v1") })
        .GetChatClient("tiny");

    private static List<ChatMessage> Messages(string text = "Tell me about caches.") => [new UserChatMessage(text)];

    private async Task<int> TokenIdAsync(string text) => (await TokenAsync(text)).Id;

    private async Task<(int Id, string Piece)> TokenAsync(string text)
    {
        var json = await Server.PostAsync("/tokenize", new { content = text, with_pieces = true });
        var tokens = json["tokens"]!.AsArray();
        Assert.Single(tokens);
        return (tokens[0]!["id"]!.GetValue<int>(), tokens[0]!["piece"]!.GetValue<string>());
    }

    [Fact]
    public async Task Chat_logprobs_with_the_official_client_streaming_and_not()
    {
        var options = new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 6, IncludeLogProbabilities = true, TopLogProbabilityCount = 3 };
        ChatCompletion completion = await Chat().CompleteChatAsync(Messages(), options);
        var tokens = completion.ContentTokenLogProbabilities;
        Assert.Equal(completion.Usage.OutputTokenCount, tokens.Count);
        Assert.Equal(completion.Content[0].Text, Encoding.UTF8.GetString([.. tokens.SelectMany(t => t.Utf8Bytes!.Value.ToArray())]));
        foreach (var t in tokens)
        {
            Assert.Equal(3, t.TopLogProbabilities.Count);
            Assert.True(t.LogProbability <= 0);
            Assert.True(t.TopLogProbabilities[0].LogProbability >= t.TopLogProbabilities[1].LogProbability);

            // Greedy picks the most likely token of the raw distribution: it is the first alternative.
            Assert.Equal(t.TopLogProbabilities[0].Token, t.Token);
            Assert.Equal(t.TopLogProbabilities[0].LogProbability, t.LogProbability, 5);
        }

        var streamed = new List<ChatTokenLogProbabilityDetails>();
        await foreach (var update in Chat().CompleteChatStreamingAsync(Messages(), options))
        {
            streamed.AddRange(update.ContentTokenLogProbabilities);
        }

        Assert.Equal(tokens.Select(t => (t.Token, Math.Round(t.LogProbability, 4))), streamed.Select(t => (t.Token, Math.Round(t.LogProbability, 4))));

        // Without logprobs the field is null, as OpenAI's.
        var plain = await Server.PostAsync("/v1/chat/completions", new { messages = new[] { new { role = "user", content = "hi" } }, max_tokens = 2 });
        Assert.Null(plain["choices"]![0]!["logprobs"]);
    }

    [Fact]
    public async Task Completion_logprobs_in_the_legacy_shape_streaming_and_not()
    {
        var json = await Server.PostAsync("/v1/completions", new { prompt = "Once upon a time", max_tokens = 5, temperature = 0, logprobs = 2 });
        var choice = json["choices"]![0]!;
        var lp = choice["logprobs"]!;
        var text = choice["text"]!.GetValue<string>();
        var tokens = lp["tokens"]!.AsArray().Select(t => t!.GetValue<string>()).ToList();
        var logprobs = lp["token_logprobs"]!.AsArray().Select(t => t!.GetValue<double>()).ToList();
        var offsets = lp["text_offset"]!.AsArray().Select(t => t!.GetValue<int>()).ToList();
        var top = lp["top_logprobs"]!.AsArray();
        Assert.Equal(5, tokens.Count);
        Assert.Equal(5, logprobs.Count);
        Assert.Equal(5, top.Count);
        Assert.Equal(0, offsets[0]);
        Assert.Equal(offsets.Order(), offsets);
        Assert.All(offsets, o => Assert.InRange(o, 0, text.Length));
        for (var i = 0; i < tokens.Count; i++)
        {
            var alternatives = top[i]!.AsObject();
            Assert.InRange(alternatives.Count, 1, 3); // the 2 asked for, and the sampled token (here one of them)
            Assert.Equal(logprobs[i], alternatives[tokens[i]]!.GetValue<double>(), 5);
            Assert.Equal(alternatives.Max(a => a.Value!.GetValue<double>()), logprobs[i], 5);
        }

        var streamed = await StreamAsync("/v1/completions", new { prompt = "Once upon a time", max_tokens = 5, temperature = 0, logprobs = 2, stream = true });
        var streamedTokens = streamed.Where(c => c["choices"]!.AsArray().Count > 0 && c["choices"]![0]!["logprobs"] is not null)
            .SelectMany(c => c["choices"]![0]!["logprobs"]!["tokens"]!.AsArray().Select(t => t!.GetValue<string>())).ToList();
        Assert.Equal(tokens, streamedTokens);
        var streamedOffsets = streamed.Where(c => c["choices"]!.AsArray().Count > 0 && c["choices"]![0]!["logprobs"] is not null)
            .SelectMany(c => c["choices"]![0]!["logprobs"]!["text_offset"]!.AsArray().Select(t => t!.GetValue<int>())).ToList();
        Assert.Equal(offsets, streamedOffsets);
    }

    [Fact]
    public async Task Logit_bias_with_the_official_client_forces_or_bans_tokens_and_logprobs_stay_the_raw_distribution()
    {
        var (forced, piece) = await TokenAsync("x");
        var options = new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 4, IncludeLogProbabilities = true };
        options.LogitBiases[forced] = 100;
        ChatCompletion completion = await Chat().CompleteChatAsync(Messages(), options);
        Assert.Equal(string.Concat(Enumerable.Repeat(piece, 4)), completion.Content[0].Text);

        // The reported logprob is the model's own (before the bias): a random-weight model gives "x" nowhere near all the mass.
        Assert.All(completion.ContentTokenLogProbabilities, t => Assert.True(t.LogProbability < -0.1, $"{t.LogProbability}"));

        // -100 bans: with x ahead of y, greedy picks x; banning x leaves y.
        var (other, otherPiece) = await TokenAsync("y");
        string Text(JsonObject json) => json["choices"]![0]!["text"]!.GetValue<string>();
        var id = forced.ToString(System.Globalization.CultureInfo.InvariantCulture);
        var otherId = other.ToString(System.Globalization.CultureInfo.InvariantCulture);
        var ahead = await Server.PostAsync("/v1/completions", new
        {
            prompt = "Once upon a time",
            max_tokens = 2,
            temperature = 0,
            logit_bias = new Dictionary<string, int> { [id] = 60, [otherId] = 50 },
        });
        Assert.Equal(piece + piece, Text(ahead));
        var banned = await Server.PostAsync("/v1/completions", new
        {
            prompt = "Once upon a time",
            max_tokens = 2,
            temperature = 0,
            logit_bias = new Dictionary<string, int> { [id] = -100, [otherId] = 50 },
        });
        Assert.Equal(otherPiece + otherPiece, Text(banned));
    }

    [Fact]
    public async Task Top_k_1_and_min_p_1_sample_the_greedy_text_at_any_temperature_and_seed()
    {
        var (greedy, _, _) = await Server.CompleteAsync("The cache said", 8);
        foreach (var (name, value) in new (string, object)[] { ("top_k", 1), ("min_p", 1.0) })
        {
            foreach (var seed in new[] { 1, 2 })
            {
                var body = new Dictionary<string, object> { ["prompt"] = "The cache said", ["max_tokens"] = 8, ["temperature"] = 1.5, ["seed"] = seed, [name] = value };
                var json = await Server.PostAsync("/v1/completions", body);
                Assert.Equal(greedy, json["choices"]![0]!["text"]!.GetValue<string>());
            }
        }

        // And without them, the same temperature and seeds do not all give the greedy text (the samplers above did the work).
        var texts = new HashSet<string>();
        foreach (var seed in new[] { 1, 2, 3 })
        {
            var json = await Server.PostAsync("/v1/completions", new { prompt = "The cache said", max_tokens = 8, temperature = 1.5, seed });
            texts.Add(json["choices"]![0]!["text"]!.GetValue<string>());
        }

        Assert.True(texts.Count > 1 || !texts.Contains(greedy));
    }

    [Fact]
    public async Task Penalties_with_the_official_client_and_raw_repetition_penalty_change_a_repetitive_greedy_text()
    {
        static int MostRepeated(IEnumerable<string> tokens) => tokens.GroupBy(t => t).Max(g => g.Count());
        var baseline = new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 24, IncludeLogProbabilities = true };
        ChatCompletion plain = await Chat().CompleteChatAsync(Messages(), baseline);
        var plainRepeats = MostRepeated(plain.ContentTokenLogProbabilities.Select(t => t.Token));

        var penalized = new ChatCompletionOptions
        {
            Temperature = 0,
            MaxOutputTokenCount = 24,
            IncludeLogProbabilities = true,
            FrequencyPenalty = 2,
            PresencePenalty = 2,
        };
        ChatCompletion fewer = await Chat().CompleteChatAsync(Messages(), penalized);
        Assert.NotEqual(plain.Content[0].Text, fewer.Content[0].Text);
        Assert.True(MostRepeated(fewer.ContentTokenLogProbabilities.Select(t => t.Token)) <= plainRepeats);

        var repetition = await Server.PostAsync("/v1/chat/completions", new
        {
            messages = new[] { new { role = "user", content = "Tell me about caches." } },
            max_tokens = 24,
            temperature = 0,
            repetition_penalty = 3.0,
        });
        Assert.NotEqual(plain.Content[0].Text, repetition["choices"]![0]!["message"]!["content"]!.GetValue<string>());
    }

    [Fact]
    public async Task Stop_arrays_max_completion_tokens_and_echo()
    {
        var (full, _, _) = await Server.CompleteAsync("The cache said", 12);
        var early = full.Substring(3, 2);
        var late = full.Substring(7, 2);
        var json = await Server.PostAsync("/v1/completions", new { prompt = "The cache said", max_tokens = 12, temperature = 0, stop = new[] { late, early } });
        Assert.Equal(full[..full.IndexOf(early, StringComparison.Ordinal)], json["choices"]![0]!["text"]!.GetValue<string>());

        var chat = await Server.PostAsync("/v1/chat/completions", new { messages = new[] { new { role = "user", content = "hi" } }, max_completion_tokens = 3, temperature = 0, ignore_eos = true });
        Assert.Equal(3, chat["usage"]!["completion_tokens"]!.GetValue<int>());

        var echoed = await Server.PostAsync("/v1/completions", new { prompt = "The cache said", max_tokens = 12, temperature = 0, echo = true });
        Assert.Equal("The cache said" + full, echoed["choices"]![0]!["text"]!.GetValue<string>());
    }

    [Fact]
    public async Task Json_object_response_format_with_the_official_client_gives_a_json_object()
    {
        // The model has random weights: only the grammar makes its output JSON. Biasing the closing brace bounds the length.
        var options = new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 300, ResponseFormat = ChatResponseFormat.CreateJsonObjectFormat() };
        ChatCompletion completion = await Chat().CompleteChatAsync(Messages("Answer in JSON."), options);
        var text = completion.Content[0].Text;
        Assert.True(completion.FinishReason == ChatFinishReason.Stop, $"finish {completion.FinishReason}: {text}");
        Assert.Equal(JsonValueKind.Object, JsonDocument.Parse(text).RootElement.ValueKind);
    }

    private const string PersonSchema = """
        {
          "type": "object",
          "properties": {
            "name": { "type": "string", "maxLength": 8 },
            "age": { "type": "integer" },
            "ok": { "type": "boolean" },
            "color": { "enum": ["red", "green"] },
            "tags": { "type": "array", "items": { "type": "string", "maxLength": 4 }, "maxItems": 2 },
            "note": { "type": ["string", "null"], "maxLength": 5 }
          },
          "required": ["name", "age", "ok", "color", "tags"],
          "additionalProperties": false
        }
        """;

    private static void AssertPerson(string text)
    {
        // JSON Schema lengths count code points (a random model emits astral characters too). llama.cpp's grammar reads a
        // lead byte and the bytes after it as one code point without checking that they are continuation bytes, so a
        // random-weight model can emit byte tokens that the grammar counts as one character and UTF-8 decoding turns into
        // several U+FFFD (docs/serving.md, known limits): those are not counted here.
        static int Length(JsonElement s) => s.GetString()!.EnumerateRunes().Count(r => r.Value != 0xFFFD);
        using var doc = JsonDocument.Parse(text);
        var o = doc.RootElement;
        Assert.InRange(Length(o.GetProperty("name")), 0, 8);
        Assert.True(o.GetProperty("age").TryGetInt64(out _), text);
        Assert.Contains(o.GetProperty("ok").ValueKind, new[] { JsonValueKind.True, JsonValueKind.False });
        Assert.Contains(o.GetProperty("color").GetString(), new[] { "red", "green" });
        Assert.InRange(o.GetProperty("tags").GetArrayLength(), 0, 2);
        Assert.All(o.GetProperty("tags").EnumerateArray(), t => Assert.InRange(Length(t), 0, 4));
        if (o.TryGetProperty("note", out var note))
        {
            Assert.True(note.ValueKind == JsonValueKind.Null || Length(note) <= 5, text);
        }

        Assert.All(o.EnumerateObject(), p => Assert.Contains(p.Name, new[] { "name", "age", "ok", "color", "tags", "note" }));
    }

    [Fact]
    public async Task Json_schema_response_format_with_the_official_client_matches_the_schema_streaming_and_not()
    {
        foreach (var temperature in new[] { 0f, 1f })
        {
            var options = new ChatCompletionOptions
            {
                Temperature = temperature,
                MaxOutputTokenCount = 400,
                ResponseFormat = ChatResponseFormat.CreateJsonSchemaFormat("person", BinaryData.FromString(PersonSchema), jsonSchemaIsStrict: true),
            };
            ChatCompletion completion = await Chat().CompleteChatAsync(Messages("Describe a person."), options);
            Assert.Equal(ChatFinishReason.Stop, completion.FinishReason);
            AssertPerson(completion.Content[0].Text);

            var streamed = new StringBuilder();
            await foreach (var update in Chat().CompleteChatStreamingAsync(Messages("Describe a person."), options))
            {
                foreach (var part in update.ContentUpdate)
                {
                    streamed.Append(part.Text);
                }
            }

            AssertPerson(streamed.ToString());
        }
    }

    [Fact]
    public async Task Json_schema_and_top_k_through_the_in_process_IChatClient()
    {
        using var client = new LMCacheChatClient(Server.Service);
        var schema = JsonDocument.Parse(PersonSchema).RootElement;
        var response = await client.GetResponseAsync([new(Microsoft.Extensions.AI.ChatRole.User, "Describe a person.")], new Microsoft.Extensions.AI.ChatOptions
        {
            Temperature = 1.2f,
            TopK = 5,
            Seed = 11, // reproducible: a random-weight model can emit byte tokens that never form valid UTF-8 (see docs/serving.md)
            MaxOutputTokens = 400,
            ResponseFormat = Microsoft.Extensions.AI.ChatResponseFormat.ForJsonSchema(schema, "person"),
        });
        Assert.Equal(Microsoft.Extensions.AI.ChatFinishReason.Stop, response.FinishReason);
        AssertPerson(response.Text);
    }

    [Fact]
    public async Task Json_schema_holds_with_the_trained_stories260K_model()
    {
        var model = LMCacheSharp.Tests.Shared.SharedModels.Stories260K(out var reason);
        Assert.SkipWhen(model is null, reason);
        await using var server = await TestServer.StartAsync(o =>
        {
            o.ModelPath = model!;
            o.ContextSize = 512;
        });
        var json = await server.PostAsync("/v1/completions", new
        {
            prompt = "Once upon a time, there was a girl named",
            max_tokens = 300,
            temperature = 0.8,
            seed = 3,
            response_format = new { type = "json_schema", json_schema = new { name = "person", schema = JsonNode.Parse(PersonSchema) } },
        });
        Assert.Equal("stop", json["choices"]![0]!["finish_reason"]!.GetValue<string>());
        AssertPerson(json["choices"]![0]!["text"]!.GetValue<string>());
    }

    [Fact]
    public async Task N_choices_share_one_prefill_with_distinct_seeded_samples()
    {
        var prompt = Prompts.Long("n-choices");
        var salt = Guid.NewGuid().ToString("N"); // nothing cached
        var before = Server.Service.Metrics.TotalPrefilledTokens;
        var json = await Server.PostAsync("/v1/completions", new { prompt, max_tokens = 8, temperature = 1.5, seed = 11, n = 4, cache_salt = salt });
        var prefilled = Server.Service.Metrics.TotalPrefilledTokens - before;
        var choices = json["choices"]!.AsArray();
        var promptTokens = json["usage"]!["prompt_tokens"]!.GetValue<int>();
        Assert.Equal([0, 1, 2, 3], choices.Select(c => c!["index"]!.GetValue<int>()));
        Assert.Equal(promptTokens, prefilled); // one prefill for four choices
        Assert.Equal(promptTokens, json["timings"]!["prompt_n"]!.GetValue<int>());
        Assert.Equal(32, json["usage"]!["completion_tokens"]!.GetValue<int>());
        Assert.True(choices.Select(c => c!["text"]!.GetValue<string>()).Distinct().Count() > 1);

        // Choice 0 samples with the seed itself: the same text as n = 1 with that seed (the prompt is now shared or cached).
        var single = await Server.PostAsync("/v1/completions", new { prompt, max_tokens = 8, temperature = 1.5, seed = 11, cache_salt = salt });
        Assert.Equal(choices[0]!["text"]!.GetValue<string>(), single["choices"]![0]!["text"]!.GetValue<string>());
        Assert.True(single["usage"]!["prompt_tokens_details"]!["cached_tokens"]!.GetValue<int>() > 0);

        // Streaming: every choice streams its own text and ends with its own finish_reason.
        var chunks = await StreamAsync("/v1/chat/completions", new
        {
            messages = new[] { new { role = "user", content = "hello" } },
            max_tokens = 4,
            temperature = 1,
            n = 2,
            stream = true,
            stream_options = new { include_usage = true },
        });
        var finishes = chunks.SelectMany(c => c["choices"]!.AsArray()).Where(c => c!["finish_reason"] is not null).Select(c => c!["index"]!.GetValue<int>());
        Assert.Equal([0, 1], finishes.Order());
        Assert.Equal(8, chunks[^1]["usage"]!["completion_tokens"]!.GetValue<int>());
    }

    [Fact]
    public async Task Logit_bias_and_grammar_do_not_change_the_stored_kv()
    {
        var prompt = Prompts.Long("bias-and-cache");
        var salt = Guid.NewGuid().ToString("N");
        var forced = await TokenIdAsync("x");
        await Server.PostAsync("/v1/completions", new
        {
            prompt,
            max_tokens = 4,
            temperature = 0,
            cache_salt = salt,
            logit_bias = new Dictionary<string, int> { [forced.ToString(System.Globalization.CultureInfo.InvariantCulture)] = 100 },
            response_format = new { type = "json_object" },
        });
        var (cold, cached0, _) = await Server.CompleteAsync(prompt, 8, salt: Guid.NewGuid().ToString("N"));
        Assert.Equal(0, cached0);
        var (warm, cached, _) = await Server.CompleteAsync(prompt, 8, salt: salt);
        Assert.True(cached > 0);
        Assert.Equal(cold, warm);
    }

    [Theory]
    [InlineData("/v1/completions", """{"prompt":"x","top_k":-2}""", "top_k")]
    [InlineData("/v1/completions", """{"prompt":"x","min_p":1.5}""", "min_p")]
    [InlineData("/v1/completions", """{"prompt":"x","presence_penalty":3}""", "presence_penalty")]
    [InlineData("/v1/completions", """{"prompt":"x","frequency_penalty":-2.5}""", "frequency_penalty")]
    [InlineData("/v1/completions", """{"prompt":"x","repetition_penalty":0}""", "repetition_penalty")]
    [InlineData("/v1/completions", """{"prompt":"x","logit_bias":{"abc":1}}""", "logit_bias")]
    [InlineData("/v1/completions", """{"prompt":"x","logit_bias":{"5":200}}""", "logit_bias")]
    [InlineData("/v1/completions", """{"prompt":"x","logit_bias":{"99999999":1}}""", "logit_bias")]
    [InlineData("/v1/completions", """{"prompt":"x","logit_bias":[1]}""", "logit_bias")]
    [InlineData("/v1/completions", """{"prompt":"x","logprobs":21}""", "logprobs")]
    [InlineData("/v1/completions", """{"prompt":"x","logprobs":true}""", "logprobs")]
    [InlineData("/v1/completions", """{"prompt":"x","logprobs":1,"echo":true}""", "echo")]
    [InlineData("/v1/completions", """{"prompt":"x","suffix":"y"}""", "suffix")]
    [InlineData("/v1/completions", """{"prompt":"x","n":0}""", "n")]
    [InlineData("/v1/completions", """{"prompt":"x","n":9}""", "n")]
    [InlineData("/v1/completions", """{"prompt":"x","n":2,"best_of":3}""", "best_of")]
    [InlineData("/v1/completions", """{"prompt":"x","n":4,"max_tokens":600}""", "max_tokens")]
    [InlineData("/v1/completions", """{"prompt":"x","ignore_eos":true,"response_format":{"type":"json_object"}}""", "ignore_eos")]
    [InlineData("/v1/chat/completions", """{"messages":[{"role":"user","content":"x"}],"top_logprobs":3}""", "top_logprobs")]
    [InlineData("/v1/chat/completions", """{"messages":[{"role":"user","content":"x"}],"logprobs":true,"top_logprobs":21}""", "top_logprobs")]
    [InlineData("/v1/chat/completions", """{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}}]}""", "tools")]
    [InlineData("/v1/chat/completions", """{"messages":[{"role":"user","content":"x"}],"tool_choice":"auto"}""", "tool_choice")]
    [InlineData("/v1/chat/completions", """{"messages":[{"role":"user","content":"x"}],"functions":[{"name":"f"}]}""", "functions")]
    [InlineData("/v1/chat/completions", """{"messages":[{"role":"user","content":"x"}],"function_call":"auto"}""", "function_call")]
    [InlineData("/v1/chat/completions", """{"messages":[{"role":"user","content":"x"}],"audio":{"voice":"alloy"}}""", "audio")]
    [InlineData("/v1/chat/completions", """{"messages":[{"role":"user","content":"x"}],"modalities":["text","audio"]}""", "modalities")]
    [InlineData("/v1/chat/completions", """{"messages":[{"role":"user","content":"x"}],"prediction":{"type":"content","content":"y"}}""", "prediction")]
    [InlineData("/v1/chat/completions", """{"messages":[{"role":"user","content":"x"}],"web_search_options":{}}""", "web_search_options")]
    [InlineData("/v1/chat/completions", """{"messages":[{"role":"user","content":"x"}],"reasoning_effort":"low"}""", "reasoning_effort")]
    [InlineData("/v1/chat/completions", """{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"xml"}}""", "response_format")]
    [InlineData("/v1/chat/completions", """{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema"}}""", "response_format")]
    [InlineData("/v1/chat/completions", """{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"name":"a","schema":{"type":"string","pattern":"a+"}}}}""", "response_format")]
    public async Task Bad_or_unsupported_parameters_get_400_naming_the_parameter_and_the_next_request_succeeds(string path, string body, string param)
    {
        using var response = await Server.Http.PostAsync(path, new StringContent(body, Encoding.UTF8, "application/json"));
        var text = await response.Content.ReadAsStringAsync();
        Assert.True(response.StatusCode == HttpStatusCode.BadRequest, text);
        var error = JsonNode.Parse(text)!["error"]!;
        Assert.Equal(param, error["param"]?.GetValue<string>());
        Assert.Contains(param, error["message"]!.GetValue<string>(), StringComparison.Ordinal);
        Assert.Equal("invalid_request_error", error["type"]!.GetValue<string>());

        var (next, _, _) = await Server.CompleteAsync("still alive", 2);
        Assert.NotNull(next);
    }

    [Fact]
    public async Task Harmless_values_of_unsupported_parameters_are_accepted()
    {
        var json = await Server.PostAsync("/v1/chat/completions", new
        {
            messages = new[] { new { role = "user", content = "x" } },
            max_tokens = 2,
            tools = Array.Empty<object>(),
            tool_choice = "none",
            modalities = new[] { "text" },
            response_format = new { type = "text" },
            store = false,
            parallel_tool_calls = true,
        });
        Assert.Equal(2, json["usage"]!["completion_tokens"]!.GetValue<int>());
    }

    [Fact]
    public async Task Tools_with_the_official_client_and_embeddings_get_a_clear_400()
    {
        var options = new ChatCompletionOptions { Tools = { ChatTool.CreateFunctionTool("lookup", "Looks something up.") } };
        var e = await Assert.ThrowsAsync<ClientResultException>(() => Chat().CompleteChatAsync(Messages(), options));
        Assert.Equal(400, e.Status);
        Assert.Contains("'tools'", e.Message, StringComparison.Ordinal);

        var embeddings = new OpenAIClient(new ApiKeyCredential("unused"), new OpenAIClientOptions { Endpoint = new Uri(Server.BaseUrl + "/v1") })
            .GetEmbeddingClient("tiny");
        var ee = await Assert.ThrowsAsync<ClientResultException>(() => embeddings.GenerateEmbeddingAsync("hello"));
        Assert.Equal(400, ee.Status);
        Assert.Contains("embeddings", ee.Message, StringComparison.Ordinal);

        var (next, _, _) = await Server.CompleteAsync("still alive", 2);
        Assert.NotNull(next);
    }

    private async Task<List<JsonObject>> StreamAsync(string path, object body)
    {
        using var response = await Server.Http.PostAsJsonAsync(path, body);
        var text = await response.Content.ReadAsStringAsync();
        Assert.True(response.IsSuccessStatusCode, text);
        return text.Split("\n\n", StringSplitOptions.RemoveEmptyEntries).Select(e => e.Trim()).Where(e => e != "data: [DONE]")
            .Select(e => JsonNode.Parse(e["data: ".Length..])!.AsObject()).ToList();
    }
}
