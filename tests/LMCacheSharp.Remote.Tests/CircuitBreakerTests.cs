using Microsoft.Extensions.Time.Testing;

namespace LMCacheSharp.Remote.Tests;

public class CircuitBreakerTests
{
    [Fact]
    public void Opens_after_the_threshold_probes_after_the_open_time_and_backs_off()
    {
        var time = new FakeTimeProvider();
        var breaker = new CircuitBreaker(3, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(3), TimeSpan.FromSeconds(10), time);
        for (var i = 0; i < 2; i++)
        {
            Assert.True(breaker.TryEnter());
            breaker.OnFailure();
        }

        Assert.Equal(CircuitState.Closed, breaker.State);
        breaker.OnFailure();
        Assert.Equal(CircuitState.Open, breaker.State);
        Assert.False(breaker.TryEnter());

        time.Advance(TimeSpan.FromSeconds(1));
        Assert.True(breaker.TryEnter()); // the probe
        Assert.Equal(CircuitState.HalfOpen, breaker.State);
        Assert.False(breaker.TryEnter()); // one probe at a time
        breaker.OnFailure(); // probe failed: open for 2 s
        time.Advance(TimeSpan.FromSeconds(1.5));
        Assert.False(breaker.TryEnter());
        time.Advance(TimeSpan.FromSeconds(0.5));
        Assert.True(breaker.TryEnter());
        breaker.OnFailure(); // 4 s, capped at 3
        time.Advance(TimeSpan.FromSeconds(3));
        Assert.True(breaker.TryEnter());
        breaker.OnSuccess();
        Assert.Equal(CircuitState.Closed, breaker.State);
        Assert.True(breaker.TryEnter());
    }

    [Fact]
    public void A_probe_that_never_reports_lets_another_through_after_the_probe_timeout()
    {
        var time = new FakeTimeProvider();
        var breaker = new CircuitBreaker(1, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(5), time);
        breaker.OnFailure();
        time.Advance(TimeSpan.FromSeconds(1));
        Assert.True(breaker.TryEnter());
        time.Advance(TimeSpan.FromSeconds(4));
        Assert.False(breaker.TryEnter());
        time.Advance(TimeSpan.FromSeconds(1));
        Assert.True(breaker.TryEnter());
    }

    [Fact]
    public void Successes_reset_the_failure_count()
    {
        var breaker = new CircuitBreaker(2);
        breaker.OnFailure();
        breaker.OnSuccess();
        breaker.OnFailure();
        Assert.Equal(CircuitState.Closed, breaker.State);
    }
}

public class CircuitBreakerTicketTests
{
    [Fact]
    public void A_success_of_a_call_that_entered_before_the_circuit_opened_does_not_close_it()
    {
        var time = new FakeTimeProvider();
        var breaker = new CircuitBreaker(2, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(4), TimeSpan.FromSeconds(10), time);
        Assert.True(breaker.TryEnter(out var slow));
        for (var i = 0; i < 2; i++)
        {
            Assert.True(breaker.TryEnter(out var failing));
            breaker.OnFailure(failing);
        }

        Assert.Equal(CircuitState.Open, breaker.State);
        breaker.OnSuccess(slow); // stale
        Assert.Equal(CircuitState.Open, breaker.State);

        time.Advance(TimeSpan.FromSeconds(1));
        Assert.True(breaker.TryEnter(out var probe));
        Assert.True(probe.IsProbe);
        breaker.OnSuccess(slow); // still stale while half-open
        breaker.OnFailure(slow); // and a stale failure does not reopen it either
        Assert.Equal(CircuitState.HalfOpen, breaker.State);
        breaker.OnSuccess(probe);
        Assert.Equal(CircuitState.Closed, breaker.State);
    }

    [Fact]
    public void A_failure_of_a_call_that_entered_before_the_circuit_opened_does_not_reopen_it_once_closed()
    {
        var time = new FakeTimeProvider();
        var breaker = new CircuitBreaker(1, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(10), time);
        Assert.True(breaker.TryEnter(out var stuck));
        breaker.OnFailure(); // another call's failure opens the circuit
        time.Advance(TimeSpan.FromSeconds(1));
        Assert.True(breaker.TryEnter(out var probe));
        breaker.OnSuccess(probe);
        Assert.Equal(CircuitState.Closed, breaker.State);

        breaker.OnFailure(stuck); // the stuck call finally fails: stale
        Assert.Equal(CircuitState.Closed, breaker.State);
        Assert.True(breaker.TryEnter(out var fresh));
        breaker.OnFailure(fresh); // a call of this closed period still counts
        Assert.Equal(CircuitState.Open, breaker.State);
    }

    [Fact]
    public void A_probe_replaced_after_the_probe_timeout_no_longer_decides()
    {
        var time = new FakeTimeProvider();
        var breaker = new CircuitBreaker(1, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(5), time);
        breaker.OnFailure();
        time.Advance(TimeSpan.FromSeconds(1));
        Assert.True(breaker.TryEnter(out var first));
        time.Advance(TimeSpan.FromSeconds(5));
        Assert.True(breaker.TryEnter(out var second));
        breaker.OnSuccess(first);
        Assert.Equal(CircuitState.HalfOpen, breaker.State);
        breaker.OnFailure(second);
        Assert.Equal(CircuitState.Open, breaker.State);
    }
}
