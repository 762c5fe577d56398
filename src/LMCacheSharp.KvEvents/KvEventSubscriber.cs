using System.Text;
using NetMQ;
using NetMQ.Sockets;

namespace LMCacheSharp.KvEvents;

/// <summary>One message of a KV event stream: its topic, sequence number and decoded batch.</summary>
/// <param name="Topic">The topic frame.</param>
/// <param name="Sequence">The batch's sequence number.</param>
/// <param name="Batch">The decoded payload.</param>
public sealed record KvEventMessage(string Topic, long Sequence, KvEventBatch Batch);

/// <summary>
/// Reads a KV event stream in vLLM's format (from lmcache or vLLM): a SUB socket on the publisher's endpoint and, for
/// <see cref="Replay"/>, a DEALER socket on its replay endpoint that speaks the REQ envelope (an empty delimiter frame,
/// then the 8-byte start sequence). Not thread-safe: use it from one thread at a time. The controller and the tests use it.
/// </summary>
public sealed class KvEventSubscriber : IDisposable
{
    private readonly SubscriberSocket _sub;
    private readonly DealerSocket? _replay;

    /// <summary>Connects to <paramref name="endpoint"/> (and <paramref name="replayEndpoint"/> when given).</summary>
    /// <param name="endpoint">The PUB endpoint, e.g. tcp://127.0.0.1:5557.</param>
    /// <param name="replayEndpoint">The ROUTER endpoint, or null.</param>
    /// <param name="topic">The topic prefix to subscribe to ("" for every topic).</param>
    public KvEventSubscriber(string endpoint, string? replayEndpoint = null, string topic = "")
    {
        ArgumentException.ThrowIfNullOrEmpty(endpoint);
        ArgumentNullException.ThrowIfNull(topic);
        _sub = new SubscriberSocket();
        _sub.Options.Linger = TimeSpan.Zero;
        _sub.Options.ReceiveHighWatermark = 1_000_000;
        _sub.Connect(endpoint);
        _sub.Subscribe(topic);
        if (replayEndpoint is not null)
        {
            _replay = new DealerSocket();
            _replay.Options.Linger = TimeSpan.Zero;
            _replay.Options.ReceiveHighWatermark = 1_000_000;
            _replay.Connect(replayEndpoint);
        }
    }

    /// <summary>
    /// The next message, or false after <paramref name="timeout"/>. A message that is not [topic, 8-byte sequence, payload]
    /// or whose payload does not decode throws <see cref="KvEventFormatException"/> (the stream goes on after it).
    /// </summary>
    public bool TryReceive(TimeSpan timeout, out KvEventMessage? message)
    {
        message = null;
        NetMQMessage? frames = null;
        if (!_sub.TryReceiveMultipartMessage(timeout, ref frames))
        {
            return false;
        }

        if (frames.FrameCount != 3 || !KvEventWire.TryReadSequence(frames[1].ToByteArray(), out var sequence))
        {
            throw new KvEventFormatException(KvEventFormatError.NotABatch, $"a message is [topic, 8-byte sequence, payload], got {frames.FrameCount} frames");
        }

        message = new KvEventMessage(Encoding.UTF8.GetString(frames[0].ToByteArray()), sequence, KvEventBatchReader.Read(frames[2].ToByteArray()));
        return true;
    }

    /// <summary>
    /// Asks the replay socket for every buffered batch from <paramref name="fromSequence"/> on and returns them in order, up to
    /// the end marker. A batch older than the publisher's buffer is not there: the first sequence returned tells. Throws
    /// <see cref="TimeoutException"/> when no end marker comes within <paramref name="timeout"/> of the last answer.
    /// </summary>
    public IReadOnlyList<KvEventMessage> Replay(long fromSequence, TimeSpan timeout)
    {
        if (_replay is null)
        {
            throw new InvalidOperationException("This subscriber was created without a replay endpoint.");
        }

        var request = new NetMQMessage(2);
        request.AppendEmptyFrame();
        var sequence = new byte[KvEventWire.SequenceSize];
        KvEventWire.WriteSequence(sequence, fromSequence);
        request.Append(sequence);
        _replay.SendMultipartMessage(request);
        var result = new List<KvEventMessage>();
        while (true)
        {
            NetMQMessage? answer = null;
            if (!_replay.TryReceiveMultipartMessage(timeout, ref answer))
            {
                throw new TimeoutException($"No end of replay within {timeout.TotalSeconds} s after {result.Count} batches.");
            }

            // [empty, sequence, payload]: the DEALER keeps the delimiter a REQ socket would strip.
            if (answer.FrameCount != 3 || !answer[0].IsEmpty || !KvEventWire.TryReadSequence(answer[1].ToByteArray(), out var seq))
            {
                throw new KvEventFormatException(KvEventFormatError.NotABatch, $"a replay answer is [empty, 8-byte sequence, payload], got {answer.FrameCount} frames");
            }

            if (seq == KvEventWire.EndOfReplay && answer[2].IsEmpty)
            {
                return result;
            }

            result.Add(new KvEventMessage("", seq, KvEventBatchReader.Read(answer[2].ToByteArray())));
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _replay?.Dispose();
        _sub.Dispose();
    }
}
