using System.Text;
using LMCacheSharp.Core.Events;
using LMCacheSharp.Core.Metrics;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using NetMQ;
using NetMQ.Sockets;

namespace LMCacheSharp.KvEvents;

/// <summary>
/// Publishes an instance's KV events as vLLM does: a ZeroMQ PUB socket sends each batch as [topic, sequence, payload]
/// (see <see cref="KvEventWire"/>, <see cref="KvEventBatchWriter"/>) and an optional ROUTER socket resends buffered batches
/// from a sequence number. Hand it to the cache as its <see cref="IKvEventSink"/>: <see cref="Publish"/> only puts the
/// event on a bounded <see cref="KvEventQueue"/> (full: dropped and counted, never a wait); one thread of its own (a
/// <see cref="NetMQPoller"/>, the only user of the sockets) batches, encodes, sends and answers replays. Both sockets are
/// bound (vLLM binds only wildcard endpoints and connects to others; an instance is a server here, consumers connect).
/// </summary>
public sealed partial class ZmqKvEventPublisher : IKvEventSink, IDisposable
{
    private static readonly byte[] EndSequence = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
    private readonly KvEventPublisherOptions _options;
    private readonly KvEventQueue _queue;
    private readonly PublisherSocket _pub;
    private readonly RouterSocket? _replay;
    private readonly NetMQQueue<TaskCompletionSource?> _wake = new();
    private readonly NetMQPoller _poller;
    private readonly byte[] _topic;
    private readonly ILogger _logger;
    private readonly TimeProvider _time;
    private readonly Queue<(long Sequence, byte[] Payload)> _buffer = new();
    private readonly List<KvEvent> _batch = [];
    private long _bufferBytes;
    private long _nextSequence;
    private long _badReplayRequests;
    private long _replays;
    private int _disposed;

    /// <summary>Binds the sockets and starts the publisher thread.</summary>
    /// <param name="options">Endpoints, topic, bounds (validated: <see cref="ArgumentException"/> lists every problem).</param>
    /// <param name="metrics">Where dropped events are counted, or null.</param>
    /// <param name="logger">Where failures are logged, or null.</param>
    /// <param name="timeProvider">The clock of the batches' timestamps (default: the system's).</param>
    /// <exception cref="KvEventBindException">An endpoint cannot be bound (port in use, address not local).</exception>
    public ZmqKvEventPublisher(KvEventPublisherOptions options, CacheMetrics? metrics = null, ILogger? logger = null, TimeProvider? timeProvider = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        var errors = options.GetErrors();
        if (errors.Count > 0)
        {
            throw new ArgumentException("Invalid KV event publisher options: " + string.Join("; ", errors), nameof(options));
        }

        _options = options;
        _logger = logger ?? NullLogger.Instance;
        _time = timeProvider ?? TimeProvider.System;
        _topic = Encoding.UTF8.GetBytes(options.Topic);
        _queue = new KvEventQueue(options.QueueCapacity, metrics);
        _pub = new PublisherSocket();
        try
        {
            _pub.Options.SendHighWatermark = options.SendHighWatermark;
            _pub.Options.Linger = TimeSpan.FromMilliseconds(100);
            Endpoint = Bind(_pub, options.Endpoint);
            if (options.ReplayEndpoint is not null)
            {
                _replay = new RouterSocket();
                // One replay answer is up to BufferSteps messages: the peer's pipe must hold them all, or the tail is lost.
                _replay.Options.SendHighWatermark = Math.Max(1000, options.BufferSteps + 2);
                _replay.Options.Linger = TimeSpan.Zero;
                ReplayEndpoint = Bind(_replay, options.ReplayEndpoint);
                _replay.ReceiveReady += OnReplayRequest;
            }
        }
        catch
        {
            _replay?.Dispose();
            _pub.Dispose();
            _wake.Dispose();
            throw;
        }

        _wake.ReceiveReady += OnWake;
        _poller = [_wake];
        if (_replay is not null)
        {
            _poller.Add(_replay);
        }

        _queue.EventsAvailable = () => _wake.Enqueue(null);
        _poller.RunAsync("lmcache-kv-events", isBackgroundThread: true);
    }

