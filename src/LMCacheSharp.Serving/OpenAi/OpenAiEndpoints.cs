using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using LMCacheSharp.Serving.Inference;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.Logging;

namespace LMCacheSharp.Serving.OpenAi;

/// <summary>The OpenAI-compatible endpoints: /v1/models, /v1/completions, /v1/chat/completions (/v1/embeddings refused), /health.</summary>
public static class OpenAiEndpoints
{
    /// <summary>
    /// Largest request body accepted by any endpoint (bytes). The completion endpoints accept less:
    /// <see cref="InferenceService.MaxRequestBodyBytes"/>, derived from the context size.
    /// </summary>
    public const long MaxBodyBytes = 32L << 20;

    /// <summary>Where the handler leaves the request's job for the request log line (<see cref="HttpContext.Items"/> key).</summary>
    internal const string JobItem = "lmcache.job";

    /// <summary>Maps the endpoints onto <paramref name="app"/>.</summary>
    public static IEndpointRouteBuilder MapOpenAi(this IEndpointRouteBuilder app, InferenceService service)
    {
        ArgumentNullException.ThrowIfNull(app);
        ArgumentNullException.ThrowIfNull(service);
        var created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        app.MapGet("/health", () =>
        {
            var (healthy, status, age) = service.GetLoopHealth();
            return Results.Json(new
            {
                status = healthy ? "ok" : "unhealthy",
                reason = healthy ? null : status,
                model = service.ModelName,
                cache = service.Cache is not null,
                loop_progress_age_seconds = Math.Round(age, 3)
            }, statusCode: healthy ? 200 : 503);
        });
        var card = new { id = service.ModelName, @object = "model", created, owned_by = "lmcachesharp" };
        app.MapGet("/v1/models", () => Results.Json(new { @object = "list", data = new[] { card } }));
        app.MapGet("/v1/models/{id}", (string id) => id == service.ModelName
            ? Results.Json(card)
            : Results.Json(Error($"The model '{id}' does not exist; this server serves '{service.ModelName}'.", "invalid_request_error", "model", "model_not_found"),
                statusCode: 404));
        app.MapPost("/tokenize", (HttpContext http) => TokenizeAsync(http, service));
        app.MapPost("/detokenize", (HttpContext http) => DetokenizeAsync(http, service));
        app.MapPost("/v1/completions", (HttpContext http) => HandleAsync(http, service, chat: false));
        app.MapPost("/v1/chat/completions", (HttpContext http) => HandleAsync(http, service, chat: true));

        // The models served are generative (no pooling head): embeddings are refused in OpenAI's shape, not faked.
        app.MapPost("/v1/embeddings", (HttpContext http) => WriteErrorAsync(http, 400,
            $"The model '{service.ModelName}' is a generative model; this server does not serve embeddings (POST /v1/embeddings).",
            "invalid_request_error", "model", "model_not_supported"));
        return app;
    }

    private static JsonObject Error(string message, string type, string? param, string code) => Http.OpenAiErrors.Body(message, type, param, code);

    /// <summary>POST /tokenize, llama-server's shape: {"content", "add_special" (false), "parse_special" (true), "with_pieces" (false)} -> {"tokens"}.</summary>
    private static async Task TokenizeAsync(HttpContext http, InferenceService service)
    {
        try
        {
            using var doc = await ReadJsonBodyAsync(http, service).ConfigureAwait(false);
            var body = doc.RootElement;
            if (body.ValueKind != JsonValueKind.Object || !body.TryGetProperty("content", out var content) || content.ValueKind != JsonValueKind.String)
            {
                throw new OpenAiRequestException("'content' is required and must be a string", "content");
            }

            var text = OpenAiRequestParser.ReadString(content, "content");

            var tokens = service.Tokenize(text, Flag(body, "add_special", false), Flag(body, "parse_special", true));
            var list = new JsonArray();
            var withPieces = Flag(body, "with_pieces", false);
            foreach (var t in tokens)
            {
                list.Add(withPieces ? new JsonObject { ["id"] = t, ["piece"] = service.TokenPiece(t) } : JsonValue.Create(t));
            }

            await http.Response.WriteAsJsonAsync(new JsonObject { ["tokens"] = list }, http.RequestAborted).ConfigureAwait(false);
        }
        catch (OpenAiRequestException e)
        {
            await WriteErrorAsync(http, e.Status, e.Message, "invalid_request_error", e.Param, e.Code).ConfigureAwait(false);
        }
    }

