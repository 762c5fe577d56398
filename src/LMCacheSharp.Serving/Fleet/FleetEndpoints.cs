using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Serving.Inference;
using LMCacheSharp.Serving.OpenAi;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace LMCacheSharp.Serving.Fleet;

/// <summary>
/// The endpoints the fleet controller calls on an instance, under <c>/lmcache/</c>: <c>tokenize</c> (a prompt or chat
/// messages, tokenized exactly as a completion or chat request is: template, BOS), <c>prefetch</c> (bring a prefix's
/// chunks from the lower tiers into memory) and <c>clear</c> (a prefix's chunks, or everything). The mutating ones need
/// the fleet token (<c>--controller-token</c>) when one is set.
/// </summary>
public static class FleetEndpoints
{
    /// <summary>Maps the endpoints on <paramref name="app"/> (before it starts).</summary>
    /// <param name="app">The serving application (<see cref="ServingApp.Build"/>).</param>
    /// <param name="service">Its inference service.</param>
    /// <param name="adminToken">Bearer token prefetch and clear need; null or empty: none.</param>
    public static void MapFleet(this WebApplication app, InferenceService service, string? adminToken)
    {
        ArgumentNullException.ThrowIfNull(app);
        ArgumentNullException.ThrowIfNull(service);
        app.MapPost("/lmcache/tokenize", (HttpContext http) => TokenizeEndpointAsync(http, service));
        app.MapPost("/lmcache/prefetch", (HttpContext http) => PrefetchEndpointAsync(http, service, adminToken));
        app.MapPost("/lmcache/clear", (HttpContext http) => ClearEndpointAsync(http, service, adminToken));
        app.MapPost("/lmcache/pin", (HttpContext http) => NotImplementedAsync(http, service, adminToken));
        app.MapPost("/lmcache/unpin", (HttpContext http) => NotImplementedAsync(http, service, adminToken));
    }

    private static Task TokenizeEndpointAsync(HttpContext http, InferenceService service) =>
        HandleAsync(http, service, null, body => Task.FromResult(Tokenize(service, body)));

    private static Task PrefetchEndpointAsync(HttpContext http, InferenceService service, string? token) =>
        HandleAsync(http, service, token, body => PrefetchAsync(http, service, body));

    private static Task ClearEndpointAsync(HttpContext http, InferenceService service, string? token) =>
        HandleAsync(http, service, token, body => ClearAsync(http, service, body));

    private static Task NotImplementedAsync(HttpContext http, InferenceService service, string? token) =>
        HandleAsync(http, service, token, _ => throw new OpenAiRequestException("pinning is not implemented yet (docs/fleet.md, Controller: limits)", null, "not_implemented", 501));

    private static async Task HandleAsync(HttpContext http, InferenceService service, string? token, Func<JsonElement, Task<JsonObject>> handle)
    {
        try
        {
            if (!string.IsNullOrEmpty(token) && !Authorized(http, token))
            {
                http.Response.Headers.WWWAuthenticate = "Bearer";
                throw new OpenAiRequestException("this endpoint needs the fleet token: Authorization: Bearer TOKEN (--controller-token)", null, "invalid_api_key", 401);
            }

            // The one body reader of serve: its size limit (413 after draining), bad JSON and bad UTF-8 as 400.
            using (var doc = await OpenAiEndpoints.ReadJsonBodyAsync(http, service).ConfigureAwait(false))
            {
                if (doc.RootElement.ValueKind != JsonValueKind.Object)
                {
                    throw new OpenAiRequestException("the body must be a JSON object", null, "invalid_json");
                }

                var answer = await handle(doc.RootElement).ConfigureAwait(false);
                await http.Response.WriteAsJsonAsync(answer, http.RequestAborted).ConfigureAwait(false);
            }
        }
        catch (OpenAiRequestException e)
        {
            await OpenAiEndpoints.WriteErrorAsync(http, e.Status, e.Message, e.Status == 401 ? "authentication_error" : "invalid_request_error", e.Param, e.Code).ConfigureAwait(false);
        }
    }