    /// <summary>The PUB endpoint as bound (a port of 0 replaced by the one picked).</summary>
    public string Endpoint { get; }

    /// <summary>The ROUTER endpoint as bound, or null without replay.</summary>
    public string? ReplayEndpoint { get; }

    /// <summary>The topic frame.</summary>
    public string Topic => _options.Topic;

    /// <summary>The queue between the cache and the publisher thread (its <see cref="KvEventQueue.Dropped"/> counts what fell off).</summary>
    public KvEventQueue Queue => _queue;

    /// <summary>The sequence number the next batch gets (so also the number of batches sent).</summary>
    public long NextSequence => Interlocked.Read(ref _nextSequence);

    /// <summary>Replay requests that were not [8-byte sequence] behind a REQ envelope.</summary>
    public long BadReplayRequests => Interlocked.Read(ref _badReplayRequests);

    /// <summary>Replay requests answered.</summary>
    public long ReplaysServed => Interlocked.Read(ref _replays);

    /// <inheritdoc />
    public void Publish(in KvEvent kvEvent) => _queue.Publish(kvEvent);

    /// <summary>Completes once every event queued before the call has been sent.</summary>
    public Task FlushAsync(CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _wake.Enqueue(done);
        return done.Task.WaitAsync(cancellationToken);
    }

    /// <summary>Sends what is queued (up to <see cref="KvEventPublisherOptions.ShutdownTimeout"/>), then stops the thread and closes the sockets.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        _queue.EventsAvailable = null;
        try
        {
            var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _wake.Enqueue(done);
            if (!done.Task.Wait(_options.ShutdownTimeout))
            {
                LogShutdownTimeout(_logger, _queue.Count, _options.ShutdownTimeout.TotalSeconds);
            }
        }
        catch (Exception e) when (e is ObjectDisposedException or NetMQException or TerminatingException)
        {
            // The poller is gone already: nothing more can be sent.
        }