    /// <summary>POST /detokenize, llama-server's shape: {"tokens": [ids]} -> {"content"}.</summary>
    private static async Task DetokenizeAsync(HttpContext http, InferenceService service)
    {
        try
        {
            using var doc = await ReadJsonBodyAsync(http, service).ConfigureAwait(false);
            var body = doc.RootElement;
            if (body.ValueKind != JsonValueKind.Object || !body.TryGetProperty("tokens", out var tokens) || tokens.ValueKind != JsonValueKind.Array)
            {
                throw new OpenAiRequestException("'tokens' is required and must be a list of token ids", "tokens");
            }

            var ids = new List<int>(tokens.GetArrayLength());
            foreach (var t in tokens.EnumerateArray())
            {
                if (t.ValueKind != JsonValueKind.Number || !t.TryGetInt32(out var id) || id < 0 || id >= service.VocabularySize)
                {
                    throw new OpenAiRequestException($"'tokens[{ids.Count}]' must be a token id in 0..{service.VocabularySize - 1}", "tokens");
                }

                ids.Add(id);
            }

            await http.Response.WriteAsJsonAsync(new JsonObject { ["content"] = service.Detokenize(ids) }, http.RequestAborted).ConfigureAwait(false);
        }
        catch (OpenAiRequestException e)
        {
            await WriteErrorAsync(http, e.Status, e.Message, "invalid_request_error", e.Param, e.Code).ConfigureAwait(false);
        }
    }

    private static bool Flag(JsonElement body, string name, bool fallback) =>
        !body.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null ? fallback
        : v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean()
        : throw new OpenAiRequestException($"'{name}' must be a boolean", name);

    /// <summary>
    /// Reads the request body as JSON. No prompt that fits the context needs a bigger body than
    /// <see cref="InferenceService.MaxRequestBodyBytes"/>: a larger one is read and thrown away up to <see cref="MaxBodyBytes"/>,
    /// so that clients that send the whole body before reading (most) see the 413, then refused; one announcing more than
    /// <see cref="MaxBodyBytes"/> is refused at once. Bad JSON is a 400.
    /// </summary>
    internal static async Task<JsonDocument> ReadJsonBodyAsync(HttpContext http, InferenceService service)
    {
        var aborted = http.RequestAborted;
        var limit = service.MaxRequestBodyBytes;
        if (http.Request.ContentLength > MaxBodyBytes)
        {
            throw BodyTooLarge(service, limit);
        }

        if (http.Request.ContentLength > limit)
        {
            await DrainAsync(http.Request.Body, aborted).ConfigureAwait(false);
            throw BodyTooLarge(service, limit);
        }

        try
        {
            return await JsonDocument.ParseAsync(new LimitedReadStream(http.Request.Body, limit), default, aborted).ConfigureAwait(false);
        }
        catch (JsonException e)
        {
            throw new OpenAiRequestException($"the request body is not valid JSON: {e.Message}");
        }
        catch (Exception e) when (e is LimitedReadStream.LimitExceededException or BadHttpRequestException { StatusCode: StatusCodes.Status413PayloadTooLarge })
        {
            await DrainAsync(http.Request.Body, aborted).ConfigureAwait(false);
            throw BodyTooLarge(service, limit);
        }
    }

    /// <summary>Writes an error in OpenAI's shape.</summary>
    public static Task WriteErrorAsync(HttpContext http, int status, string message, string type, string? param = null, string? code = null) =>
        Http.OpenAiErrors.WriteAsync(http, status, message, type, param, code);

