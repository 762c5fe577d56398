using System.Diagnostics;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;

namespace LMCacheSharp.Controller;

public static partial class ControllerApp
{
    private static void MapEndpoints(WebApplication app, ControllerOptions options, InstanceRegistry registry)
    {
        var directory = app.Services.GetRequiredService<ChunkDirectory>();
        var routers = app.Services.GetRequiredService<RouterReports>();
        var http = app.Services.GetRequiredService<HttpClient>();
        var metrics = registry.Metrics;

        app.MapGet("/health", () => Results.Json(new JsonObject
        {
            ["status"] = "ok",
            ["instances"] = registry.Count,
            ["chunks"] = directory.Count,
        }));
        app.MapGet("/instances", () => Results.Json(new JsonObject { ["instances"] = InstancesJson(registry, directory) }));
        app.MapGet("/", () => Results.Content(Dashboard.Html, "text/html; charset=utf-8"));
        app.MapGet("/events", (HttpContext context) => StreamSnapshotsAsync(context, registry, directory, routers));

        Mutating(app, "/instances/register", options, metrics, body =>
        {
            var instance = registry.Register(ParseRegistration(body));
            return new JsonObject
            {
                ["id"] = instance.Id,
                ["heartbeat_interval_s"] = options.HeartbeatInterval.TotalSeconds,
                ["heartbeat_timeout_s"] = options.HeartbeatTimeout.TotalSeconds,
            };
        });
        Mutating(app, "/instances/heartbeat", options, metrics, body =>
        {
            var id = ControllerJson.RequiredString(body, "id");
            var load = body["load"] as JsonObject;
            var stats = body["stats"] is JsonObject s
                ? new InstanceStats(ControllerJson.OptionalLong(s, "lookup_tokens"), ControllerJson.OptionalLong(s, "hit_tokens"),
                    ControllerJson.OptionalLong(s, "memory_used_bytes"), ControllerJson.OptionalLong(s, "memory_capacity_bytes"),
                    ControllerJson.OptionalLong(s, "disk_used_bytes"), ControllerJson.OptionalLong(s, "disk_capacity_bytes"))
                : (InstanceStats?)null;
            if (!registry.Heartbeat(id, new InstanceLoad((int)ControllerJson.OptionalLong(load, "in_flight"), (int)ControllerJson.OptionalLong(load, "queued")), stats))
            {
                throw new ControllerRequestException(404, $"no instance '{id}' (expired, or the controller restarted): register again", "id", "unknown_instance");
            }

            return new JsonObject { ["ok"] = true };
        });
        Mutating(app, "/instances/deregister", options, metrics, body =>
        {
            var id = ControllerJson.RequiredString(body, "id");
            return registry.Deregister(id) ? new JsonObject { ["ok"] = true }
                : throw new ControllerRequestException(404, $"no instance '{id}'", "id", "unknown_instance");
        });
        Mutating(app, "/router/report", options, metrics, body =>
        {
            var total = ControllerJson.OptionalLong(body, "decisions_total", -1);
            if (total < 0)
            {
                throw new ControllerRequestException(400, "'decisions_total' is required (a non-negative running total)", "decisions_total");
            }

            routers.Report(ControllerJson.RequiredString(body, "router"), ControllerJson.OptionalString(body, "policy"), total);
            return new JsonObject { ["ok"] = true };
        });
        app.MapPost("/lookup", (HttpContext context) => HandleAsync(context, async body =>
        {
            var (model, instances) = SelectModel(registry, body);
            var salt = ControllerJson.OptionalString(body, "cache_salt");
            var tokens = await PromptTokensAsync(context, body, instances, options, http).ConfigureAwait(false);
            var start = Stopwatch.GetTimestamp();
            var hits = FleetLookup.Lookup(directory, instances, tokens, salt);
            var elapsed = Stopwatch.GetElapsedTime(start);
            metrics.Lookup(elapsed);
            var list = new JsonArray();
            foreach (var (instance, hit) in hits.OrderByDescending(h => h.Hit.Memory).ThenByDescending(h => h.Hit.Total).ThenBy(h => h.Instance.Load.InFlight))
            {
                list.Add(new JsonObject
                {
                    ["id"] = instance.Id,
                    ["url"] = instance.Registration.Url,
                    ["cached_tokens"] = new JsonObject { ["memory"] = hit.Memory, ["disk"] = hit.Disk, ["remote"] = hit.Remote, ["total"] = hit.Total },
                    ["load"] = LoadJson(instance.Load),
                });
            }

            return new JsonObject { ["model"] = model, ["prompt_tokens"] = tokens.Length, ["lookup_us"] = Math.Round(elapsed.TotalMicroseconds), ["instances"] = list };
        }));
        foreach (var op in new[] { "pin", "unpin", "prefetch", "clear" })
        {
            Mutating(app, "/" + op, options, metrics, (context, body) => ForwardAsync(context, op, body, registry, options, http));
        }
    }

