using System.Net.Http.Json;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace LMCacheSharp.Router;

/// <summary>
/// Probes every instance each <see cref="RouterOptions.HealthInterval"/>: <c>GET /health</c> (2xx: healthy; anything else, or
/// no answer within <see cref="RouterOptions.HealthTimeout"/>: out), then <c>GET /v1/models</c> (which models it serves) and
/// <c>GET /load</c> (its running and queued requests; absent on servers other than lmcache serve). One good probe brings an
/// instance back. The first round finishes before the router starts taking requests.
/// </summary>
public sealed class HealthMonitor : IHostedService, IDisposable
{
    private readonly InstanceSet _instances;
    private readonly HttpMessageInvoker _http;
    private readonly RouterOptions _options;
    private readonly RouterMetrics _metrics;
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _stop = new();
    private Task? _loop;

    /// <summary>Creates the monitor; <see cref="StartAsync"/> starts it.</summary>
    public HealthMonitor(InstanceSet instances, HttpMessageInvoker http, RouterOptions options, RouterMetrics metrics, ILogger logger)
    {
        _instances = instances ?? throw new ArgumentNullException(nameof(instances));
        _http = http ?? throw new ArgumentNullException(nameof(http));
        _options = options ?? throw new ArgumentNullException(nameof(options));
        _metrics = metrics ?? throw new ArgumentNullException(nameof(metrics));
        _logger = logger ?? throw new ArgumentNullException(nameof(logger));
    }

    /// <summary>Probes every instance once now (all at once).</summary>
    public Task ProbeAllAsync(CancellationToken cancellationToken = default) => ProbeAsync(_instances.Current, cancellationToken);

    /// <summary>Probes <paramref name="instances"/> once now (all at once): instances that just joined.</summary>
    public Task ProbeAsync(IEnumerable<RouterInstance> instances, CancellationToken cancellationToken = default) =>
        Task.WhenAll(instances.Select(i => ProbeAsync(i, cancellationToken)));

    /// <inheritdoc />
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        await ProbeAllAsync(cancellationToken).ConfigureAwait(false);
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

    private async Task LoopAsync(CancellationToken stop)
    {
        using var timer = new PeriodicTimer(_options.HealthInterval);
        try
        {
            while (await timer.WaitForNextTickAsync(stop).ConfigureAwait(false))
            {
                await ProbeAllAsync(stop).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
        }
    }

    private async Task ProbeAsync(RouterInstance instance, CancellationToken cancellationToken)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(_options.HealthTimeout);
        var before = instance.Status;
        InstanceStatus after;
        try
        {
            using (var health = await GetAsync(instance, "/health", timeout.Token).ConfigureAwait(false))
            {
                if (!health.IsSuccessStatusCode)
                {
                    after = before with { Healthy = false, Reason = $"/health answered {(int)health.StatusCode}", Probed = true };
                    Set(instance, before, after);
                    return;
                }
            }

            var models = before.Models;
            using (var list = await GetAsync(instance, "/v1/models", timeout.Token).ConfigureAwait(false))
            {
                if (list.IsSuccessStatusCode && await list.Content.ReadFromJsonAsync<JsonObject>(timeout.Token).ConfigureAwait(false) is { } json &&
                    json["data"] is JsonArray data)
                {
                    models = [.. data.OfType<JsonObject>().Where(m => m["id"] is JsonValue id && id.GetValueKind() == JsonValueKind.String)
                        .Select(m => (JsonObject)m.DeepClone())];
                }
            }

            InstanceLoad? load = null;
            var role = "both";
            using (var reported = await GetAsync(instance, "/load", timeout.Token).ConfigureAwait(false))
            {
                if (reported.IsSuccessStatusCode && await reported.Content.ReadFromJsonAsync<JsonObject>(timeout.Token).ConfigureAwait(false) is { } json &&
                    json["in_flight"] is JsonValue running && json["queued"] is JsonValue queued)
                {
                    load = new InstanceLoad(running.GetValue<int>(), queued.GetValue<int>());
                    if (json["role"] is JsonValue r && r.GetValueKind() == JsonValueKind.String && r.GetValue<string>() is "prefill" or "decode")
                    {
                        role = r.GetValue<string>();
                    }
                }
            }

            after = new InstanceStatus(true, models, load, null, true, role);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            after = before with { Healthy = false, Reason = $"no answer to the health probe within {_options.HealthTimeout.TotalSeconds:0.###} s", Probed = true };
        }
        catch (Exception e) when (e is HttpRequestException or JsonException or IOException or InvalidOperationException or FormatException)
        {
            after = before with { Healthy = false, Reason = "health probe failed: " + e.Message, Probed = true };
        }

        Set(instance, before, after);
    }

    private void Set(RouterInstance instance, InstanceStatus before, InstanceStatus after)
    {
        // A request's failure may have marked it down since the probe began: the probe's answer is newer and wins.
        instance.SetStatus(after);
        if (before.Probed && before.Healthy == after.Healthy)
        {
            return;
        }

        _metrics.HealthChanged(instance, after.Healthy);
        if (after.Healthy && _logger.IsEnabled(LogLevel.Information))
        {
            _logger.LogInformation("instance {Instance} is healthy, serving {Models}", instance.Name, string.Join(", ", after.Models.Select(m => m["id"])));
        }
        else if (!after.Healthy && _logger.IsEnabled(LogLevel.Warning))
        {
            _logger.LogWarning("instance {Instance} is out: {Reason}", instance.Name, after.Reason);
        }
    }

    private async Task<HttpResponseMessage> GetAsync(RouterInstance instance, string path, CancellationToken cancellationToken)
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, instance.Name + path);
        return await _http.SendAsync(request, cancellationToken).ConfigureAwait(false);
    }
}
