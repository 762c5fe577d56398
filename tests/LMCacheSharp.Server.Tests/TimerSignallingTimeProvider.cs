using Microsoft.Extensions.Time.Testing;

namespace LMCacheSharp.Server.Tests;

/// <summary>
/// A <see cref="FakeTimeProvider"/> that says when code under test arms a timer, so a test advances time only once the
/// session is waiting (no sleeps, no races with the session's own scheduling).
/// </summary>
internal sealed class TimerSignallingTimeProvider : TimeProvider
{
    private readonly Lock _lock = new();
    private TaskCompletionSource _armed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public FakeTimeProvider Fake { get; } = new();

    public override long TimestampFrequency => Fake.TimestampFrequency;

    public override long GetTimestamp() => Fake.GetTimestamp();

    public override DateTimeOffset GetUtcNow() => Fake.GetUtcNow();

    public override TimeZoneInfo LocalTimeZone => Fake.LocalTimeZone;

    /// <summary>Completes when a timer is next armed with a finite due time (after this call).</summary>
    public Task NextArmedAsync()
    {
        lock (_lock)
        {
            if (_armed.Task.IsCompleted)
            {
                _armed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            }

            return _armed.Task;
        }
    }

    public void Advance(TimeSpan by) => Fake.Advance(by);

    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
    {
        var timer = new SignallingTimer(this, Fake.CreateTimer(callback, state, dueTime, period));
        if (dueTime != Timeout.InfiniteTimeSpan)
        {
            Signal();
        }

        return timer;
    }

    private void Signal()
    {
        lock (_lock)
        {
            _armed.TrySetResult();
        }
    }

    private sealed class SignallingTimer(TimerSignallingTimeProvider owner, ITimer inner) : ITimer
    {
        public bool Change(TimeSpan dueTime, TimeSpan period)
        {
            var changed = inner.Change(dueTime, period);
            if (dueTime != Timeout.InfiniteTimeSpan)
            {
                owner.Signal();
            }

            return changed;
        }

        public void Dispose() => inner.Dispose();

        public ValueTask DisposeAsync() => inner.DisposeAsync();
    }
}
