using LMCacheSharp.Protocol;

namespace LMCacheSharp.Server.Tests;

/// <summary>The session's limits on slow, guessing and memory-hungry clients, on a fake clock.</summary>
public class CacheSessionLimitsTests
{
    private static readonly ProtocolLimits Limits = new() { MaxKeyBytes = 64, MaxValueBytes = 16 << 20, MaxKeysPerRequest = 256, MaxFrameBytes = 17 << 20 };

    [Fact]
    public async Task A_client_trickling_a_frame_under_the_minimum_rate_is_closed_although_every_byte_rearms_the_frame_timeout()
    {
        var time = new TimerSignallingTimeProvider();
        var options = new CacheServerOptions
        {
            Limits = Limits,
            FrameTimeout = TimeSpan.FromSeconds(30),
            MinDataRateBytesPerSecond = 1000,
            MinDataRateGracePeriod = TimeSpan.FromSeconds(2),
        };
        await using var s = new SessionHarness(options, time: time);
        var armed = time.NextArmedAsync();
        await s.SendAsync(w => FrameWriter.WritePutHead(w, 1, "k"u8, 100_000));
        for (var i = 0; i < 10 && !s.Running.IsCompleted; i++)
        {
            await armed.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
            armed = time.NextArmedAsync();
            time.Advance(TimeSpan.FromSeconds(1)); // one byte a second: far under 1000 bytes/s, far within the 30 s frame timeout
            await s.SendRawAsync([1]);
            await Task.WhenAny(armed, s.Running).WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
        }

        var reply = await s.ReceiveAsync();
        Assert.NotNull(reply);
        Assert.Equal(StatusCode.ProtocolViolation, reply.Value.Header.Status);
        Assert.Contains("too slow", ResponseBody.ParseMessage(reply.Value.Body), StringComparison.Ordinal);
        Assert.Null(await s.ReceiveAsync());
        Assert.Equal(1, s.Metrics.Snapshot(default).Single(p => p.Key == "connections_too_slow").Value);
        Assert.True(time.Fake.GetUtcNow() - time.Fake.Start < TimeSpan.FromSeconds(30));
    }

    [Fact]
    public async Task A_connection_idle_between_frames_is_never_closed()
    {
        var time = new TimerSignallingTimeProvider();
        var options = new CacheServerOptions { Limits = Limits, FrameTimeout = TimeSpan.FromSeconds(1), MinDataRateGracePeriod = TimeSpan.Zero };
        await using var s = new SessionHarness(options, time: time);
        await s.SendAsync(w => FrameWriter.WriteEmpty(w, Opcode.Ping, StatusCode.Ok, 1));
        await s.ExpectAsync(1, StatusCode.Ok);
        time.Advance(TimeSpan.FromHours(1)); // 3600 frame timeouts, between frames
        await s.SendAsync(w => FrameWriter.WriteEmpty(w, Opcode.Ping, StatusCode.Ok, 2));
        await s.ExpectAsync(2, StatusCode.Ok);

        // Neither limit applied between frames (the minimum rate has no grace here); both run on this clock inside one.
        var closing = s.ReceiveAsync();
        await s.SendAsync(w => FrameWriter.WritePutHead(w, 3, "k"u8, 1000));
        while (!closing.IsCompleted)
        {
            // Each read inside the frame may arm the timer anew: advance until one fires (an arming after this turn's
            // advance wakes the next turn).
            var armed = time.NextArmedAsync();
            time.Advance(options.FrameTimeout);
            await Task.WhenAny(armed, closing).WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
        }

        var reply = await closing;
        Assert.Equal(StatusCode.ProtocolViolation, reply!.Value.Header.Status); // "too slow" (no grace) or "frame timeout"
        Assert.Null(await s.ReceiveAsync());
    }

