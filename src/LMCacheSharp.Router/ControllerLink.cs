using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace LMCacheSharp.Router;

/// <summary>
/// The router's side of <c>--controller URL</c>: every <see cref="RouterOptions.ControllerInterval"/> it reads the controller's
/// <c>GET /instances</c> and makes those instances the router's (<see cref="InstanceSet.Replace"/>; an instance that registered
/// joins and is probed at once, one that expired or deregistered leaves), records which the controller reports unhealthy
/// (they take no requests until it stops), and posts the router's running total of decisions to <c>POST /router/report</c>
/// (shown on the controller's dashboard). Every call carries the controller's token when one is given and times out after
/// <see cref="RouterOptions.HealthTimeout"/>. A controller that is down changes nothing: the router keeps the last list and
/// its own health probes; the first failure is a warning, the rest are logged at debug until it answers again. The first
/// refresh happens before the router takes requests (and before the first round of health probes).
/// </summary>
public sealed partial class ControllerLink : IHostedService, IDisposable
{
    private readonly Uri _controller;
    private readonly string _controllerText;
    private readonly string? _token;
    private readonly InstanceSet _instances;
    private readonly HttpMessageInvoker _http;
    private readonly RouterOptions _options;
    private readonly RouterMetrics _metrics;
    private readonly Func<HealthMonitor> _monitor;
    private readonly Func<string?> _self;
    private readonly string _policy;
    private readonly ILogger _log;
    private readonly CancellationTokenSource _stop = new();
    private readonly HashSet<string> _unroutable = new(StringComparer.Ordinal);
    private Task? _loop;
    private bool _failing;
    private bool _started;

    /// <summary>Creates the link; <see cref="StartAsync"/> starts it.</summary>
    /// <param name="options">The router's options (<see cref="RouterOptions.Controller"/> must be set).</param>
    /// <param name="instances">The set the controller's instances go into.</param>
    /// <param name="http">The client for the controller calls.</param>
    /// <param name="metrics">The router's metrics (refreshes, and the decisions it reports).</param>
    /// <param name="monitor">The health monitor that probes instances as they join.</param>
    /// <param name="self">The router's name in reports (its URL), asked at each report; null until it listens (no report is sent then).</param>
    /// <param name="policy">The policy's contract name.</param>
    /// <param name="log">Where membership changes and failures go.</param>
    public ControllerLink(RouterOptions options, InstanceSet instances, HttpMessageInvoker http, RouterMetrics metrics, Func<HealthMonitor> monitor,
        Func<string?> self, string policy, ILogger log)
    {
        _options = options ?? throw new ArgumentNullException(nameof(options));
        _controller = options.Controller ?? throw new ArgumentException("no controller is configured", nameof(options));
        _controllerText = _controller.ToString();
        _token = string.IsNullOrEmpty(options.ControllerToken) ? null : options.ControllerToken;
        _instances = instances ?? throw new ArgumentNullException(nameof(instances));
        _http = http ?? throw new ArgumentNullException(nameof(http));
        _metrics = metrics ?? throw new ArgumentNullException(nameof(metrics));
        _monitor = monitor ?? throw new ArgumentNullException(nameof(monitor));
        _self = self ?? throw new ArgumentNullException(nameof(self));
        _policy = policy ?? throw new ArgumentNullException(nameof(policy));
        _log = log ?? throw new ArgumentNullException(nameof(log));
    }

    /// <summary>When the last refresh succeeded (UTC), or null before the first.</summary>
    public DateTimeOffset? LastRefresh { get; private set; }

    /// <summary>Why the last call to the controller failed, or null while it answers.</summary>
    public string? LastError { get; private set; }

    /// <summary>The controller's base URL.</summary>
    public Uri Controller => _controller;

