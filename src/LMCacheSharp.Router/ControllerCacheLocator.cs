using System.Buffers;
using System.Diagnostics;
using System.Net.Http.Headers;
using System.Text.Json;
using Microsoft.Extensions.Logging;

namespace LMCacheSharp.Router;

/// <summary>
/// <see cref="ICacheLocator"/> with a controller (<c>--controller URL</c>): one <c>POST {controller}/lookup</c> per request
/// (the prompt, messages or token ids, the model and the cache_salt; the controller answers for every instance from its
/// chunk directory) instead of one <c>/lookup</c> per instance. Controller instances are matched to router instances by URL
/// (scheme://host:port); a candidate the answer does not name counts as holding nothing.
/// <para>
/// Fallback: when the controller does not answer within the lookup timeout, fails (connection, 5xx, 401) or answers something
/// unreadable, the request is looked up by the <c>fallback</c> locator (the instances' own /lookup, <see cref="InstanceCacheLocator"/>),
/// and so are the requests of the next <see cref="RouterOptions.ControllerInterval"/>, so that a controller that is down costs one
/// timeout per interval, not one per request. A 4xx about the request itself (a prompt it cannot read, an unknown model) falls
/// back for that request only. kv-aware keeps working either way, at one round trip per instance.
/// </para>
/// </summary>
public sealed partial class ControllerCacheLocator : ICacheLocator
{
    private readonly Uri _lookup;
    private readonly string _lookupText;
    private readonly string? _token;
    private readonly HttpMessageInvoker _http;
    private readonly TimeSpan _timeout;
    private readonly TimeSpan _fallbackFor;
    private readonly ICacheLocator _fallback;
    private readonly RouterMetrics _metrics;
    private readonly ILogger _log;
    private readonly TimeProvider _time;
    private long _controllerAfter;
    private int _failing;

    /// <summary>Creates the locator.</summary>
    /// <param name="controller">The controller's base URL.</param>
    /// <param name="token">Its bearer token, or null.</param>
    /// <param name="http">The client the lookups go through.</param>
    /// <param name="timeout">How long to wait for the controller's answer (<see cref="RouterOptions.LookupTimeout"/>).</param>
    /// <param name="fallbackFor">How long to use <paramref name="fallback"/> after a controller failure (<see cref="RouterOptions.ControllerInterval"/>).</param>
    /// <param name="fallback">Where lookups go while the controller fails.</param>
    /// <param name="metrics">Where lookups are counted (<c>lmcache_router_controller_lookups_total{outcome}</c>).</param>
    /// <param name="log">Where a failing controller is reported (once, then at debug until it answers again).</param>
    /// <param name="time">The clock of the fallback window; null: the system clock.</param>
    public ControllerCacheLocator(Uri controller, string? token, HttpMessageInvoker http, TimeSpan timeout, TimeSpan fallbackFor, ICacheLocator fallback,
        RouterMetrics metrics, ILogger log, TimeProvider? time = null)
    {
        ArgumentNullException.ThrowIfNull(controller);
        _lookup = new Uri(controller.GetLeftPart(UriPartial.Path).TrimEnd('/') + "/lookup");
        _lookupText = _lookup.ToString();
        _token = string.IsNullOrEmpty(token) ? null : token;
        _http = http ?? throw new ArgumentNullException(nameof(http));
        _fallback = fallback ?? throw new ArgumentNullException(nameof(fallback));
        _metrics = metrics ?? throw new ArgumentNullException(nameof(metrics));
        _log = log ?? throw new ArgumentNullException(nameof(log));
        _time = time ?? TimeProvider.System;
        _timeout = timeout;
        _fallbackFor = fallbackFor;
        _controllerAfter = long.MinValue;
    }

    /// <inheritdoc />
    public async Task<IReadOnlyList<CacheReport>> LocateAsync(RoutingRequest request, IReadOnlyList<RouterInstance> candidates, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(candidates);
        if (_time.GetTimestamp() < Interlocked.Read(ref _controllerAfter))
        {
            _metrics.ControllerLookup("skipped");
            return await _fallback.LocateAsync(request, candidates, cancellationToken).ConfigureAwait(false);
        }

        if (LookupBody(request) is not { } body)
        {
            _metrics.ControllerLookup("unreadable");
            return await _fallback.LocateAsync(request, candidates, cancellationToken).ConfigureAwait(false);
        }

        var start = Stopwatch.GetTimestamp();
        var (answer, failure, window) = await AskAsync(body, cancellationToken).ConfigureAwait(false);
        if (answer is null)
        {
            if (window)
            {
                Interlocked.Exchange(ref _controllerAfter, _time.GetTimestamp() + (long)(_fallbackFor.TotalSeconds * _time.TimestampFrequency));
                if (Interlocked.Exchange(ref _failing, 1) == 0)
                {
                    LogFailing(_log, _lookupText, failure ?? "", _fallbackFor.TotalSeconds);
                }
                else
                {
                    LogStillFailing(_log, _lookupText, failure ?? "");
                }
            }
            else
            {
                LogRequestRefused(_log, failure ?? "");
            }

            return await _fallback.LocateAsync(request, candidates, cancellationToken).ConfigureAwait(false);
        }

        if (Interlocked.Exchange(ref _failing, 0) == 1)
        {
            LogBack(_log, _lookupText);
        }

        var reports = new CacheReport[candidates.Count];
        for (var i = 0; i < candidates.Count; i++)
        {
            reports[i] = answer.TryGetValue(candidates[i].Name, out var hit)
                ? new CacheReport(candidates[i], true, hit.Memory, hit.PromptTokens, hit.Load)
                : new CacheReport(candidates[i], false, 0, 0, null);
        }

        _metrics.LookupTime(Stopwatch.GetElapsedTime(start));
        return reports;
    }