    /// <summary>A POST that needs the token, reads a JSON object and answers one (or a 4xx in OpenAI's shape).</summary>
    private static void Mutating(WebApplication app, string path, ControllerOptions options, ControllerMetrics metrics, Func<HttpContext, JsonObject, Task<JsonObject>> handle) =>
        app.MapPost(path, (HttpContext context) => MutateAsync(context, options, metrics, handle));

    private static void Mutating(WebApplication app, string path, ControllerOptions options, ControllerMetrics metrics, Func<JsonObject, JsonObject> handle) =>
        Mutating(app, path, options, metrics, (_, body) => Task.FromResult(handle(body)));

    private static async Task MutateAsync(HttpContext context, ControllerOptions options, ControllerMetrics metrics, Func<HttpContext, JsonObject, Task<JsonObject>> handle)
    {
        if (await AuthorizeAsync(context, options, metrics).ConfigureAwait(false))
        {
            await HandleAsync(context, body => handle(context, body)).ConfigureAwait(false);
        }
    }

    private static async Task HandleAsync(HttpContext context, Func<JsonObject, Task<JsonObject>> handle)
    {
        try
        {
            var body = await ControllerJson.ReadObjectAsync(context).ConfigureAwait(false);
            var answer = await handle(body).ConfigureAwait(false);
            await context.Response.WriteAsJsonAsync(answer, context.RequestAborted).ConfigureAwait(false);
        }
        catch (ControllerRequestException e)
        {
            await ControllerJson.WriteErrorAsync(context, e.Status, e.Message, e.Param, e.Code).ConfigureAwait(false);
        }
    }

    /// <summary>The model a request names (or the only one registered) and its instances.</summary>
    private static (string Model, IReadOnlyList<FleetInstance> Instances) SelectModel(InstanceRegistry registry, JsonObject body)
    {
        var all = registry.All;
        var model = ControllerJson.OptionalString(body, "model");
        if (model is null)
        {
            var models = all.Select(i => i.Registration.Model).Distinct(StringComparer.Ordinal).ToList();
            model = models.Count == 1 ? models[0]
                : throw new ControllerRequestException(400, models.Count == 0 ? "no instance is registered" : $"'model' is required: {models.Count} models are registered", "model",
                    models.Count == 0 ? "no_instances" : "invalid_request");
        }

        var instances = all.Where(i => i.Registration.Model == model).ToList();
        return instances.Count > 0 ? (model, instances)
            : throw new ControllerRequestException(404, $"no instance serves the model '{model}'", "model", "model_not_found");
    }

    /// <summary>The request's token ids: given, or the prompt or messages tokenized by an instance of the model.</summary>
    private static async Task<int[]> PromptTokensAsync(HttpContext context, JsonObject body, IReadOnlyList<FleetInstance> instances, ControllerOptions options, HttpClient http)
    {
        if (ControllerJson.OptionalTokens(body, "tokens", options.MaxLookupTokens) is { } tokens)
        {
            return tokens;
        }

        JsonObject request;
        if (body["prompt"] is JsonValue p && p.TryGetValue<string>(out var prompt))
        {
            request = new JsonObject { ["prompt"] = prompt };
        }
        else if (body["messages"] is JsonArray messages)
        {
            request = new JsonObject { ["messages"] = messages.DeepClone() };
        }
        else
        {
            throw new ControllerRequestException(400, "give 'tokens' (token ids), 'prompt' (a string) or 'messages' (chat messages)", "tokens");
        }

        // Tokenized as the instance tokenizes a completion or chat request (template, BOS), by the first instance that answers.
        string? lastError = null;
        foreach (var instance in instances)
        {
            try
            {
                using var response = await http.PostAsJsonAsync(instance.Registration.Url + "/lmcache/tokenize", request, context.RequestAborted).ConfigureAwait(false);
                var answer = await response.Content.ReadFromJsonAsync<JsonObject>(context.RequestAborted).ConfigureAwait(false);
                if (!response.IsSuccessStatusCode)
                {
                    var message = answer?["error"]?["message"]?.ToString() ?? response.ReasonPhrase;
                    throw new ControllerRequestException((int)response.StatusCode is >= 400 and < 500 ? (int)response.StatusCode : 502,
                        $"instance {instance.Id} could not tokenize the request: {message}", request.First().Key, "tokenize_failed");
                }

                return answer is not null ? ControllerJson.OptionalTokens(answer, "tokens", options.MaxLookupTokens) ?? [] : [];
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException or System.Text.Json.JsonException && !context.RequestAborted.IsCancellationRequested)
            {
                lastError = $"{instance.Id}: {e.Message}";
            }
        }

        throw new ControllerRequestException(502, $"no instance of the model could tokenize the request ({lastError})", null, "tokenize_failed");
    }

