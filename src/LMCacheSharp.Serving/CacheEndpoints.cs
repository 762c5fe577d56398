using System.Text.Json;
using System.Text.Json.Nodes;
using LMCacheSharp.Core.Engine;
using LMCacheSharp.Serving.Inference;
using LMCacheSharp.Serving.OpenAi;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace LMCacheSharp.Serving;

/// <summary>
/// What a router asks an instance to place a request: <c>POST /lookup</c> (how many of the request's prompt tokens each
/// tier holds, and the load) and <c>GET /load</c> (the load alone). Documented in docs/fleet.md, section Router.
/// </summary>
public static class CacheEndpoints
{
    /// <summary>Maps <c>POST /lookup</c> and <c>GET /load</c> onto <paramref name="app"/>.</summary>
    public static IEndpointRouteBuilder MapCacheLookup(this IEndpointRouteBuilder app, InferenceService service)
    {
        ArgumentNullException.ThrowIfNull(app);
        ArgumentNullException.ThrowIfNull(service);
        app.MapPost("/lookup", (HttpContext http) => LookupAsync(http, service));
        app.MapGet("/load", () => Results.Json(LoadJson(service)));
        return app;
    }

    /// <summary>
    /// POST /lookup[?tiers=memory,disk,remote]: the body of a /v1/completions (prompt as text or token ids) or
    /// /v1/chat/completions (messages) request, with its model and cache_salt, tokenized as that request would be. Answers
    /// <c>{"model", "prompt_tokens", "chunk_size", "cached_tokens": {"memory", "disk", "remote"}, "load": {"in_flight", "queued"}}</c>;
    /// a tier not asked is null. Pins, fetches and promotes nothing.
    /// </summary>
    private static async Task LookupAsync(HttpContext http, InferenceService service)
    {
        try
        {
            var tiers = ParseTiers(http.Request.Query["tiers"]);
            int[] prompt;
            GenerationParameters parameters;
            using (var doc = await OpenAiEndpoints.ReadJsonBodyAsync(http, service).ConfigureAwait(false))
            {
                var body = doc.RootElement;
                if (body.ValueKind == JsonValueKind.Object && body.TryGetProperty("messages", out _))
                {
                    var chat = OpenAiRequestParser.ParseChat(body);
                    CheckModel(chat.Model, service);
                    prompt = service.TokenizeChat(chat.Messages);
                    parameters = chat.Parameters;
                }
                else if (body.ValueKind == JsonValueKind.Object && !body.TryGetProperty("prompt", out _))
                {
                    throw new OpenAiRequestException("'prompt' (as for /v1/completions) or 'messages' (as for /v1/chat/completions) is required", "prompt");
                }
                else
                {
                    var completion = OpenAiRequestParser.ParseCompletion(body);
                    CheckModel(completion.Model, service);
                    prompt = completion.PromptTokens is { } ids ? service.CheckTokenIds(ids) : service.TokenizeCompletion(completion.Prompt);
                    parameters = completion.Parameters;
                }
            }

            var counts = service.Cache is { } cache
                ? await cache.CountByTierAsync(prompt, service.NamespaceOf(parameters), tiers, http.RequestAborted).ConfigureAwait(false)
                : TierTokenCounts.None(tiers);
            await http.Response.WriteAsJsonAsync(new JsonObject
            {
                ["model"] = service.ModelName,
                ["prompt_tokens"] = prompt.Length,
                ["chunk_size"] = service.Cache?.ChunkSize,
                ["cached_tokens"] = new JsonObject { ["memory"] = counts.Memory, ["disk"] = counts.Disk, ["remote"] = counts.Remote },
                ["load"] = LoadJson(service),
            }, http.RequestAborted).ConfigureAwait(false);
        }
        catch (OpenAiRequestException e)
        {
            await OpenAiEndpoints.WriteErrorAsync(http, e.Status, e.Message, "invalid_request_error", e.Param, e.Code).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (http.RequestAborted.IsCancellationRequested)
        {
            // The router gave up waiting (its lookup timeout): nothing to answer.
        }
    }

    private static JsonObject LoadJson(InferenceService service)
    {
        var (running, queued) = service.Load;
        return new JsonObject { ["in_flight"] = running, ["queued"] = queued, ["role"] = ServingOptions.RoleName(service.Role) };
    }

    /// <summary>The <c>tiers</c> query value: a comma-separated list of memory, disk and remote; absent: all.</summary>
    private static LookupTiers ParseTiers(Microsoft.Extensions.Primitives.StringValues values)
    {
        if (values.Count == 0)
        {
            return LookupTiers.All;
        }

        var tiers = LookupTiers.Memory;
        foreach (var part in string.Join(',', values.ToArray()).Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            tiers |= part switch
            {
                "memory" => LookupTiers.Memory,
                "disk" => LookupTiers.Disk,
                "remote" => LookupTiers.Remote,
                _ => throw new OpenAiRequestException($"'tiers' lists memory, disk and remote (comma-separated), got '{part}'", "tiers"),
            };
        }

        return tiers;
    }

    private static void CheckModel(string model, InferenceService service)
    {
        if (model.Length > 0 && model != service.ModelName)
        {
            throw new OpenAiRequestException($"The model '{model}' does not exist; this server serves '{service.ModelName}' (see /v1/models).", "model",
                "model_not_found", StatusCodes.Status404NotFound);
        }
    }
}