        _poller.Stop();
        _poller.Dispose();
        _wake.Dispose();
        _replay?.Dispose();
        _pub.Dispose();
    }

    private static string Bind(NetMQSocket socket, string endpoint)
    {
        if (!KvEventEndpoint.TryParse(endpoint, out var parsed, out var problem))
        {
            throw new ArgumentException(problem, nameof(endpoint)); // the options were validated: not reached
        }

        try
        {
            if (parsed.Port != 0)
            {
                socket.Bind(parsed.ToString());
                return parsed.ToString();
            }

            var port = socket.BindRandomPort("tcp://" + parsed.Host);
            return (parsed with { Port = port }).ToString();
        }
        catch (NetMQException e)
        {
            throw new KvEventBindException(endpoint, e);
        }
    }

    // On the poller thread: every flush marker queued so far is completed after the events before it are sent.
    private void OnWake(object? sender, NetMQQueueEventArgs<TaskCompletionSource?> e)
    {
        List<TaskCompletionSource>? flushed = null;
        while (_wake.TryDequeue(out var item, TimeSpan.Zero))
        {
            if (item is not null)
            {
                (flushed ??= []).Add(item);
            }
        }

        Drain();
        flushed?.ForEach(f => f.TrySetResult());
    }

    private void Drain()
    {
        _queue.BeginDrain();
        while (true)
        {
            _batch.Clear();
            while (_batch.Count < _options.MaxEventsPerBatch && _queue.TryRead(out var kvEvent))
            {
                _batch.Add(kvEvent);
            }

            if (_batch.Count == 0)
            {
                return;
            }

            try
            {
                Send(_batch);
            }
            catch (Exception ex) when (ex is NetMQException or ArgumentException or InvalidOperationException)
            {
                LogSendFailed(_logger, ex, _batch.Count);
            }
        }
    }

    private void Send(List<KvEvent> events)
    {
        var timestamp = _time.GetUtcNow().ToUnixTimeMilliseconds() / 1000.0;
        var payload = KvEventBatchWriter.ToArray(timestamp, events, _options.BlockSize, _options.DataParallelRank);
        var sequence = _nextSequence;
        var message = new NetMQMessage(3);
        message.Append(_topic);
        message.Append(SequenceFrame(sequence));
        message.Append(payload);
        _pub.TrySendMultipartMessage(TimeSpan.Zero, message); // a PUB socket drops for a subscriber at its high-water mark
        Interlocked.Increment(ref _nextSequence);
        _buffer.Enqueue((sequence, payload));
        _bufferBytes += payload.Length;
        while (_buffer.Count > _options.BufferSteps || (_bufferBytes > _options.BufferBytes && _buffer.Count > 1))
        {
            _bufferBytes -= _buffer.Dequeue().Payload.Length;
        }
    }

    private static byte[] SequenceFrame(long sequence)
    {
        var frame = new byte[KvEventWire.SequenceSize];
        KvEventWire.WriteSequence(frame, sequence);
        return frame;
    }

    // On the poller thread. A request is [identity, empty, 8-byte start sequence] (a REQ client's envelope, or a DEALER that
    // sends the empty delimiter itself). Any other body behind a well-formed envelope is answered with the end marker alone,
    // so a REQ client is never left waiting; a request without an envelope cannot be answered and is dropped.
    private void OnReplayRequest(object? sender, NetMQSocketEventArgs e)
    {
        NetMQMessage? request = null;
        var handled = 0;
        while (handled++ < 64 && e.Socket.TryReceiveMultipartMessage(ref request))
        {
            var wellFormedEnvelope = request.FrameCount >= 2 && request[1].IsEmpty;
            if (request.FrameCount != 3 || !wellFormedEnvelope || !KvEventWire.TryReadSequence(request[2].ToByteArray(), out var start))
            {
                Interlocked.Increment(ref _badReplayRequests);
                LogBadReplayRequest(_logger, request.FrameCount);
                if (wellFormedEnvelope)
                {
                    Reply(request[0].ToByteArray(), EndSequence, []);
                }

                continue;
            }

            var identity = request[0].ToByteArray();
            var sent = true;
            foreach (var (sequence, payload) in _buffer)
            {
                if (sequence >= start && !(sent = Reply(identity, SequenceFrame(sequence), payload)))
                {
                    break;
                }
            }

            if (sent)
            {
                Reply(identity, EndSequence, []);
            }

            Interlocked.Increment(ref _replays);
        }
    }

    private bool Reply(byte[] identity, byte[] sequence, byte[] payload)
    {
        var message = new NetMQMessage(4);
        message.Append(identity);
        message.AppendEmptyFrame();
        message.Append(sequence);
        message.Append(payload);
        if (_replay!.TrySendMultipartMessage(TimeSpan.Zero, message))
        {
            return true;
        }

        LogReplayCut(_logger);
        return false;
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "kv events: {Queued} events still queued after {Seconds} s at shutdown; not published")]
    private static partial void LogShutdownTimeout(ILogger logger, int queued, double seconds);

    [LoggerMessage(Level = LogLevel.Error, Message = "kv events: a batch of {Events} events could not be sent")]
    private static partial void LogSendFailed(ILogger logger, Exception exception, int events);

    [LoggerMessage(Level = LogLevel.Debug, Message = "kv events: bad replay request of {Frames} frames (expected [identity, empty, 8-byte sequence])")]
    private static partial void LogBadReplayRequest(ILogger logger, int frames);

    [LoggerMessage(Level = LogLevel.Warning, Message = "kv events: a replay answer was cut short: the subscriber is not reading")]
    private static partial void LogReplayCut(ILogger logger);
}

/// <summary>A KV event socket could not be bound; <see cref="Endpoint"/> says which.</summary>
public sealed class KvEventBindException : IOException
{
    /// <summary>Creates the exception.</summary>
    public KvEventBindException(string endpoint, Exception innerException)
        : base($"cannot bind {endpoint}: {innerException?.Message}", innerException)
    {
        Endpoint = endpoint;
    }

    /// <summary>Creates the exception.</summary>
    public KvEventBindException()
        : this("", new IOException("cannot bind"))
    {
    }

    /// <summary>Creates the exception.</summary>
    public KvEventBindException(string message)
        : base(message)
    {
        Endpoint = "";
    }

    /// <summary>The endpoint as configured.</summary>
    public string Endpoint { get; }
}