    /// <summary>
    /// Forwards a pin, unpin, prefetch or clear to the instances it names (<c>instance</c>: an id; else every instance of
    /// <c>model</c>, or every instance for a clear without one) at <c>POST {url}/lmcache/{op}</c>, with the controller's token.
    /// </summary>
    private static async Task<JsonObject> ForwardAsync(HttpContext context, string op, JsonObject body, InstanceRegistry registry, ControllerOptions options, HttpClient http)
    {
        IReadOnlyList<FleetInstance> targets;
        if (ControllerJson.OptionalString(body, "instance") is { } id)
        {
            targets = registry.Find(id) is { } one ? [one] : throw new ControllerRequestException(404, $"no instance '{id}'", "instance", "unknown_instance");
        }
        else if (op == "clear" && body["model"] is null)
        {
            targets = registry.All;
        }
        else
        {
            targets = SelectModel(registry, body).Instances;
        }

        if (op != "clear" || body["tokens"] is not null || body["prompt"] is not null || body["messages"] is not null)
        {
            // The instances take token ids: a prompt or messages is tokenized here once.
            if (op != "clear" || body["tokens"] is null)
            {
                var tokens = await PromptTokensAsync(context, body, targets, options, http).ConfigureAwait(false);
                body = (JsonObject)body.DeepClone();
                body.Remove("prompt");
                body.Remove("messages");
                body["tokens"] = new JsonArray([.. tokens.Select(t => JsonValue.Create(t))]);
            }
        }

        var results = new JsonArray();
        foreach (var instance in targets)
        {
            var entry = new JsonObject { ["id"] = instance.Id };
            try
            {
                using var request = new HttpRequestMessage(HttpMethod.Post, instance.Registration.Url + "/lmcache/" + op) { Content = JsonContent.Create(body) };
                if (!string.IsNullOrEmpty(options.AuthToken))
                {
                    request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", options.AuthToken);
                }

                using var response = await http.SendAsync(request, context.RequestAborted).ConfigureAwait(false);
                entry["status"] = (int)response.StatusCode;
                entry["result"] = await response.Content.ReadFromJsonAsync<JsonNode>(context.RequestAborted).ConfigureAwait(false);
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException or System.Text.Json.JsonException && !context.RequestAborted.IsCancellationRequested)
            {
                entry["status"] = 502;
                entry["result"] = ControllerJson.Error(e.Message, "server_error", null, "instance_unreachable");
            }

            results.Add(entry);
        }

        return new JsonObject { ["instances"] = results };
    }

    private static JsonObject LoadJson(InstanceLoad load) => new() { ["in_flight"] = load.InFlight, ["queued"] = load.Queued };