    /// <inheritdoc />
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        await RefreshAsync(cancellationToken).ConfigureAwait(false);
        _started = true;
        _loop = Task.Run(() => LoopAsync(_stop.Token), CancellationToken.None);
    }

    /// <inheritdoc />
    public async Task StopAsync(CancellationToken cancellationToken)
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        if (_loop is not null)
        {
            await _loop.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    /// <inheritdoc />
    public void Dispose() => _stop.Dispose();

    /// <summary>
    /// Reads <c>GET /instances</c> once and applies it; instances that joined are probed before this returns (once the router
    /// has started). Returns false (and keeps the list) when the controller did not answer usefully.
    /// </summary>
    public async Task<bool> RefreshAsync(CancellationToken cancellationToken = default)
    {
        JsonArray list;
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            timeout.CancelAfter(_options.HealthTimeout);
            using var request = Request(HttpMethod.Get, "/instances");
            using var response = await _http.SendAsync(request, timeout.Token).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode)
            {
                return Failed($"GET /instances answered {(int)response.StatusCode}");
            }

            var json = await response.Content.ReadFromJsonAsync<JsonObject>(timeout.Token).ConfigureAwait(false);
            if (json?["instances"] is not JsonArray instances)
            {
                return Failed("GET /instances answered no 'instances' list");
            }

            list = instances;
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            return Failed($"GET /instances: no answer within {_options.HealthTimeout.TotalSeconds:0.###} s");
        }
        catch (Exception e) when (e is HttpRequestException or JsonException or IOException or InvalidOperationException or NotSupportedException)
        {
            return Failed("GET /instances: " + e.Message);
        }

        var members = new List<(Uri Url, string? Id, bool Healthy)>();
        foreach (var entry in list.OfType<JsonObject>())
        {
            var text = entry["url"] is JsonValue u && u.TryGetValue<string>(out var s) ? s : null;
            if (text is null || !Uri.TryCreate(text, UriKind.Absolute, out var url) || url.Scheme is not ("http" or "https") || url.AbsolutePath != "/")
            {
                // The router forwards to scheme://host:port/v1/...: an instance registered under a path cannot be routed to.
                if (text is not null && _unroutable.Add(text))
                {
                    LogUnroutable(_log, text);
                }

                continue;
            }

            var id = entry["id"] is JsonValue i && i.TryGetValue<string>(out var idText) ? idText : null;
            var healthy = entry["healthy"] is not JsonValue h || !h.TryGetValue<bool>(out var b) || b;
            members.Add((url, id, healthy));
        }

        var (added, removed) = _instances.Replace(members.Select(m => m.Url));
        var byName = _instances.Current.ToDictionary(i => i.Name, StringComparer.Ordinal);
        foreach (var (url, id, healthy) in members)
        {
            if (byName.TryGetValue(RouterOptions.Key(url), out var instance))
            {
                instance.SetController(id, healthy ? null : "the controller reports it unhealthy (its KV events are catching up)");
            }
        }

        foreach (var instance in added)
        {
            LogJoined(_log, instance.Name, instance.ControllerId ?? "?");
        }

        foreach (var instance in removed)
        {
            LogLeft(_log, instance.Name, instance.ControllerId ?? "?");
        }

        if (_started && added.Count > 0)
        {
            await _monitor().ProbeAsync(added, cancellationToken).ConfigureAwait(false);
        }

        _metrics.ControllerRefresh(true);
        LastRefresh = DateTimeOffset.UtcNow;
        Recovered();
        return true;
    }

    /// <summary>
    /// Posts the running total of decisions to <c>POST /router/report</c>; false when the controller did not take it, or the
    /// router does not listen yet (it has no name to report under).
    /// </summary>
    public async Task<bool> ReportAsync(CancellationToken cancellationToken = default)
    {
        if (_self() is not { } self)
        {
            return false;
        }

        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            timeout.CancelAfter(_options.HealthTimeout);
            using var request = Request(HttpMethod.Post, "/router/report");
            request.Content = JsonContent.Create(new JsonObject { ["router"] = self, ["policy"] = _policy, ["decisions_total"] = _metrics.DecisionsTotal });
            using var response = await _http.SendAsync(request, timeout.Token).ConfigureAwait(false);
            return response.IsSuccessStatusCode || Failed($"POST /router/report answered {(int)response.StatusCode}");
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            return Failed($"POST /router/report: no answer within {_options.HealthTimeout.TotalSeconds:0.###} s");
        }
        catch (HttpRequestException e)
        {
            return Failed("POST /router/report: " + e.Message);
        }
    }

    private async Task LoopAsync(CancellationToken stop)
    {
        using var timer = new PeriodicTimer(_options.ControllerInterval);
        try
        {
            await ReportAsync(stop).ConfigureAwait(false);
            while (await timer.WaitForNextTickAsync(stop).ConfigureAwait(false))
            {
                await RefreshAsync(stop).ConfigureAwait(false);
                await ReportAsync(stop).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
        }
    }

    private HttpRequestMessage Request(HttpMethod method, string path)
    {
        var request = new HttpRequestMessage(method, _controller.GetLeftPart(UriPartial.Path).TrimEnd('/') + path);
        if (_token is not null)
        {
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", _token);
        }

        return request;
    }

    private bool Failed(string why)
    {
        if (why.StartsWith("GET", StringComparison.Ordinal))
        {
            _metrics.ControllerRefresh(false);
        }

        LastError = why;
        if (!_failing)
        {
            _failing = true;
            LogFailing(_log, _controllerText, why);
        }
        else
        {
            LogStillFailing(_log, _controllerText, why);
        }

        return false;
    }

    private void Recovered()
    {
        LastError = null;
        if (_failing)
        {
            _failing = false;
            LogRecovered(_log, _controllerText);
        }
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "instance {Instance} joined (controller id {Id})")]
    private static partial void LogJoined(ILogger log, string instance, string id);

    [LoggerMessage(Level = LogLevel.Information, Message = "instance {Instance} left (controller id {Id}: expired or deregistered)")]
    private static partial void LogLeft(ILogger log, string instance, string id);

    [LoggerMessage(Level = LogLevel.Warning, Message = "the controller lists an instance at {Url}, which has a path: the router routes to scheme://host:port only, so it is left out")]
    private static partial void LogUnroutable(ILogger log, string url);

    [LoggerMessage(Level = LogLevel.Warning, Message = "the controller {Controller} failed: {Why}; keeping the last instance list and the router's own health probes")]
    private static partial void LogFailing(ILogger log, string controller, string why);

    [LoggerMessage(Level = LogLevel.Debug, Message = "the controller {Controller} failed again: {Why}")]
    private static partial void LogStillFailing(ILogger log, string controller, string why);

    [LoggerMessage(Level = LogLevel.Information, Message = "the controller {Controller} answers again")]
    private static partial void LogRecovered(ILogger log, string controller);
}
