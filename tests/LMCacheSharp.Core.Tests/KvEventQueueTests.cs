using LMCacheSharp.Core.Events;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Metrics;

namespace LMCacheSharp.Core.Tests;

public class KvEventQueueTests
{
    private static ChunkHash Key(byte b)
    {
        var bytes = new byte[ChunkHash.Size];
        bytes[0] = b;
        return new ChunkHash(bytes);
    }

    [Fact]
    public void A_full_queue_drops_new_events_and_counts_them()
    {
        using var metrics = new CacheMetrics();
        var queue = new KvEventQueue(capacity: 3, metrics);
        for (byte i = 0; i < 10; i++)
        {
            queue.Publish(KvEvent.Removed(KvMedium.Cpu, Key(i)));
        }

        Assert.Equal(3, queue.Count);
        Assert.Equal(7, queue.Dropped);
        Assert.Equal(7, metrics.Snapshot().DroppedKvEvents);
        // The oldest ones are kept, in order.
        for (byte i = 0; i < 3; i++)
        {
            Assert.True(queue.TryRead(out var e));
            Assert.Equal(Key(i), e.Key);
        }

        Assert.False(queue.TryRead(out _));
        queue.Publish(KvEvent.AllCleared()); // room again
        Assert.Equal(1, queue.Count);
    }

    [Fact]
    public void The_consumer_is_woken_once_per_drain_not_once_per_event()
    {
        var queue = new KvEventQueue();
        var wakes = 0;
        queue.EventsAvailable = () => wakes++;
        queue.Publish(KvEvent.AllCleared());
        queue.Publish(KvEvent.AllCleared());
        Assert.Equal(1, wakes);

        queue.BeginDrain();
        while (queue.TryRead(out _))
        {
        }

        queue.Publish(KvEvent.AllCleared());
        Assert.Equal(2, wakes); // published after BeginDrain: never left unnoticed
    }

    [Fact]
    public void A_wake_up_that_throws_does_not_reach_the_publisher()
    {
        var queue = new KvEventQueue { EventsAvailable = () => throw new InvalidOperationException("consumer gone") };
        queue.Publish(KvEvent.AllCleared());
        Assert.Equal(1, queue.Count);
    }

    [Theory]
    [InlineData("tcp://127.0.0.1:5557", "tcp://127.0.0.1:5557")]
    [InlineData("tcp://*:0", "tcp://*:0")]
    [InlineData("tcp://localhost:5558", "tcp://127.0.0.1:5558")]
    [InlineData("tcp://[::1]:5557", "tcp://[::1]:5557")]
    public void Endpoints_parse(string text, string expected)
    {
        Assert.True(KvEventEndpoint.TryParse(text, out var endpoint, out var error), error);
        Assert.Equal(expected, endpoint.ToString());
    }

    [Theory]
    [InlineData("")]
    [InlineData("127.0.0.1:5557")]
    [InlineData("ipc:///tmp/x")]
    [InlineData("tcp://127.0.0.1")]
    [InlineData("tcp://127.0.0.1:70000")]
    [InlineData("tcp://127.0.0.1:-1")]
    [InlineData("tcp://example.com:5557")]
    public void Bad_endpoints_are_refused_with_a_reason(string text)
    {
        Assert.False(KvEventEndpoint.TryParse(text, out _, out var error));
        Assert.Contains("tcp://HOST:PORT", error, StringComparison.Ordinal);
    }
}