    /// <summary>What the controller said of one instance.</summary>
    private readonly record struct Hit(int Memory, int PromptTokens, InstanceLoad? Load);

    /// <summary>
    /// The controller's answer by instance name, or null with why and whether the failure opens the fallback window (the
    /// controller failed) or concerns this request alone (a 4xx other than 401).
    /// </summary>
    private async Task<(Dictionary<string, Hit>? Answer, string? Failure, bool Window)> AskAsync(byte[] body, CancellationToken cancellationToken)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(_timeout);
        try
        {
            using var message = new HttpRequestMessage(HttpMethod.Post, _lookup) { Content = new ByteArrayContent(body) };
            message.Content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
            if (_token is not null)
            {
                message.Headers.Authorization = new AuthenticationHeaderValue("Bearer", _token);
            }

            using var response = await _http.SendAsync(message, deadline.Token).ConfigureAwait(false);
            var status = (int)response.StatusCode;
            if (status is >= 400 and < 500 and not 401)
            {
                _metrics.ControllerLookup("refused");
                return (null, $"the controller answered {status} for this request", false);
            }

            if (!response.IsSuccessStatusCode)
            {
                _metrics.ControllerLookup("error");
                return (null, $"the controller answered {status}", true);
            }

            using var stream = await response.Content.ReadAsStreamAsync(deadline.Token).ConfigureAwait(false);
            using var doc = await JsonDocument.ParseAsync(stream, default, deadline.Token).ConfigureAwait(false);
            var root = doc.RootElement;
            var prompt = root.GetProperty("prompt_tokens").GetInt32();
            var hits = new Dictionary<string, Hit>(StringComparer.Ordinal);
            foreach (var instance in root.GetProperty("instances").EnumerateArray())
            {
                if (!Uri.TryCreate(instance.GetProperty("url").GetString(), UriKind.Absolute, out var url))
                {
                    continue;
                }

                var cached = instance.GetProperty("cached_tokens").GetProperty("memory").GetInt32();
                InstanceLoad? load = instance.TryGetProperty("load", out var l) && l.ValueKind == JsonValueKind.Object
                    ? new InstanceLoad(l.GetProperty("in_flight").GetInt32(), l.GetProperty("queued").GetInt32())
                    : null;
                // Two registrations behind one host:port (paths differ) cannot both be routed to: the first (most cached) wins.
                hits.TryAdd(RouterOptions.Key(url), new Hit(Math.Max(0, cached), Math.Max(0, prompt), load));
            }

            _metrics.ControllerLookup("ok");
            return (hits, null, false);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            _metrics.ControllerLookup("timeout");
            return (null, $"no answer within {_timeout.TotalMilliseconds:0.###} ms", true);
        }
        catch (Exception e) when (e is HttpRequestException or JsonException or KeyNotFoundException or InvalidOperationException or FormatException or IOException)
        {
            _metrics.ControllerLookup("error");
            return (null, e.Message, true);
        }
    }

    /// <summary>
    /// The controller's /lookup body for <paramref name="request"/>: its model, cache_salt and prompt (a string as <c>prompt</c>,
    /// token ids as <c>tokens</c>) or messages; null when the prompt is of another shape (a batch), which the instances' own
    /// /lookup handles.
    /// </summary>
    internal static byte[]? LookupBody(RoutingRequest request)
    {
        using var doc = JsonDocument.Parse(request.Body);
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object)
        {
            return null;
        }

        var buffer = new ArrayBufferWriter<byte>();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            foreach (var name in new[] { "model", "cache_salt" })
            {
                if (root.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.String)
                {
                    json.WritePropertyName(name);
                    value.WriteTo(json);
                }
            }

            if (root.TryGetProperty("messages", out var messages) && messages.ValueKind == JsonValueKind.Array)
            {
                json.WritePropertyName("messages");
                messages.WriteTo(json);
            }
            else if (root.TryGetProperty("prompt", out var prompt) && prompt.ValueKind == JsonValueKind.String)
            {
                json.WritePropertyName("prompt");
                prompt.WriteTo(json);
            }
            else if (prompt.ValueKind == JsonValueKind.Array && prompt.EnumerateArray().All(t => t.ValueKind == JsonValueKind.Number))
            {
                json.WritePropertyName("tokens");
                prompt.WriteTo(json);
            }
            else
            {
                return null;
            }

            json.WriteEndObject();
        }

        return buffer.WrittenSpan.ToArray();
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "the controller's lookup {Url} failed ({Failure}); kv-aware asks the instances directly for {Seconds} s, then tries it again")]
    private static partial void LogFailing(ILogger log, string url, string failure, double seconds);

    [LoggerMessage(Level = LogLevel.Debug, Message = "the controller's lookup {Url} failed again ({Failure})")]
    private static partial void LogStillFailing(ILogger log, string url, string failure);

    [LoggerMessage(Level = LogLevel.Debug, Message = "the controller could not look this request up ({Failure}): asking the instances")]
    private static partial void LogRequestRefused(ILogger log, string failure);

    [LoggerMessage(Level = LogLevel.Information, Message = "the controller's lookup {Url} answers again")]
    private static partial void LogBack(ILogger log, string url);
}
