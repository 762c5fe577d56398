using System.Collections.Concurrent;
using LMCacheSharp.Core.Metrics;

namespace LMCacheSharp.Core.Events;

/// <summary>
/// A bounded, lock-free queue of KV events between the cache path (many producers) and one consumer (a publisher thread).
/// A full queue drops the event and counts it in <c>lmcache.num_dropped_kv_events</c>: the cache never waits for a slow
/// consumer. The consumer is woken through <see cref="EventsAvailable"/>, raised once when the queue goes from drained to
/// non-empty (not once per event).
/// </summary>
public sealed class KvEventQueue : IKvEventSink
{
    /// <summary>Default <see cref="Capacity"/>: 100,000 events (vLLM's <c>max_queue_size</c>).</summary>
    public const int DefaultCapacity = 100_000;

    private readonly ConcurrentQueue<KvEvent> _queue = new();
    private readonly CacheMetrics? _metrics;
    private int _count;
    private int _signalled;
    private long _dropped;

    /// <summary>Creates a queue.</summary>
    /// <param name="capacity">Events held at most (default 100,000; range 1..10,000,000).</param>
    /// <param name="metrics">Where drops are counted, or null.</param>
    public KvEventQueue(int capacity = DefaultCapacity, CacheMetrics? metrics = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(capacity, 10_000_000);
        Capacity = capacity;
        _metrics = metrics;
    }

    /// <summary>Events held at most.</summary>
    public int Capacity { get; }

    /// <summary>Events waiting.</summary>
    public int Count => Volatile.Read(ref _count);

    /// <summary>Events dropped because the queue was full, since it was created.</summary>
    public long Dropped => Interlocked.Read(ref _dropped);

    /// <summary>
    /// Called (on the producer's thread, so it must be as quick as <see cref="Publish"/>) when events become available after
    /// the consumer called <see cref="BeginDrain"/>, or after the first event. Exceptions it throws are swallowed.
    /// </summary>
    public Action? EventsAvailable { get; set; }

    /// <inheritdoc />
    public void Publish(in KvEvent kvEvent)
    {
        if (Interlocked.Increment(ref _count) > Capacity)
        {
            Interlocked.Decrement(ref _count);
            Interlocked.Increment(ref _dropped);
            _metrics?.DroppedKvEvent();
            return;
        }

        _queue.Enqueue(kvEvent);
        if (Interlocked.Exchange(ref _signalled, 1) == 0)
        {
            try
            {
                EventsAvailable?.Invoke();
            }
            catch (Exception)
            {
                // The consumer's wake-up failed (it is shutting down): the event stays queued; nothing to tell the cache.
            }
        }
    }

    /// <summary>
    /// The consumer calls this before it drains the queue with <see cref="TryRead"/>: an event published after this call
    /// raises <see cref="EventsAvailable"/> again, so none is left unnoticed.
    /// </summary>
    public void BeginDrain() => Volatile.Write(ref _signalled, 0);

    /// <summary>The oldest event, if any.</summary>
    public bool TryRead(out KvEvent kvEvent)
    {
        if (!_queue.TryDequeue(out kvEvent))
        {
            return false;
        }

        Interlocked.Decrement(ref _count);
        return true;
    }
}
