using LMCacheSharp.KvEvents;
using Microsoft.Extensions.Logging;

namespace LMCacheSharp.Controller;

/// <summary>
/// Feeds one instance's KV event stream into the directory, on a thread of its own (<see cref="KvEventSubscriber"/> is a
/// blocking, single-threaded reader). It subscribes first, then replays from sequence 0 (the oldest batch the instance
/// kept), so nothing published while it joined is missed; a later gap in the sequence numbers is filled by a replay from
/// the first missing one. Batches at or below the last applied sequence are skipped, so a batch is applied once.
/// </summary>
internal sealed partial class KvEventIngestor : IDisposable
{
    private static readonly TimeSpan ReceiveTimeout = TimeSpan.FromMilliseconds(200);

    /// <summary>Quiet receive timeouts (200 ms each) after which the replay socket is asked for anything missed: 1 s.</summary>
    private const int IdleReplayEvery = 5;

    private readonly FleetInstance _instance;
    private readonly ChunkDirectory _directory;
    private readonly ControllerMetrics _metrics;
    private readonly ILogger _log;
    private readonly TimeSpan _replayTimeout;
    private readonly CancellationTokenSource _stop = new();
    private readonly Thread _thread;
    private long _next;
    private long _gaps;
    private long _replays;
    private long _lost;
    private volatile bool _replayPending;

    public KvEventIngestor(FleetInstance instance, ChunkDirectory directory, ControllerMetrics metrics, ILogger log, TimeSpan replayTimeout)
    {
        _instance = instance;
        _directory = directory;
        _metrics = metrics;
        _log = log;
        _replayTimeout = replayTimeout;
        _thread = new Thread(Run) { IsBackground = true, Name = "kv-events " + instance.Id };
        _thread.Start();
    }

    /// <summary>The next sequence number expected (batches below it are applied).</summary>
    public long NextSequence => Interlocked.Read(ref _next);

    /// <summary>Gaps seen on the live stream.</summary>
    public long Gaps => Interlocked.Read(ref _gaps);

    /// <summary>Replays that answered.</summary>
    public long Replays => Interlocked.Read(ref _replays);

    /// <summary>Batches the instance no longer had when a replay asked for them (the directory may miss their chunks).</summary>
    public long LostBatches => Interlocked.Read(ref _lost);

    /// <summary>Whether the first replay (or the one after a gap) is still owed.</summary>
    public bool CatchingUp => _replayPending;

    private void Run()
    {
        var registration = _instance.Registration;
        var backoff = TimeSpan.FromMilliseconds(200);
        var warned = false;
        var idle = 0;
        try
        {
            using var subscriber = new KvEventSubscriber(registration.KvEvents!, registration.KvEventsReplay, registration.KvEventsTopic);
            _replayPending = registration.KvEventsReplay is not null;
            while (!_stop.IsCancellationRequested)
            {
                if (_replayPending)
                {
                    if (!TryReplay(subscriber, ref warned))
                    {
                        _stop.Token.WaitHandle.WaitOne(backoff);
                        backoff = TimeSpan.FromTicks(Math.Min(backoff.Ticks * 2, TimeSpan.FromSeconds(10).Ticks));
                        continue;
                    }

                    backoff = TimeSpan.FromMilliseconds(200);
                }

                KvEventMessage? message;
                try
                {
                    if (!subscriber.TryReceive(ReceiveTimeout, out message))
                    {
                        // A PUB socket drops what it sends before the subscription has joined, and a gap is only seen
                        // when a later batch arrives: when the stream is quiet, ask the replay socket now and then
                        // (every IdleReplayEvery receive timeouts; it answers just its end marker when nothing is new).
                        if (registration.KvEventsReplay is not null && ++idle % IdleReplayEvery == 0)
                        {
                            TryReplay(subscriber, ref warned); // a failure is retried at the next quiet second
                        }

                        continue;
                    }

                    idle = 0;
                }
                catch (KvEventFormatException e)
                {
                    LogBadMessage(_log, _instance.Id, e.Message);
                    continue;
                }

                var next = Interlocked.Read(ref _next);
                if (message!.Sequence < next)
                {
                    continue; // replayed already
                }

                if (message.Sequence > next && registration.KvEventsReplay is not null)
                {
                    Interlocked.Increment(ref _gaps);
                    _metrics.Gap();
                    _replayPending = true;
                    if (!TryReplay(subscriber, ref warned) || message.Sequence < Interlocked.Read(ref _next))
                    {
                        continue; // the replay covered it (or failed: it is retried, and covers it then)
                    }
                }

                Apply(message);
            }
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            LogStreamFailed(_log, _instance.Id, e);
        }
    }

    private bool TryReplay(KvEventSubscriber subscriber, ref bool warned)
    {
        var from = Interlocked.Read(ref _next);
        IReadOnlyList<KvEventMessage> batches;
        try
        {
            _metrics.Replay();
            batches = subscriber.Replay(from, _replayTimeout);
        }
        catch (Exception e) when (e is TimeoutException or KvEventFormatException)
        {
            if (!warned)
            {
                LogReplayFailed(_log, _instance.Id, _instance.Registration.KvEventsReplay, e.Message);
                warned = true;
            }

            return false;
        }

        warned = false;
        Interlocked.Increment(ref _replays);
        if (batches.Count > 0 && batches[0].Sequence > from)
        {
            Interlocked.Add(ref _lost, batches[0].Sequence - from);
        }

        foreach (var batch in batches)
        {
            if (batch.Sequence >= Interlocked.Read(ref _next))
            {
                Apply(batch);
            }
        }

        _replayPending = false;
        return true;
    }

    private void Apply(KvEventMessage message)
    {
        _metrics.Batch(_directory.Apply(_instance.Index, message.Batch));
        Interlocked.Exchange(ref _next, message.Sequence + 1);
    }

    public void Dispose()
    {
        _stop.Cancel();
        _thread.Join(TimeSpan.FromSeconds(10) + _replayTimeout);
        _stop.Dispose();
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "instance {Id}: a KV event message that does not decode was skipped: {Reason}")]
    private static partial void LogBadMessage(ILogger log, string id, string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "instance {Id}: replay from {Endpoint} failed ({Reason}); retrying with backoff")]
    private static partial void LogReplayFailed(ILogger log, string id, string? endpoint, string reason);

    [LoggerMessage(Level = LogLevel.Error, Message = "instance {Id}: the KV event stream stopped")]
    private static partial void LogStreamFailed(ILogger log, string id, Exception e);
}
