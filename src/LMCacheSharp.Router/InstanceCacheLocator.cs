using System.Diagnostics;
using System.Net.Http.Headers;
using System.Text.Json;

namespace LMCacheSharp.Router;

/// <summary>
/// <see cref="ICacheLocator"/> without a controller: sends the request's body to every candidate's <c>POST /lookup?tiers=memory</c>
/// at once (each instance tokenizes it once, with its own model and the request's cache_salt) and waits at most the lookup
/// timeout; an instance that has not answered by then, or fails, counts as holding nothing.
/// </summary>
public sealed class InstanceCacheLocator : ICacheLocator
{
    private readonly HttpMessageInvoker _http;
    private readonly TimeSpan _timeout;
    private readonly RouterMetrics _metrics;

    /// <summary>Creates the locator.</summary>
    /// <param name="http">The client the lookups go through (shared with the health probes).</param>
    /// <param name="timeout">How long to wait for all answers (<see cref="RouterOptions.LookupTimeout"/>).</param>
    /// <param name="metrics">Where lookups are counted.</param>
    public InstanceCacheLocator(HttpMessageInvoker http, TimeSpan timeout, RouterMetrics metrics)
    {
        _http = http ?? throw new ArgumentNullException(nameof(http));
        _metrics = metrics ?? throw new ArgumentNullException(nameof(metrics));
        _timeout = timeout;
    }

    /// <inheritdoc />
    public async Task<IReadOnlyList<CacheReport>> LocateAsync(RoutingRequest request, IReadOnlyList<RouterInstance> candidates, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(candidates);
        var start = Stopwatch.GetTimestamp();
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(_timeout);
        var asks = candidates.Select(c => AskAsync(c, request.Body, deadline.Token)).ToArray();
        var reports = await Task.WhenAll(asks).ConfigureAwait(false);
        cancellationToken.ThrowIfCancellationRequested();
        _metrics.LookupTime(Stopwatch.GetElapsedTime(start));
        return reports;
    }

    private async Task<CacheReport> AskAsync(RouterInstance instance, ReadOnlyMemory<byte> body, CancellationToken cancellationToken)
    {
        try
        {
            using var message = new HttpRequestMessage(HttpMethod.Post, instance.Name + "/lookup?tiers=memory")
            {
                Content = new ReadOnlyMemoryContent(body),
            };
            message.Content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
            using var response = await _http.SendAsync(message, cancellationToken).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode)
            {
                _metrics.Lookup(instance, "error");
                return new CacheReport(instance, false, 0, 0, null);
            }

            using var stream = await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
            using var doc = await JsonDocument.ParseAsync(stream, default, cancellationToken).ConfigureAwait(false);
            var root = doc.RootElement;
            var cached = root.GetProperty("cached_tokens").GetProperty("memory").GetInt32();
            var prompt = root.GetProperty("prompt_tokens").GetInt32();
            InstanceLoad? load = root.TryGetProperty("load", out var l) && l.ValueKind == JsonValueKind.Object
                ? new InstanceLoad(l.GetProperty("in_flight").GetInt32(), l.GetProperty("queued").GetInt32())
                : null;
            _metrics.Lookup(instance, "ok");
            return new CacheReport(instance, true, Math.Max(0, cached), Math.Max(0, prompt), load);
        }
        catch (OperationCanceledException)
        {
            _metrics.Lookup(instance, "timeout");
            return new CacheReport(instance, false, 0, 0, null);
        }
        catch (Exception e) when (e is HttpRequestException or JsonException or KeyNotFoundException or InvalidOperationException or FormatException or IOException)
        {
            _metrics.Lookup(instance, "error");
            return new CacheReport(instance, false, 0, 0, null);
        }
    }
}