    [Fact]
    public async Task A_fast_client_is_not_held_to_the_rate_during_the_grace_period()
    {
        var time = new TimerSignallingTimeProvider();
        var options = new CacheServerOptions { Limits = Limits, MinDataRateBytesPerSecond = 1 << 30, MinDataRateGracePeriod = TimeSpan.FromSeconds(5) };
        await using var s = new SessionHarness(options, time: time);
        var armed = time.NextArmedAsync();
        await s.SendAsync(w => FrameWriter.WritePutHead(w, 1, "k"u8, 1000));
        await armed.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
        time.Advance(TimeSpan.FromSeconds(4)); // within the grace period
        await s.SendRawAsync(new byte[1000]);
        await s.ExpectAsync(1, StatusCode.Ok);
    }

    [Fact]
    public async Task Failed_auth_attempts_are_capped_per_connection_then_it_is_closed()
    {
        await using var s = new SessionHarness(new CacheServerOptions { AuthToken = "s3cret", MaxAuthFailures = 3 });
        for (uint i = 1; i <= 3; i++)
        {
            await s.SendAsync(w => FrameWriter.WriteAuth(w, i, "guess"u8));
            await s.ExpectAsync(i, StatusCode.Unauthorized);
        }

        Assert.Null(await s.ReceiveAsync()); // closed after the third
        await s.Running.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
        var stats = s.Metrics.Snapshot(default).ToDictionary(p => p.Key, p => p.Value);
        Assert.Equal(3, stats["auth_failures"]);
        Assert.Equal(1, stats["auth_closes"]);
    }

    [Fact]
    public async Task A_put_over_the_shared_in_flight_budget_waits_then_is_busy_and_its_connection_stays_usable()
    {
        var budget = new InFlightBudget(8 << 20);
        var options = new CacheServerOptions { Limits = Limits, InFlightPutWait = TimeSpan.FromMilliseconds(100) };
        var timeA = new TimerSignallingTimeProvider();
        var timeB = new TimerSignallingTimeProvider();
        await using var a = new SessionHarness(options, time: timeA, budget: budget);
        await using var b = new SessionHarness(options, new MemoryCacheStore(64 << 20), timeB, budget);
        var value = new byte[6 << 20];
        new Random(1).NextBytes(value);

        await a.SendAsync(w => FrameWriter.WritePutHead(w, 1, "a"u8, value.Length)); // header only: 6 MiB reserved, body pending
        // Reads of the key may arm the frame timer before the reservation; the read of the value always arms it after.
        while (true)
        {
            var armed = timeA.NextArmedAsync();
            if (budget.UsedBytes == 6 << 20)
            {
                break;
            }

            await armed.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
        }

        var busy = b.ExpectAsync(1, StatusCode.Busy);
        await b.SendAsync(w => FrameWriter.WritePutHead(w, 1, "b"u8, value.Length)); // 12 MiB would be over 8 MiB: waits
        // The wait's timer is armed after any frame timer of the key's reads: advance until it has fired. Each turn takes the
        // next arming first, so one armed after this turn's advance wakes the next turn.
        while (!busy.IsCompleted)
        {
            var armed = timeB.NextArmedAsync();
            timeB.Advance(TimeSpan.FromMilliseconds(100));
            await Task.WhenAny(armed, busy).WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
        }

        Assert.Contains("busy", ResponseBody.ParseMessage((await busy).Body), StringComparison.Ordinal);
        Assert.Equal(0, b.Store.Pool.RentedCount); // no buffer for the refused value

        await b.SendRawAsync(value); // the refused body streams through
        await b.SendAsync(w => FrameWriter.WritePut(w, 2, "small"u8, [1, 2]));
        await b.ExpectAsync(2, StatusCode.Ok);
        await b.SendAsync(w => FrameWriter.WriteKeyRequest(w, Opcode.Get, 3, "small"u8));
        Assert.Equal([1, 2], (await b.ExpectAsync(3, StatusCode.Ok)).Body);

        await a.SendRawAsync(value);
        await a.ExpectAsync(1, StatusCode.Ok);
        Assert.Equal(0, budget.UsedBytes);
        Assert.Equal(1, b.Metrics.Snapshot(default).Single(p => p.Key == "put_busy").Value);
    }
}
