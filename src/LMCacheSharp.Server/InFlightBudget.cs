namespace LMCacheSharp.Server;

/// <summary>
/// Bytes of PUT values being received, across every connection of a server (<see cref="CacheServerOptions.MaxInFlightPutBytes"/>):
/// a session reserves a value's buffer here before renting it and gives it back once the store has the value (or the PUT
/// failed), so memory outside the store's capacity is bounded by configuration, not by how many clients announce large
/// values. A value larger than the whole budget is admitted only while nothing else is in flight. Thread-safe.
/// </summary>
public sealed class InFlightBudget
{
    private readonly Lock _lock = new();
    private long _used;
    private TaskCompletionSource _released = NewSignal();

    /// <summary>Creates a budget of <paramref name="limitBytes"/> bytes (&gt; 0).</summary>
    public InFlightBudget(long limitBytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(limitBytes);
        LimitBytes = limitBytes;
    }

    /// <summary>The budget in bytes.</summary>
    public long LimitBytes { get; }

    /// <summary>Bytes reserved now.</summary>
    public long UsedBytes
    {
        get
        {
            lock (_lock)
            {
                return _used;
            }
        }
    }

    /// <summary>Reserves <paramref name="bytes"/> when they fit now.</summary>
    public bool TryReserve(long bytes)
    {
        lock (_lock)
        {
            if (_used > 0 && _used + bytes > LimitBytes)
            {
                return false;
            }

            _used += bytes;
            return true;
        }
    }

    /// <summary>
    /// Reserves <paramref name="bytes"/>, waiting up to <paramref name="wait"/> (on <paramref name="time"/>) for other PUTs to
    /// give bytes back. False when they still do not fit: the caller answers Busy.
    /// </summary>
    public async ValueTask<bool> ReserveAsync(long bytes, TimeSpan wait, TimeProvider time, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(time);
        var deadline = time.GetTimestamp() + (long)(wait.TotalSeconds * time.TimestampFrequency);
        while (true)
        {
            Task released;
            lock (_lock)
            {
                if (_used == 0 || _used + bytes <= LimitBytes)
                {
                    _used += bytes;
                    return true;
                }

                released = _released.Task;
            }

            var left = time.GetElapsedTime(time.GetTimestamp(), deadline);
            if (left <= TimeSpan.Zero)
            {
                return false;
            }

            try
            {
                await released.WaitAsync(left, time, cancellationToken).ConfigureAwait(false);
            }
            catch (TimeoutException)
            {
                return false;
            }
        }
    }

    /// <summary>Gives back bytes reserved earlier and wakes the waiters.</summary>
    public void Release(long bytes)
    {
        TaskCompletionSource released;
        lock (_lock)
        {
            _used -= bytes;
            if (_used < 0)
            {
                throw new InvalidOperationException("in-flight budget released more than was reserved");
            }

            released = _released;
            _released = NewSignal();
        }

        released.TrySetResult();
    }

    private static TaskCompletionSource NewSignal() => new(TaskCreationOptions.RunContinuationsAsynchronously);
}
