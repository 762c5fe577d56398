using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;

namespace LMCacheSharp.Core.Metrics;

/// <summary>
/// Turns cache faults into log lines an operator can read: the first fault of a kind in a tier is logged at once, later
/// ones at most once per <see cref="Interval"/> with the count since the last line, and a state (a remote tier down or up)
/// is logged once per change. Faults never fail a request; this is how they become visible beside the metrics.
/// Thread-safe.
/// </summary>
public sealed class FaultLog
{
    private readonly ILogger _logger;
    private readonly TimeProvider _time;
    private readonly ConcurrentDictionary<(string Kind, string Tier), Counter> _counters = new();
    private readonly Dictionary<string, string> _states = new(StringComparer.Ordinal);

    /// <summary>Creates a fault log writing to <paramref name="logger"/>.</summary>
    /// <param name="logger">Where lines go (warnings).</param>
    /// <param name="time">The clock (tests pass a fake one). Default: the system clock.</param>
    /// <param name="interval">Least time between two lines of one kind and tier. Default 10 s.</param>
    public FaultLog(ILogger logger, TimeProvider? time = null, TimeSpan? interval = null)
    {
        ArgumentNullException.ThrowIfNull(logger);
        _logger = logger;
        _time = time ?? TimeProvider.System;
        Interval = interval ?? TimeSpan.FromSeconds(10);
    }

    /// <summary>Least time between two lines of one kind and tier.</summary>
    public TimeSpan Interval { get; }

    /// <summary>Counts one fault of <paramref name="kind"/> (e.g. "corrupt chunk") in <paramref name="tier"/>; logs when due.</summary>
    public void Count(string kind, string tier, string consequence)
    {
        var counter = _counters.GetOrAdd((kind, tier), _ => new Counter());
        long pending;
        lock (counter)
        {
            counter.Pending++;
            var now = _time.GetTimestamp();
            if (counter.LastLogged != 0 && _time.GetElapsedTime(counter.LastLogged, now) < Interval)
            {
                return;
            }

            pending = counter.Pending;
            counter.Pending = 0;
            counter.LastLogged = now;
        }

        if (_logger.IsEnabled(LogLevel.Warning))
        {
            _logger.LogWarning("cache: {Count} {Kind}{Plural} in the {Tier} tier since the last report; {Consequence}", pending, kind,
                pending == 1 ? "" : "s", tier, consequence);
        }
    }

    /// <summary>Logs <paramref name="state"/> of <paramref name="subject"/> when it differs from the last one logged.</summary>
    public void State(string subject, string state, string detail, LogLevel level = LogLevel.Warning)
    {
        lock (_states)
        {
            if (_states.GetValueOrDefault(subject) == state)
            {
                return;
            }

            _states[subject] = state;
        }

        if (_logger.IsEnabled(level))
        {
            _logger.Log(level, "cache: {Subject} is {State}: {Detail}", subject, state, detail);
        }
    }

    /// <summary>Logs a one-off event (start-up recovery and the like) at information level.</summary>
    public void Event(string message)
    {
        if (_logger.IsEnabled(LogLevel.Information))
        {
            _logger.LogInformation("cache: {Message}", message);
        }
    }

    private sealed class Counter
    {
        public long Pending;
        public long LastLogged;
    }
}
