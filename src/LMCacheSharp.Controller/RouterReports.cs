namespace LMCacheSharp.Controller;

/// <summary>
/// Routing decisions reported by routers (<c>POST /router/report</c> with a running total): the dashboard shows each
/// router's decisions per second, computed between its last two reports.
/// </summary>
public sealed class RouterReports(TimeProvider time)
{
    private readonly Lock _lock = new();
    private readonly Dictionary<string, Entry> _routers = new(StringComparer.Ordinal);

    /// <summary>Records <paramref name="router"/>'s running total of decisions.</summary>
    public void Report(string router, string? policy, long decisionsTotal)
    {
        var now = time.GetTimestamp();
        lock (_lock)
        {
            var rate = 0.0;
            if (_routers.TryGetValue(router, out var last) && decisionsTotal >= last.Total)
            {
                var seconds = time.GetElapsedTime(last.At, now).TotalSeconds;
                rate = seconds > 0 ? (decisionsTotal - last.Total) / seconds : last.PerSecond;
            }

            _routers[router] = new Entry(policy, decisionsTotal, now, rate);
        }
    }

    /// <summary>Every router: name, policy, total, decisions per second, seconds since its last report.</summary>
    public IReadOnlyList<(string Router, string? Policy, long Total, double PerSecond, double Age)> Snapshot()
    {
        lock (_lock)
        {
            return [.. _routers.OrderBy(r => r.Key, StringComparer.Ordinal)
                .Select(r => (r.Key, r.Value.Policy, r.Value.Total, r.Value.PerSecond, time.GetElapsedTime(r.Value.At).TotalSeconds))];
        }
    }

    private readonly record struct Entry(string? Policy, long Total, long At, double PerSecond);
}
