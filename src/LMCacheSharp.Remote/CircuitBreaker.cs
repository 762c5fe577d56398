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

    /// <summary>Whether a call may go to the remote now (false: answer it with a miss).</summary>
    public bool TryEnter()
    {
        lock (_lock)
        {
            var now = _time.GetTimestamp();
            switch (_state)
            {
                case CircuitState.Closed:
                    return true;
                case CircuitState.Open when now >= _openUntil:
                    _state = CircuitState.HalfOpen;
                    _probeStarted = now;
                    return true;
                case CircuitState.HalfOpen when _time.GetElapsedTime(_probeStarted, now) >= ProbeTimeout:
                    _probeStarted = now;
                    return true;
                default:
                    return false;
            }
        }
    }

    /// <summary>A call reached the remote and it answered (a miss counts as an answer).</summary>
    public void OnSuccess()
    {
        lock (_lock)
        {
            _state = CircuitState.Closed;
            _failures = 0;
            _openTime = MinOpenTime;
        }
    }

    /// <summary>A call failed or timed out.</summary>
    public void OnFailure()
    {
        lock (_lock)
        {
            if (_state == CircuitState.HalfOpen)
            {
                _openTime = TimeSpan.FromTicks(Math.Min(_openTime.Ticks * 2, MaxOpenTime.Ticks));
                Open();
            }
            else if (_state == CircuitState.Closed && ++_failures >= FailureThreshold)
            {
                Open();
            }
        }
    }

    private void Open()
    {
        _state = CircuitState.Open;
        _failures = 0;
        _openUntil = _time.GetTimestamp() + (long)(_openTime.TotalSeconds * _time.TimestampFrequency);
    }
}
