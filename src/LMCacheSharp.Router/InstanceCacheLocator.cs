using System.Diagnostics;
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
            var answer = await InstanceLookup.AskAsync(_http, instance, body, "memory", cancellationToken).ConfigureAwait(false);
            _metrics.Lookup(instance, "ok");
            return new CacheReport(instance, true, answer.Memory, answer.PromptTokens, answer.Load);
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