    private static async Task HandleAsync(HttpContext http, InferenceService service, bool chat)
    {
        var aborted = http.RequestAborted;
        CompletionRequest? completion = null;
        ChatCompletionRequest? chatRequest = null;
        int[] prompt;
        GenerationParameters parameters;
        string? echo = null;
        try
        {
            using (var doc = await ReadJsonBodyAsync(http, service).ConfigureAwait(false))
            {
                if (chat)
                {
                    chatRequest = OpenAiRequestParser.ParseChat(doc.RootElement);
                    CheckModel(chatRequest.Model, service);
                    prompt = service.TokenizeChat(chatRequest.Messages);
                    parameters = chatRequest.Parameters with { Stop = [.. chatRequest.Parameters.Stop, .. service.ChatStopStrings] };
                }
                else
                {
                    completion = OpenAiRequestParser.ParseCompletion(doc.RootElement);
                    CheckModel(completion.Model, service);
                    prompt = completion.PromptTokens is { } ids ? service.CheckTokenIds(ids) : service.TokenizeCompletion(completion.Prompt);
                    parameters = completion.Parameters;
                    echo = !completion.Echo ? null : completion.PromptTokens is { } echoed ? service.Detokenize(echoed) : completion.Prompt;
                }
            }

            if (parameters.IgnoredFields.Count > 0 && service.Logger.IsEnabled(LogLevel.Debug))
            {
                service.Logger.LogDebug("{Path}: ignored unknown fields {Fields}", http.Request.Path.Value, string.Join(", ", parameters.IgnoredFields));
            }

            aborted.ThrowIfCancellationRequested(); // the client left while its body was parsed and tokenized
            var job = await service.SubmitAsync(prompt, parameters, aborted, chat ? "messages" : "prompt").ConfigureAwait(false);
            http.Items[JobItem] = job;
            var id = (chat ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N");
            var model = service.ModelName;
            var created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
            if (parameters.Stream)
            {
                await StreamAsync(http, service, job, id, model, created, chat, parameters.StreamIncludeUsage, echo).ConfigureAwait(false);
            }
            else
            {
                await RespondAsync(http, service, job, id, model, created, chat, echo).ConfigureAwait(false);
            }
        }
        catch (OpenAiRequestException e)
        {
            if (!http.Response.HasStarted)
            {
                await WriteErrorAsync(http, e.Status, e.Message, e.Status == 429 ? "rate_limit_exceeded" : "invalid_request_error", e.Param, e.Code)
                    .ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException) when (aborted.IsCancellationRequested)
        {
            // The client went away; the scheduler frees its sequence.
        }
    }

    private static async Task DrainAsync(Stream body, CancellationToken cancellationToken)
    {
        var buffer = System.Buffers.ArrayPool<byte>.Shared.Rent(64 << 10);
        try
        {
            while (await body.ReadAsync(buffer, cancellationToken).ConfigureAwait(false) > 0)
            {
            }
        }
        catch (BadHttpRequestException)
        {
            // Past Kestrel's own limit (MaxBodyBytes): the connection closes after the reply.
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private static OpenAiRequestException BodyTooLarge(InferenceService service, long limit) => new(
        $"the request body is larger than {limit} bytes, more than any prompt that fits this model's {service.ContextSize}-token context needs",
        null, "request_too_large", StatusCodes.Status413PayloadTooLarge);

    private static void CheckModel(string model, InferenceService service)
    {
        if (model.Length > 0 && model != service.ModelName)
        {
            throw new OpenAiRequestException($"The model '{model}' does not exist; this server serves '{service.ModelName}' (see /v1/models).", "model",
                "model_not_found");
        }
    }

    private static async Task RespondAsync(HttpContext http, InferenceService service, GenerationJob job, string id, string model, long created, bool chat,
        string? echo)
    {
        var n = job.Choices.Count;
        var texts = Enumerable.Range(0, n).Select(_ => new System.Text.StringBuilder(echo)).ToArray();
        var logprobs = job.Parameters.Logprobs ? Enumerable.Range(0, n).Select(_ => new List<TokenLogprob>()).ToArray() : null;
        var finals = new GenerationEvent[n];
        await foreach (var e in job.Events.ReadAllAsync(http.RequestAborted).ConfigureAwait(false))
        {
            texts[e.Index].Append(e.Text);
            if (e.Logprobs is { } lp)
            {
                logprobs?[e.Index].AddRange(lp);
            }

            if (e.Finish is not null)
            {
                finals[e.Index] = e;
            }
        }

        if (finals.FirstOrDefault(f => f.Error is not null) is { Error: { } error })
        {
            await WriteErrorAsync(http, 500, error, "server_error").ConfigureAwait(false);
            return;
        }

        var choices = new JsonArray();
        for (var i = 0; i < n; i++)
        {
            var lp = logprobs is null ? null : chat ? ChatLogprobs(service, logprobs[i]) : CompletionLogprobs(service, logprobs[i]);
            choices.Add(chat
                ? new JsonObject
                {
                    ["index"] = i,
                    ["message"] = new JsonObject { ["role"] = "assistant", ["content"] = texts[i].ToString() },
                    ["logprobs"] = lp,
                    ["finish_reason"] = FinishText(finals[i].Finish),
                }
                : new JsonObject { ["index"] = i, ["text"] = texts[i].ToString(), ["logprobs"] = lp, ["finish_reason"] = FinishText(finals[i].Finish) });
        }

        await http.Response.WriteAsJsonAsync(new JsonObject
        {
            ["id"] = id,
            ["object"] = chat ? "chat.completion" : "text_completion",
            ["created"] = created,
            ["model"] = model,
            ["choices"] = choices,
            ["usage"] = Usage(finals),
            ["timings"] = Timings(finals),
        }, http.RequestAborted).ConfigureAwait(false);
    }

    private static async Task StreamAsync(HttpContext http, InferenceService service, GenerationJob job, string id, string model, long created, bool chat,
        bool includeUsage, string? echo)
    {
        http.Response.ContentType = "text/event-stream";
        http.Response.Headers.CacheControl = "no-cache";
        http.Response.Headers["X-Accel-Buffering"] = "no";
        var stream = http.Response.Body;
        var n = job.Choices.Count;
        var started = new bool[n];
        var finals = new GenerationEvent[n];
        async Task SendAsync(JsonObject o)
        {
            await stream.WriteAsync(System.Text.Encoding.UTF8.GetBytes("data: " + o.ToJsonString() + "\n\n"), http.RequestAborted).ConfigureAwait(false);
            await stream.FlushAsync(http.RequestAborted).ConfigureAwait(false);
        }

        JsonObject Chunk(int index, string text, string? finish, IReadOnlyList<TokenLogprob>? tokens)
        {
            var lp = tokens is null || !job.Parameters.Logprobs ? null : chat ? ChatLogprobs(service, tokens) : CompletionLogprobs(service, tokens);
            JsonObject choice;
            if (chat)
            {
                var delta = new JsonObject();
                if (!started[index])
                {
                    delta["role"] = "assistant";
                }

                if (text.Length > 0 || finish is null)
                {
                    delta["content"] = text;
                }

                choice = new JsonObject { ["index"] = index, ["delta"] = delta, ["logprobs"] = lp, ["finish_reason"] = finish };
            }
            else
            {
                choice = new JsonObject { ["index"] = index, ["text"] = text, ["logprobs"] = lp, ["finish_reason"] = finish };
            }

            started[index] = true;
            return new JsonObject
            {
                ["id"] = id,
                ["object"] = chat ? "chat.completion.chunk" : "text_completion",
                ["created"] = created,
                ["model"] = model,
                ["choices"] = new JsonArray(choice),
            };
        }

        if (echo is not null)
        {
            for (var i = 0; i < n; i++)
            {
                await SendAsync(Chunk(i, echo, null, null)).ConfigureAwait(false);
            }
        }

        var failed = false;
        await foreach (var e in job.Events.ReadAllAsync(http.RequestAborted).ConfigureAwait(false))
        {
            if (e.Error is not null)
            {
                await SendAsync(new JsonObject { ["error"] = new JsonObject { ["message"] = e.Error, ["type"] = "server_error" } }).ConfigureAwait(false);
                failed = true;
                break;
            }

            if (e.Finish is null)
            {
                await SendAsync(Chunk(e.Index, e.Text, null, e.Logprobs)).ConfigureAwait(false);
                continue;
            }

            if (e.Text.Length > 0 || e.Logprobs is not null)
            {
                await SendAsync(Chunk(e.Index, e.Text, null, e.Logprobs)).ConfigureAwait(false);
            }

            finals[e.Index] = e;
            var final = Chunk(e.Index, "", FinishText(e.Finish), null);
            final["timings"] = Timings([e]); // as llama-server: on the last chunk (of each choice)
            await SendAsync(final).ConfigureAwait(false);
        }

        if (includeUsage && !failed)
        {
            await SendAsync(new JsonObject
            {
                ["id"] = id,
                ["object"] = chat ? "chat.completion.chunk" : "text_completion",
                ["created"] = created,
                ["model"] = model,
                ["choices"] = new JsonArray(),
                ["usage"] = Usage(finals),
            }).ConfigureAwait(false);
        }

        await stream.WriteAsync("data: [DONE]\n\n"u8.ToArray(), http.RequestAborted).ConfigureAwait(false);
        await stream.FlushAsync(http.RequestAborted).ConfigureAwait(false);
    }

    /// <summary>Chat's <c>logprobs</c>: <c>{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}], "refusal": null}</c>.</summary>
    private static JsonObject ChatLogprobs(InferenceService service, IReadOnlyList<TokenLogprob> tokens)
    {
        JsonObject Entry(int token, float logprob)
        {
            var bytes = service.TokenBytes(token);
            var list = new JsonArray();
            foreach (var b in bytes)
            {
                list.Add(JsonValue.Create((int)b));
            }

            return new JsonObject { ["token"] = System.Text.Encoding.UTF8.GetString(bytes), ["logprob"] = logprob, ["bytes"] = list };
        }

        var content = new JsonArray();
        foreach (var t in tokens)
        {
            var entry = Entry(t.Token, t.Logprob);
            entry["top_logprobs"] = new JsonArray([.. t.Top.Select(a => (JsonNode)Entry(a.Token, a.Logprob))]);
            content.Add(entry);
        }

        return new JsonObject { ["content"] = content, ["refusal"] = null };
    }

    /// <summary>
    /// Completions' <c>logprobs</c> (OpenAI's legacy shape): <c>{"tokens", "token_logprobs", "top_logprobs": [{token: logprob}],
    /// "text_offset"}</c>; each top_logprobs object holds the asked-for alternatives and always the sampled token.
    /// </summary>
    private static JsonObject CompletionLogprobs(InferenceService service, IReadOnlyList<TokenLogprob> tokens)
    {
        var text = new JsonArray();
        var logprobs = new JsonArray();
        var top = new JsonArray();
        var offsets = new JsonArray();
        foreach (var t in tokens)
        {
            var piece = service.TokenPiece(t.Token);
            text.Add(piece);
            logprobs.Add(t.Logprob);
            offsets.Add(t.TextOffset);
            var alternatives = new JsonObject();
            foreach (var a in t.Top)
            {
                alternatives[service.TokenPiece(a.Token)] = a.Logprob;
            }

            alternatives[piece] = t.Logprob;
            top.Add(alternatives);
        }

        return new JsonObject { ["tokens"] = text, ["token_logprobs"] = logprobs, ["top_logprobs"] = top, ["text_offset"] = offsets };
    }

    private static string? FinishText(FinishReason? reason) => reason switch
    {
        FinishReason.Stop => "stop",
        FinishReason.Length => "length",
        null => null,
        _ => "stop",
    };

    /// <summary>
    /// llama-server's <c>timings</c> (cache_n, prompt_n, prompt_ms, predicted_n, predicted_ms, ...) plus restore_ms,
    /// queue_ms and cache_lower_tier_n (of cache_n, the tokens fetched from disk or remote rather than found in memory). With n choices the token counts are summed over them (the other choices prefill nothing, so prompt_n
    /// counts the one shared prefill) and the times are choice 0's.
    /// </summary>
    private static JsonObject? Timings(GenerationEvent[] finals)
    {
        if (finals.Length == 0 || finals[0].Timings is not { } first)
        {
            return null;
        }

        var t = first with
        {
            CacheN = finals.Sum(f => f.Timings?.CacheN ?? 0),
            PromptN = finals.Sum(f => f.Timings?.PromptN ?? 0),
            PredictedN = finals.Sum(f => f.Timings?.PredictedN ?? 0),
            CacheLowerTierN = finals.Sum(f => f.Timings?.CacheLowerTierN ?? 0),
        };

        return new JsonObject
        {
            ["cache_n"] = t.CacheN,
            ["cache_lower_tier_n"] = t.CacheLowerTierN, // ours: of cache_n, fetched from disk or remote for this request
            ["prompt_n"] = t.PromptN,
            ["queue_ms"] = Math.Round(t.QueueMs, 3),
            ["restore_ms"] = Math.Round(t.RestoreMs, 3),
            ["prompt_ms"] = Math.Round(t.PromptMs, 3),
            ["prompt_per_token_ms"] = t.PromptN > 0 ? Math.Round(t.PromptMs / t.PromptN, 3) : 0,
            ["prompt_per_second"] = t.PromptMs > 0 ? Math.Round(t.PromptN * 1000 / t.PromptMs, 2) : 0,
            ["predicted_n"] = t.PredictedN,
            ["predicted_ms"] = Math.Round(t.PredictedMs, 3),
            ["predicted_per_token_ms"] = t.PredictedN > 1 ? Math.Round(t.PredictedMs / (t.PredictedN - 1), 3) : 0,
            ["predicted_per_second"] = t.PredictedMs > 0 && t.PredictedN > 1 ? Math.Round((t.PredictedN - 1) * 1000 / t.PredictedMs, 2) : 0,
        };
    }

    /// <summary>OpenAI's usage: the prompt counted once (choice 0's, as its cached tokens), completion tokens summed over the choices.</summary>
    private static JsonObject Usage(GenerationEvent[] finals)
    {
        var first = finals.Length > 0 ? finals[0].Usage ?? default : default;
        var completion = finals.Sum(f => f.Usage?.CompletionTokens ?? 0);
        return new JsonObject
        {
            ["prompt_tokens"] = first.PromptTokens,
            ["completion_tokens"] = completion,
            ["total_tokens"] = first.PromptTokens + completion,
            ["prompt_tokens_details"] = new JsonObject { ["cached_tokens"] = first.CachedTokens },
        };
    }

}