    private static bool Authorized(HttpContext http, string token)
    {
        var header = http.Request.Headers.Authorization.ToString();
        return header.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase) &&
            CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(header[7..].Trim()), Encoding.UTF8.GetBytes(token));
    }

    private static JsonObject Tokenize(InferenceService service, JsonElement body)
    {
        int[] tokens;
        if (body.TryGetProperty("prompt", out var prompt) && prompt.ValueKind == JsonValueKind.String)
        {
            tokens = service.TokenizeCompletion(prompt.GetString()!);
        }
        else if (body.TryGetProperty("messages", out _))
        {
            tokens = service.TokenizeChat(OpenAiRequestParser.ParseChat(body).Messages);
        }
        else
        {
            throw new OpenAiRequestException("give 'prompt' (a string) or 'messages' (chat messages)", "prompt");
        }

        return new JsonObject { ["tokens"] = new JsonArray([.. tokens.Select(t => JsonValue.Create(t))]) };
    }

    private static (int[] Tokens, CacheNamespace Namespace) PrefixOf(InferenceService service, JsonElement body)
    {
        if (service.Cache is not { IsEnabled: true } cache)
        {
            throw new OpenAiRequestException("this instance runs without the KV cache", null, "cache_disabled", 409);
        }

        if (!body.TryGetProperty("tokens", out var array) || array.ValueKind != JsonValueKind.Array)
        {
            throw new OpenAiRequestException("'tokens' is required (an array of token ids)", "tokens");
        }

        var tokens = new int[array.GetArrayLength()];
        var i = 0;
        foreach (var t in array.EnumerateArray())
        {
            if (t.ValueKind != JsonValueKind.Number || !t.TryGetInt32(out tokens[i]) || tokens[i] < 0)
            {
                throw new OpenAiRequestException($"'tokens[{i}]' must be a non-negative integer", "tokens");
            }

            i++;
        }

        service.CheckTokenIds(tokens);
        var ns = cache.Namespace;
        if (body.TryGetProperty("cache_salt", out var salt) && salt.ValueKind == JsonValueKind.String)
        {
            ns = ns.WithSalt(salt.GetString());
        }

        return (tokens, ns);
    }

    private static async Task<JsonObject> PrefetchAsync(HttpContext http, InferenceService service, JsonElement body)
    {
        var (tokens, ns) = PrefixOf(service, body);
        // Pinning brings every chunk of the leading run into memory (promotion from disk or the shared store); released at once.
        using var prefix = await service.Cache!.Engine.PinAsync(tokens, ns, http.RequestAborted).ConfigureAwait(false);
        return new JsonObject { ["prompt_tokens"] = tokens.Length, ["tokens_in_memory"] = prefix.Tokens };
    }

    private static async Task<JsonObject> ClearAsync(HttpContext http, InferenceService service, JsonElement body)
    {
        var engine = service.Cache?.Engine ?? throw new OpenAiRequestException("this instance runs without the KV cache", null, "cache_disabled", 409);
        if (body.TryGetProperty("all", out var all) && all.ValueKind == JsonValueKind.True)
        {
            await engine.Storage.ClearAsync(http.RequestAborted).ConfigureAwait(false);
            return new JsonObject { ["cleared"] = "all" };
        }

        if (!body.TryGetProperty("tokens", out _))
        {
            throw new OpenAiRequestException("give 'tokens' (clear that prefix's chunks, with its 'cache_salt') or \"all\": true", "tokens");
        }

        var (tokens, ns) = PrefixOf(service, body);
        var keys = engine.ComputeKeys(tokens, ns);
        foreach (var key in keys)
        {
            await engine.Storage.RemoveAsync(key, http.RequestAborted).ConfigureAwait(false);
        }

        return new JsonObject { ["cleared"] = "prefix", ["chunks"] = keys.Length };
    }
}
