namespace LMCacheSharp.Remote;

/// <summary>States of a <see cref="CircuitBreaker"/>.</summary>
public enum CircuitState
{
    /// <summary>Calls go through.</summary>
    Closed,

    /// <summary>Calls are refused (each is a miss) until the open period ends.</summary>
    Open,

    /// <summary>One probe call goes through; its outcome closes or reopens the circuit.</summary>
    HalfOpen,
}

/// <summary>
/// Turns a failing remote into immediate misses: after <see cref="FailureThreshold"/> failures in a row the circuit opens
/// for <see cref="MinOpenTime"/>, doubling on each failed probe up to <see cref="MaxOpenTime"/>; then one call probes the
/// remote and a success closes it. Thread-safe.
/// </summary>
public sealed class CircuitBreaker
{
    private readonly Lock _lock = new();
    private readonly TimeProvider _time;
    private CircuitState _state;
    private int _failures;
    private TimeSpan _openTime;
    private long _openUntil;
    private long _probeStarted;
    private long _epoch; // bumped on every state change and every probe: a ticket from an older epoch is stale

    /// <summary>Creates a breaker.</summary>
    /// <param name="failureThreshold">Failures in a row that open the circuit. Default 3; range 1..1000.</param>
    /// <param name="minOpenTime">First open period. Default 1 s; range 1 ms..1 h.</param>
    /// <param name="maxOpenTime">Longest open period. Default 30 s; range <paramref name="minOpenTime"/>..1 h.</param>
    /// <param name="probeTimeout">A probe that has not reported after this long lets another through. Default 10 s.</param>
    /// <param name="timeProvider">Clock (tests pass a fake one).</param>
    public CircuitBreaker(int failureThreshold = 3, TimeSpan? minOpenTime = null, TimeSpan? maxOpenTime = null, TimeSpan? probeTimeout = null,
        TimeProvider? timeProvider = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(failureThreshold, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(failureThreshold, 1000);
        MinOpenTime = minOpenTime ?? TimeSpan.FromSeconds(1);
        MaxOpenTime = maxOpenTime ?? TimeSpan.FromSeconds(30);
        ProbeTimeout = probeTimeout ?? TimeSpan.FromSeconds(10);
        ArgumentOutOfRangeException.ThrowIfLessThan(MinOpenTime, TimeSpan.FromMilliseconds(1));
        ArgumentOutOfRangeException.ThrowIfGreaterThan(MaxOpenTime, TimeSpan.FromHours(1));
        ArgumentOutOfRangeException.ThrowIfLessThan(MaxOpenTime, MinOpenTime);
        FailureThreshold = failureThreshold;
        _openTime = MinOpenTime;
        _time = timeProvider ?? TimeProvider.System;
    }

    /// <summary>Failures in a row that open the circuit.</summary>
    public int FailureThreshold { get; }

    /// <summary>First open period.</summary>
    public TimeSpan MinOpenTime { get; }

    /// <summary>Longest open period.</summary>
    public TimeSpan MaxOpenTime { get; }

    /// <summary>How long a probe may take before another is let through.</summary>
    public TimeSpan ProbeTimeout { get; }

    /// <summary>The current state.</summary>
    public CircuitState State
    {
        get
        {
            lock (_lock)
            {
                return _state;
            }
        }
    }

    /// <summary>Whether a call may go to the remote now (false: answer it with a miss). For one call in flight at a time.</summary>
    public bool TryEnter() => TryEnter(out _);

    /// <summary>
    /// Whether a call may go to the remote now (false: answer it with a miss). <paramref name="ticket"/> names the call:
    /// report its outcome with <see cref="OnSuccess(CircuitTicket)"/> or <see cref="OnFailure(CircuitTicket)"/>, so that a
    /// call that entered before the circuit opened cannot close it when it finally succeeds.
    /// </summary>
    public bool TryEnter(out CircuitTicket ticket)
    {
        lock (_lock)
        {
            var now = _time.GetTimestamp();
            switch (_state)
            {
                case CircuitState.Closed:
                    ticket = new CircuitTicket(_epoch, IsProbe: false);
                    return true;
                case CircuitState.Open when now >= _openUntil:
                    _state = CircuitState.HalfOpen;
                    _probeStarted = now;
                    ticket = new CircuitTicket(++_epoch, IsProbe: true);
                    return true;
                case CircuitState.HalfOpen when _time.GetElapsedTime(_probeStarted, now) >= ProbeTimeout:
                    _probeStarted = now;
                    ticket = new CircuitTicket(++_epoch, IsProbe: true); // the probe that never reported is stale from now on
                    return true;
                default:
                    ticket = default;
                    return false;
            }
        }
    }

    /// <summary>A call reached the remote and it answered (a miss counts as an answer). For one call in flight at a time.</summary>
    public void OnSuccess() => OnSuccess(CurrentTicket());

    /// <summary>
    /// The call <paramref name="ticket"/> names reached the remote and it answered. While closed this resets the failure
    /// count; while half-open only the current probe closes the circuit; a call from before the circuit opened changes nothing.
    /// </summary>
    public void OnSuccess(CircuitTicket ticket)
    {
        lock (_lock)
        {
            if (_state == CircuitState.Closed)
            {
                _failures = 0;
            }
            else if (_state == CircuitState.HalfOpen && ticket.IsProbe && ticket.Epoch == _epoch)
            {
                _state = CircuitState.Closed;
                _epoch++;
                _failures = 0;
                _openTime = MinOpenTime;
            }
        }
    }

    /// <summary>A call failed or timed out. For one call in flight at a time.</summary>
    public void OnFailure() => OnFailure(CurrentTicket());

    /// <summary>
    /// The call <paramref name="ticket"/> names failed or timed out. While closed it counts towards the threshold; while
    /// half-open only the current probe reopens the circuit (for twice as long, up to <see cref="MaxOpenTime"/>). A call that
    /// entered before the circuit last changed state (a slow call from before it opened, failing after the probe closed it)
    /// says nothing about the remote now and changes nothing.
    /// </summary>
    public void OnFailure(CircuitTicket ticket)
    {
        lock (_lock)
        {
            if (_state == CircuitState.HalfOpen && ticket.IsProbe && ticket.Epoch == _epoch)
            {
                _openTime = TimeSpan.FromTicks(Math.Min(_openTime.Ticks * 2, MaxOpenTime.Ticks));
                Open();
            }
            else if (_state == CircuitState.Closed && ticket.Epoch == _epoch && ++_failures >= FailureThreshold)
            {
                Open();
            }
        }
    }

    // The outcome of "the" call, for callers with one in flight at a time: whatever the breaker let through last.
    private CircuitTicket CurrentTicket()
    {
        lock (_lock)
        {
            return new CircuitTicket(_epoch, _state == CircuitState.HalfOpen);
        }
    }

    private void Open()
    {
        _state = CircuitState.Open;
        _epoch++;
        _failures = 0;
        _openUntil = _time.GetTimestamp() + (long)(_openTime.TotalSeconds * _time.TimestampFrequency);
    }
}

/// <summary>Names one call a <see cref="CircuitBreaker"/> let through, so that its outcome is applied only while it is current.</summary>
/// <param name="Epoch">The breaker's state change count when the call entered.</param>
/// <param name="IsProbe">Whether the call is the half-open probe.</param>
public readonly record struct CircuitTicket(long Epoch, bool IsProbe);
