using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using LMCacheSharp.Core.Engine;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Storage;
using LMCacheSharp.Serving.Inference;
using LMCacheSharp.Serving.OpenAi;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace LMCacheSharp.Serving.Fleet;

/// <summary>
/// The endpoints the fleet controller calls on an instance, under <c>/lmcache/</c>: <c>tokenize</c> (a prompt or chat
/// messages, tokenized exactly as a completion or chat request is: template, BOS), <c>prefetch</c> (bring a prefix's
/// chunks from the lower tiers into memory), <c>clear</c> (a prefix's chunks, or everything), and <c>pin</c> /
/// <c>unpin</c> (keep a prefix's chunks from eviction in the memory tier, the shared store behind <c>remote_url</c>, or
/// both). The mutating ones need the fleet token (<c>--controller-token</c>) when one is set.
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
        app.MapPost("/lmcache/pin", (HttpContext http) => PinEndpointAsync(http, service, adminToken, pin: true));
        app.MapPost("/lmcache/unpin", (HttpContext http) => PinEndpointAsync(http, service, adminToken, pin: false));
    }

    private static Task TokenizeEndpointAsync(HttpContext http, InferenceService service) =>
        HandleAsync(http, service, null, body => Task.FromResult(Tokenize(service, body)));

    private static Task PrefetchEndpointAsync(HttpContext http, InferenceService service, string? token) =>
        HandleAsync(http, service, token, body => PrefetchAsync(http, service, body));

    private static Task ClearEndpointAsync(HttpContext http, InferenceService service, string? token) =>
        HandleAsync(http, service, token, body => ClearAsync(http, service, body));

    private static Task PinEndpointAsync(HttpContext http, InferenceService service, string? token, bool pin) =>
        HandleAsync(http, service, token, body => PinAsync(http, service, body, pin));

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
            await OpenAiEndpoints.WriteErrorAsync(http, e.Status, e.Message, Http.OpenAiErrors.TypeOf(e.Status), e.Param, e.Code).ConfigureAwait(false);
        }
    }

    private static bool Authorized(HttpContext http, string token)
    {
        var header = http.Request.Headers.Authorization.ToString();
        return header.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase) &&
            CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(header[7..].Trim()), Encoding.UTF8.GetBytes(token));
    }

    private static JsonObject Tokenize(InferenceService service, JsonElement body) =>
        new() { ["tokens"] = new JsonArray([.. TokensOf(service, body).Select(t => JsonValue.Create(t))]) };

    // A prompt or chat messages, tokenized as a completion or chat request is.
    private static int[] TokensOf(InferenceService service, JsonElement body)
    {
        if (body.TryGetProperty("prompt", out var prompt) && prompt.ValueKind == JsonValueKind.String)
        {
            return service.TokenizeCompletion(OpenAiRequestParser.ReadString(prompt, "prompt"));
        }

        if (body.TryGetProperty("messages", out _))
        {
            return service.TokenizeChat(OpenAiRequestParser.ParseChat(body).Messages);
        }

        throw new OpenAiRequestException("give 'prompt' (a string) or 'messages' (chat messages)", "prompt");
    }

    private static (int[] Tokens, CacheNamespace Namespace) PrefixOf(InferenceService service, JsonElement body)
    {
        if (service.Cache is not { IsEnabled: true } cache)
        {
            throw new OpenAiRequestException("this instance runs without the KV cache", null, "cache_disabled", 409);
        }

        if (!body.TryGetProperty("tokens", out var array) || array.ValueKind != JsonValueKind.Array)
        {
            if (body.TryGetProperty("prompt", out _) || body.TryGetProperty("messages", out _))
            {
                // Tokenized here as a completion or chat request would be (the controller sends token ids instead).
                return (TokensOf(service, body), SaltedNamespace(cache.Namespace, body));
            }

            throw new OpenAiRequestException("'tokens' is required (an array of token ids), or 'prompt' or 'messages'", "tokens");
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
        return (tokens, SaltedNamespace(cache.Namespace, body));
    }

    private static CacheNamespace SaltedNamespace(CacheNamespace ns, JsonElement body) =>
        body.TryGetProperty("cache_salt", out var salt) && salt.ValueKind == JsonValueKind.String ? ns.WithSalt(salt.GetString()) : ns;

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

        if (!body.TryGetProperty("tokens", out _) && !body.TryGetProperty("prompt", out _) && !body.TryGetProperty("messages", out _))
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

    /// <summary>
    /// POST /lmcache/pin and /lmcache/unpin: the prefix (token ids, a prompt or chat messages, with its <c>cache_salt</c>) in
    /// the tiers the body names (<c>"tier": "memory"</c> or <c>"remote"</c>, or <c>"tiers": [...]</c>; default memory). A pin
    /// is all or nothing: every tier is checked first (400 for a tier this instance lacks or that cannot pin), and when a
    /// later tier refuses (507 over its limit, 503 unreachable) the tiers pinned before it are unpinned again.
    /// </summary>
    private static async Task<JsonObject> PinAsync(HttpContext http, InferenceService service, JsonElement body, bool pin)
    {
        var engine = service.Cache is { IsEnabled: true } cache ? cache.Engine
            : throw new OpenAiRequestException("this instance runs without the KV cache", null, "cache_disabled", 409);
        var (memory, remotes) = PinTiers(engine, body);
        foreach (var remote in remotes.Where(r => !r.CanPin))
        {
            // A tier that cannot pin says why (Redis: no per-key exemption from its eviction) in its answer.
            var refusal = await remote.PinAsync(ReadOnlyMemory<ChunkHash>.Empty, http.RequestAborted).ConfigureAwait(false);
            throw new OpenAiRequestException(refusal.Message ?? "this remote tier cannot pin", "tier", "pin_unsupported");
        }

        var (tokens, ns) = PrefixOf(service, body);
        var verb = pin ? "pinned" : "unpinned";
        var answer = new JsonObject { ["prompt_tokens"] = tokens.Length };
        var keys = engine.ComputeKeys(tokens, ns);
        answer["prompt_chunks"] = keys.Length;
        PrefixPinResult? memoryPin = null;
        if (memory)
        {
            var result = pin ? await engine.PinPrefixAsync(tokens, ns, http.RequestAborted).ConfigureAwait(false) : engine.UnpinPrefix(tokens, ns);
            if (result.Memory.OverLimit)
            {
                var totals = result.Memory.Totals;
                throw new OpenAiRequestException(
                    $"pinning this prefix would add {result.Memory.RequestedBytes} bytes to the {totals.Bytes} pinned in memory, over the limit of {totals.MaxBytes} bytes (max_pinned_size); nothing was pinned",
                    null, "pin_limit", 507);
            }

            memoryPin = result;
            answer["memory"] = new JsonObject
            {
                [verb + "_chunks"] = result.Memory.Changed,
                ["pinned_tokens"] = result.Tokens,
                ["missing_chunks"] = result.Memory.Missing,
                ["total_pinned_chunks"] = result.Memory.Totals.Chunks,
                ["total_pinned_bytes"] = result.Memory.Totals.Bytes,
                ["max_pinned_bytes"] = result.Memory.Totals.MaxBytes,
            };
        }

        foreach (var remote in remotes)
        {
            // Every chunk key of the prompt: the store pins those it holds.
            var outcome = pin ? await remote.PinAsync(keys, http.RequestAborted).ConfigureAwait(false) : await remote.UnpinAsync(keys, http.RequestAborted).ConfigureAwait(false);
            if (outcome.Status != TierPinStatus.Ok)
            {
                var undone = "";
                if (pin && memoryPin is { Memory.Changed: > 0 })
                {
                    engine.UnpinPrefix(tokens, ns); // all or nothing: the memory tier's pins of this call go again
                    undone = " (the memory tier's pins of this request were undone)";
                }
                else if (!pin && memoryPin is { } done)
                {
                    undone = $" (the memory tier unpinned {done.Memory.Changed} chunks)";
                }

                var (status, code) = outcome.Status switch
                {
                    TierPinStatus.OverLimit => (507, "pin_limit"),
                    TierPinStatus.Unavailable => (503, "remote_unavailable"),
                    _ => (400, "pin_unsupported"),
                };
                throw new OpenAiRequestException(outcome.Message + undone, "tier", code, status);
            }

            answer["remote"] = new JsonObject { [verb + "_chunks"] = outcome.Changed, ["missing_chunks"] = keys.Length - outcome.Changed };
        }

        return answer;
    }

    // The tiers a pin names, checked before anything is pinned: a tier the instance lacks, or one that cannot pin, is a 400.
    private static (bool Memory, List<IPinnableTier> Remotes) PinTiers(Core.Engine.CacheEngine engine, JsonElement body)
    {
        var names = new List<string>();
        if (body.TryGetProperty("tiers", out var tiers))
        {
            if (tiers.ValueKind != JsonValueKind.Array || tiers.GetArrayLength() == 0 || tiers.EnumerateArray().Any(t => t.ValueKind != JsonValueKind.String))
            {
                throw new OpenAiRequestException("'tiers' must be a non-empty array of tier names (\"memory\", \"remote\")", "tiers");
            }

            names.AddRange(tiers.EnumerateArray().Select(t => t.GetString()!));
        }
        else if (body.TryGetProperty("tier", out var tier))
        {
            names.Add(tier.ValueKind == JsonValueKind.String ? tier.GetString()! : throw new OpenAiRequestException("'tier' must be \"memory\" or \"remote\"", "tier"));
        }
        else
        {
            names.Add("memory");
        }

        var memory = false;
        var remotes = new List<IPinnableTier>();
        foreach (var name in names.Distinct(StringComparer.Ordinal))
        {
            switch (name)
            {
                case "memory":
                    memory = engine.Storage.Memory is not null
                        ? true
                        : throw new OpenAiRequestException("this instance has no memory tier to pin in (local_cpu: false)", "tier", "pin_unsupported");
                    break;
                case "remote":
                    var found = engine.Storage.Tiers.Where(t => t.Kind == StorageTierKind.Remote).ToList();
                    if (found.Count == 0)
                    {
                        throw new OpenAiRequestException("this instance has no remote tier (remote_url) to pin in", "tier", "pin_unsupported");
                    }

                    foreach (var t in found)
                    {
                        remotes.Add(t as IPinnableTier
                            ?? throw new OpenAiRequestException($"the remote tier ({t.GetType().Name}) cannot pin", "tier", "pin_unsupported"));
                    }

                    break;
                default:
                    throw new OpenAiRequestException($"unknown tier '{name}': pin in \"memory\" or \"remote\"", "tier");
            }
        }

        return (memory, remotes);
    }
}
