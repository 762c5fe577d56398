using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text.Json.Nodes;
using LMCacheSharp.Core.Storage;
using LMCacheSharp.KvEvents;
using LMCacheSharp.Serving.Inference;
using Microsoft.Extensions.Logging;

namespace LMCacheSharp.Serving.Fleet;

/// <summary>
/// Keeps a running <c>lmcache serve</c> registered with a fleet controller (<c>--controller URL</c>): registers (URL,
/// model, cache namespace, chunk size, tiers, KV event endpoints), then heartbeats with its load and cache figures at the
/// interval the controller asks for. A heartbeat the controller does not know (it restarted, or expired this instance)
/// leads to a new registration, after which the controller replays this instance's events. Failures never stop serving:
/// the first is logged as a warning, the rest at debug until a call succeeds again, and calls back off up to 30 s.
/// </summary>
public sealed partial class ControllerRegistration : IAsyncDisposable
{
    private static readonly TimeSpan MaxBackoff = TimeSpan.FromSeconds(30);

    private readonly Uri _controller;
    private readonly string? _token;
    private readonly string _selfUrl;
    private readonly InferenceService _service;
    private readonly ZmqKvEventPublisher? _events;
    private readonly ILogger _log;
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(10) };
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _loop;
    private string? _id;

    private ControllerRegistration(Uri controller, string? token, string selfUrl, InferenceService service, ZmqKvEventPublisher? events, ILogger log)
    {
        _controller = controller;
        _token = token;
        _selfUrl = selfUrl;
        _service = service;
        _events = events;
        _log = log;
        _loop = Task.Run(RunAsync);
    }

    /// <summary>The id the controller gave this instance, or null while not registered.</summary>
    public string? InstanceId => Volatile.Read(ref _id);

    /// <summary>Registrations that succeeded (the first, and one after each controller restart or expiry).</summary>
    public int Registrations { get; private set; }

    /// <summary>Starts registering <paramref name="selfUrl"/> with <paramref name="controller"/> in the background.</summary>
    /// <param name="controller">The controller's base URL, e.g. http://127.0.0.1:9300.</param>
    /// <param name="token">The controller's token (<c>--controller-token</c>), or null.</param>
    /// <param name="selfUrl">This instance's base URL as the controller and routers reach it.</param>
    /// <param name="service">The inference service (model, cache, load).</param>
    /// <param name="events">Its KV event publisher, or null when it publishes none.</param>
    /// <param name="log">Where failures go.</param>
    public static ControllerRegistration Start(Uri controller, string? token, string selfUrl, InferenceService service, ZmqKvEventPublisher? events, ILogger log)
    {
        ArgumentNullException.ThrowIfNull(controller);
        ArgumentNullException.ThrowIfNull(service);
        return new ControllerRegistration(controller, token, selfUrl.TrimEnd('/'), service, events, log);
    }

    private async Task RunAsync()
    {
        var ct = _stop.Token;
        var backoff = TimeSpan.FromSeconds(1);
        var interval = TimeSpan.FromSeconds(2);
        var failing = false;
        while (!ct.IsCancellationRequested)
        {
            try
            {
                if (_id is null)
                {
                    var answer = await PostAsync("/instances/register", RegistrationBody(), ct).ConfigureAwait(false);
                    Volatile.Write(ref _id, answer["id"]!.GetValue<string>());
                    interval = TimeSpan.FromSeconds(Math.Clamp(answer["heartbeat_interval_s"]?.GetValue<double>() ?? 2, 0.05, 600));
                    Registrations++;
                    LogRegistered(_log, _controller, _id!);
                }
                else
                {
                    await PostAsync("/instances/heartbeat", HeartbeatBody(_id), ct).ConfigureAwait(false);
                }

                failing = false;
                backoff = TimeSpan.FromSeconds(1);
                await Task.Delay(interval, ct).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                return;
            }
            catch (ControllerAnswerException e) when (e.Status == HttpStatusCode.NotFound)
            {
                Volatile.Write(ref _id, null); // unknown to the controller: register again at once
            }
            catch (Exception e) when (e is HttpRequestException or OperationCanceledException or ControllerAnswerException or System.Text.Json.JsonException or NullReferenceException)
            {
                if (!failing)
                {
                    LogFailed(_log, _controller, e.Message);
                    failing = true;
                }
                else
                {
                    LogStillFailing(_log, _controller, e.Message);
                }

                try
                {
                    await Task.Delay(backoff, ct).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }

                backoff = TimeSpan.FromTicks(Math.Min(backoff.Ticks * 2, MaxBackoff.Ticks));
            }
        }
    }

    private async Task<JsonObject> PostAsync(string path, JsonObject body, CancellationToken ct)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(_controller, path)) { Content = JsonContent.Create(body) };
        if (!string.IsNullOrEmpty(_token))
        {
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", _token);
        }

        using var response = await _http.SendAsync(request, ct).ConfigureAwait(false);
        var text = await response.Content.ReadAsStringAsync(ct).ConfigureAwait(false);
        if (!response.IsSuccessStatusCode)
        {
            throw new ControllerAnswerException(response.StatusCode, $"{path}: {(int)response.StatusCode} {text}");
        }

        return JsonNode.Parse(text) as JsonObject ?? throw new ControllerAnswerException(response.StatusCode, $"{path}: not a JSON object");
    }

    private JsonObject RegistrationBody()
    {
        var body = new JsonObject { ["url"] = _selfUrl, ["model"] = _service.ModelName };
        if (_service.Cache is { IsEnabled: true } cache)
        {
            var ns = cache.Namespace;
            body["chunk_size"] = cache.ChunkSize;
            body["namespace"] = new JsonObject
            {
                ["fingerprint"] = ns.ModelFingerprint,
                ["layers"] = ns.Format.Layers,
                ["k_bytes_per_token"] = ns.Format.KBytesPerToken,
                ["v_bytes_per_token"] = ns.Format.VBytesPerToken,
                ["dtype"] = ns.Format.DataType.ToString(),
                ["layout"] = ns.Format.Layout.ToString(),
                ["variant"] = ns.Variant,
            };
            body["tiers"] = new JsonArray([.. cache.Engine.Storage.Tiers.Select(t => JsonValue.Create(t.Kind.ToString().ToLowerInvariant()))]);
        }

        if (_events is not null)
        {
            body["kv_events"] = _events.Endpoint;
            body["kv_events_replay"] = _events.ReplayEndpoint;
            body["kv_events_topic"] = _events.Topic;
        }

        return body;
    }

    private JsonObject HeartbeatBody(string id)
    {
        var pending = _service.PendingRequests;
        var body = new JsonObject
        {
            ["id"] = id,
            ["load"] = new JsonObject { ["in_flight"] = pending, ["queued"] = Math.Max(0, pending - _service.MaxConcurrentRequests) },
        };
        if (_service.Cache is { IsEnabled: true } cache)
        {
            var snapshot = cache.Engine.Metrics.Snapshot();
            var memory = cache.Engine.Storage.Tiers.FirstOrDefault(t => t.Kind == StorageTierKind.Memory)?.GetStats() ?? default;
            var disk = cache.Engine.Storage.Tiers.FirstOrDefault(t => t.Kind == StorageTierKind.Disk)?.GetStats() ?? default;
            body["stats"] = new JsonObject
            {
                ["lookup_tokens"] = snapshot.LookupTokens,
                ["hit_tokens"] = snapshot.LookupHitTokens,
                ["memory_used_bytes"] = memory.UsedBytes,
                ["memory_capacity_bytes"] = Math.Max(0, memory.CapacityBytes),
                ["disk_used_bytes"] = disk.UsedBytes,
                ["disk_capacity_bytes"] = Math.Max(0, disk.CapacityBytes),
            };
        }

        return body;
    }

    /// <summary>Stops heartbeating and deregisters (best effort, 2 s at most).</summary>
    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        await _loop.ConfigureAwait(false);
        if (_id is { } id)
        {
            try
            {
                using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(2));
                await PostAsync("/instances/deregister", new JsonObject { ["id"] = id }, timeout.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is HttpRequestException or OperationCanceledException or ControllerAnswerException)
            {
                // the controller expires it after its heartbeat timeout
            }
        }

        _http.Dispose();
        _stop.Dispose();
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "registered with the controller {Controller} as {Id}")]
    private static partial void LogRegistered(ILogger log, Uri controller, string id);

    [LoggerMessage(Level = LogLevel.Warning, Message = "the controller {Controller} is not reachable ({Reason}); serving goes on, retrying with backoff")]
    private static partial void LogFailed(ILogger log, Uri controller, string reason);

    [LoggerMessage(Level = LogLevel.Debug, Message = "the controller {Controller} is still not reachable ({Reason})")]
    private static partial void LogStillFailing(ILogger log, Uri controller, string reason);

    private sealed class ControllerAnswerException(HttpStatusCode status, string message) : Exception(message)
    {
        public HttpStatusCode Status { get; } = status;
    }
}