    internal static JsonArray InstancesJson(InstanceRegistry registry, ChunkDirectory directory)
    {
        var list = new JsonArray();
        foreach (var instance in registry.All)
        {
            var r = instance.Registration;
            var (memory, disk, remote) = directory.CountsOf(instance.Index);
            var stats = instance.Stats;
            var age = registry.HeartbeatAge(instance);
            var events = instance.Events;
            list.Add(new JsonObject
            {
                ["id"] = instance.Id,
                ["url"] = r.Url,
                ["model"] = r.Model,
                ["fingerprint"] = r.Namespace?.ModelFingerprint,
                ["chunk_size"] = r.ChunkSize,
                ["tiers"] = new JsonArray([.. r.Tiers.Select(t => JsonValue.Create(t))]),
                ["healthy"] = events is null || !events.CatchingUp,
                ["heartbeat_age_s"] = Math.Round(age, 3),
                ["load"] = LoadJson(instance.Load),
                ["hit_rate"] = Math.Round(stats.HitRate, 4),
                ["stats"] = new JsonObject
                {
                    ["lookup_tokens"] = stats.LookupTokens,
                    ["hit_tokens"] = stats.HitTokens,
                    ["memory_used_bytes"] = stats.MemoryUsedBytes,
                    ["memory_capacity_bytes"] = stats.MemoryCapacityBytes,
                    ["disk_used_bytes"] = stats.DiskUsedBytes,
                    ["disk_capacity_bytes"] = stats.DiskCapacityBytes,
                },
                ["chunks"] = new JsonObject { ["memory"] = memory, ["disk"] = disk, ["remote"] = remote },
                ["kv_events"] = r.KvEvents is null ? null : new JsonObject
                {
                    ["endpoint"] = r.KvEvents,
                    ["replay"] = r.KvEventsReplay,
                    ["next_sequence"] = events?.NextSequence ?? 0,
                    ["gaps"] = events?.Gaps ?? 0,
                    ["replays"] = events?.Replays ?? 0,
                    ["lost_batches"] = events?.LostBatches ?? 0,
                },
            });
        }

        return list;
    }

    /// <summary>The dashboard's data: instances, top prefixes, routers.</summary>
    internal static JsonObject Snapshot(InstanceRegistry registry, ChunkDirectory directory, RouterReports routers, long sequence)
    {
        var prefixes = new JsonArray();
        foreach (var p in directory.TopPrefixes(10))
        {
            prefixes.Add(new JsonObject
            {
                ["root"] = p.RootHash.ToString("x16", System.Globalization.CultureInfo.InvariantCulture),
                ["first_tokens"] = new JsonArray([.. p.FirstTokens.Select(t => JsonValue.Create(t))]),
                ["chunks"] = p.Chunks,
                ["tokens"] = p.Tokens,
                ["instances"] = p.Instances,
            });
        }

        var routerList = new JsonArray();
        foreach (var (router, policy, total, perSecond, age) in routers.Snapshot())
        {
            routerList.Add(new JsonObject { ["router"] = router, ["policy"] = policy, ["decisions_total"] = total, ["decisions_per_s"] = Math.Round(perSecond, 2), ["age_s"] = Math.Round(age, 1) });
        }

        return new JsonObject
        {
            ["seq"] = sequence,
            ["time"] = DateTimeOffset.UtcNow.ToString("O", System.Globalization.CultureInfo.InvariantCulture),
            ["chunks"] = directory.Count,
            ["instances"] = InstancesJson(registry, directory),
            ["top_prefixes"] = prefixes,
            ["routers"] = routerList,
        };
    }

    /// <summary>GET /events: a snapshot as a server-sent event every second until the client leaves.</summary>
    private static async Task StreamSnapshotsAsync(HttpContext context, InstanceRegistry registry, ChunkDirectory directory, RouterReports routers)
    {
        context.Response.ContentType = "text/event-stream";
        context.Response.Headers.CacheControl = "no-cache";
        context.Response.Headers["X-Accel-Buffering"] = "no";
        var aborted = context.RequestAborted;
        long sequence = 0;
        // ?limit=N ends the stream after N snapshots (the dashboard's own ?limit=N, for headless browsers).
        var limit = int.TryParse(context.Request.Query["limit"], out var n) && n > 0 ? n : int.MaxValue;
        try
        {
            while (!aborted.IsCancellationRequested && sequence < limit)
            {
                var json = Snapshot(registry, directory, routers, ++sequence).ToJsonString();
                await context.Response.WriteAsync("event: snapshot\ndata: " + json + "\n\n", aborted).ConfigureAwait(false);
                await context.Response.Body.FlushAsync(aborted).ConfigureAwait(false);
                if (sequence >= limit)
                {
                    break;
                }

                await Task.Delay(TimeSpan.FromSeconds(1), aborted).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException)
        {
            // the client left
        }
    }
}
