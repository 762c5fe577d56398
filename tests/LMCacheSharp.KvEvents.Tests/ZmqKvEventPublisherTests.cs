using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Engine;
using LMCacheSharp.Core.Events;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Metrics;
using LMCacheSharp.Core.Tests;
using NetMQ;
using NetMQ.Sockets;

namespace LMCacheSharp.KvEvents.Tests;

/// <summary>The publisher over real ZeroMQ sockets on 127.0.0.1 (free ports), read by <see cref="KvEventSubscriber"/>.</summary>
public class ZmqKvEventPublisherTests
{
    private const int Chunk = 16;
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(10);

    private static KvEventPublisherOptions Options(bool replay = true) => new()
    {
        Endpoint = "tcp://127.0.0.1:0",
        ReplayEndpoint = replay ? "tcp://127.0.0.1:0" : null,
        BlockSize = Chunk,
    };

    /// <summary>
    /// A SUB socket misses what is sent before its subscription reaches the publisher (ZeroMQ's slow joiner): publish
    /// AllCleared probes until one arrives. Returns the sequence number the next batch will have.
    /// </summary>
    private static async Task<long> JoinAsync(ZmqKvEventPublisher publisher, KvEventSubscriber subscriber)
    {
        for (var attempt = 0; attempt < 200; attempt++)
        {
            publisher.Publish(KvEvent.AllCleared());
            await publisher.FlushAsync();
            if (subscriber.TryReceive(TimeSpan.FromMilliseconds(50), out var probe))
            {
                // Drain the probes still in flight behind it.
                var last = probe!.Sequence;
                while (last < publisher.NextSequence - 1 && subscriber.TryReceive(Wait, out var more))
                {
                    last = more!.Sequence;
                }

                return publisher.NextSequence;
            }
        }

        throw new TimeoutException("the subscription never reached the publisher");
    }

    private static List<KvEventMessage> ReceiveUntil(KvEventSubscriber subscriber, Func<KvEventMessage, bool> last)
    {
        var messages = new List<KvEventMessage>();
        while (true)
        {
            Assert.True(subscriber.TryReceive(Wait, out var message), $"stream stopped after {messages.Count} batches");
            messages.Add(message!);
            if (last(message!))
            {
                return messages;
            }
        }
    }

    [Fact]
    public async Task Every_stored_evicted_and_cleared_chunk_arrives_once_in_order_with_consecutive_sequence_numbers()
    {
        using var metrics = new CacheMetrics();
        using var publisher = new ZmqKvEventPublisher(Options(), metrics);
        using var subscriber = new KvEventSubscriber(publisher.Endpoint, publisher.ReplayEndpoint, "kv-events");
        var first = await JoinAsync(publisher, subscriber);

        // A memory tier of three chunks: a five-chunk prompt evicts the first two.
        var options = new LMCacheOptions { ChunkSize = Chunk, MaxLocalCpuSize = 3.0 * KvBufferPool.Alignment / (1L << 30), TokenExactReuse = false };
        await using var engine = CacheEngine.Create(options, TestData.Namespace(), metrics, events: publisher);
        var tokens = TestData.Tokens(5 * Chunk, 7);
        var hashes = engine.ComputeKeys(tokens).Select(KvEventWire.BlockHash).ToArray();
        await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens));
        await engine.Storage.ClearAsync();

        var messages = ReceiveUntil(subscriber, m => m.Batch.Events.Any(e => e is AllBlocksClearedEvent));
        Assert.All(messages, m => Assert.Equal("kv-events", m.Topic));
        Assert.Equal(Enumerable.Range(0, messages.Count).Select(i => first + i), messages.Select(m => m.Sequence));
        var events = messages.SelectMany(m => m.Batch.Events).ToList();

        // Each chunk stored once, in prompt order, each the child of the one before; tokens are the prompt's.
        var stored = events.OfType<BlockStoredEvent>().ToList();
        Assert.Equal(hashes, stored.SelectMany(s => s.BlockHashes));
        Assert.All(stored, s => Assert.Equal(("CPU", Chunk), (s.Medium, s.BlockSize)));
        Assert.Null(stored[0].ParentBlockHash);
        long? parent = null;
        var at = 0;
        foreach (var s in stored)
        {
            Assert.Equal(parent, s.ParentBlockHash);
            Assert.Equal(tokens.AsSpan(at, s.TokenIds.Length).ToArray(), s.TokenIds);
            at += s.TokenIds.Length;
            parent = s.BlockHashes[^1];
        }

        Assert.Equal(tokens.Length, at);
        // Evictions: chunk 0 when chunk 3 came, chunk 1 when chunk 4 came, each before the store that needed the room;
        // then the clear: the other three once each, and AllBlocksCleared last.
        var removed = events.OfType<BlockRemovedEvent>().SelectMany(r => r.BlockHashes).ToList();
        Assert.Equal(hashes[..2], removed[..2]);
        Assert.Equal(hashes[2..].Order(), removed[2..].Order());
        Assert.IsType<AllBlocksClearedEvent>(events[^1]);
        // Per chunk (batch boundaries depend on when the publisher thread wakes; a batch merges what it holds):
        var order = events.SelectMany(e => e switch
        {
            BlockStoredEvent s => s.BlockHashes.Select(h => "S" + Array.IndexOf(hashes, h)),
            BlockRemovedEvent r => r.BlockHashes.Select(h => "R" + Array.IndexOf(hashes, h)),
            _ => ["C"],
        }).ToList();
        Assert.Equal("S0 S1 S2 R0 S3 R1 S4", string.Join(" ", order.Take(7)));
        Assert.Equal(["R2", "R3", "R4"], order.Skip(7).Take(3).Order());
        Assert.Equal(11, order.Count);
        Assert.Equal(0, publisher.Queue.Dropped);

        // The replay buffer holds the same batches.
        var replayed = subscriber.Replay(first, Wait);
        Assert.Equal(messages.Select(m => m.Sequence), replayed.Select(m => m.Sequence));
    }

    [Fact]
    public async Task A_late_subscriber_fills_the_gap_by_replay_and_then_follows_the_live_stream()
    {
        using var publisher = new ZmqKvEventPublisher(Options());
        for (var i = 0; i < 5; i++)
        {
            publisher.Publish(KvEvent.Removed(KvMedium.Disk, KvEventBatchWriterTests.Key(i)));
            await publisher.FlushAsync(); // one batch each
        }

        Assert.Equal(5, publisher.NextSequence);
        using var subscriber = new KvEventSubscriber(publisher.Endpoint, publisher.ReplayEndpoint);
        var all = subscriber.Replay(0, Wait);
        Assert.Equal([0L, 1, 2, 3, 4], all.Select(m => m.Sequence));
        Assert.Equal([0L, 1, 2, 3, 4], all.Select(m => ((BlockRemovedEvent)m.Batch.Events.Single()).BlockHashes.Single()));
        Assert.Equal([3L, 4], subscriber.Replay(3, Wait).Select(m => m.Sequence));
        Assert.Empty(subscriber.Replay(99, Wait)); // nothing that new: only the end marker

        var next = await JoinAsync(publisher, subscriber);
        publisher.Publish(KvEvent.Removed(KvMedium.Disk, KvEventBatchWriterTests.Key(77)));
        Assert.True(subscriber.TryReceive(Wait, out var live));
        Assert.Equal(next, live!.Sequence);
        Assert.Equal([next - 2, next - 1, next], subscriber.Replay(next - 2, Wait).Select(m => m.Sequence));
    }

    [Fact]
    public async Task The_replay_buffer_keeps_the_newest_batches_up_to_its_bound()
    {
        var options = Options();
        options.BufferSteps = 3;
        using var publisher = new ZmqKvEventPublisher(options);
        for (var i = 0; i < 6; i++)
        {
            publisher.Publish(KvEvent.AllCleared());
            await publisher.FlushAsync();
        }

        using var subscriber = new KvEventSubscriber(publisher.Endpoint, publisher.ReplayEndpoint);
        Assert.Equal([3L, 4, 5], subscriber.Replay(0, Wait).Select(m => m.Sequence));
    }

    [Fact]
    public async Task A_REQ_client_as_in_vLLMs_example_gets_a_sequence_and_payload_pair()
    {
        using var publisher = new ZmqKvEventPublisher(Options());
        publisher.Publish(KvEvent.Stored(KvMedium.Cpu, KvEventBatchWriterTests.Key(3), null, new int[Chunk]));
        await publisher.FlushAsync();
        using var req = new RequestSocket();
        req.Options.Linger = TimeSpan.Zero;
        req.Connect(publisher.ReplayEndpoint!);
        req.SendFrame(new byte[8]); // start at 0, big-endian
        NetMQMessage? answer = null;
        Assert.True(req.TryReceiveMultipartMessage(Wait, ref answer));
        Assert.Equal(2, answer.FrameCount); // REQ strips the envelope: [seq, payload]
        Assert.Equal(new byte[8], answer[0].ToByteArray());
        Assert.IsType<BlockStoredEvent>(KvEventBatchReader.Read(answer[1].ToByteArray()).Events.Single());
        // A REQ socket takes one reply per request (vLLM's publisher answers the same way): the end marker and any further
        // batches need a DEALER, as KvEventSubscriber.Replay uses (see docs/fleet.md).
    }

    [Fact]
    public async Task Bad_replay_requests_are_answered_with_the_end_marker_or_dropped_and_the_publisher_goes_on()
    {
        using var publisher = new ZmqKvEventPublisher(Options());
        publisher.Publish(KvEvent.AllCleared());
        await publisher.FlushAsync();
        using var dealer = new DealerSocket();
        dealer.Options.Linger = TimeSpan.Zero;
        dealer.Connect(publisher.ReplayEndpoint!);

        void AssertEndMarkerOnly()
        {
            NetMQMessage? answer = null;
            Assert.True(dealer.TryReceiveMultipartMessage(Wait, ref answer));
            Assert.Equal(3, answer.FrameCount);
            Assert.Equal(Enumerable.Repeat((byte)0xFF, 8), answer[2 - 1].ToByteArray());
            Assert.True(answer[2].IsEmpty);
        }

        var shortSequence = new NetMQMessage();
        shortSequence.AppendEmptyFrame();
        shortSequence.Append(new byte[3]);
        dealer.SendMultipartMessage(shortSequence);
        AssertEndMarkerOnly();

        var extraFrame = new NetMQMessage();
        extraFrame.AppendEmptyFrame();
        extraFrame.Append(new byte[8]);
        extraFrame.Append("junk"u8.ToArray());
        dealer.SendMultipartMessage(extraFrame);
        AssertEndMarkerOnly();

        dealer.SendFrame(new byte[8]); // no empty delimiter: no envelope to answer through; dropped
        var ok = new NetMQMessage();
        ok.AppendEmptyFrame();
        ok.Append(new byte[8]);
        dealer.SendMultipartMessage(ok);
        NetMQMessage? replayed = null;
        Assert.True(dealer.TryReceiveMultipartMessage(Wait, ref replayed));
        Assert.Equal(new byte[8], replayed[1].ToByteArray()); // batch 0, not an answer to the dropped request
        Assert.Equal(3, publisher.BadReplayRequests);

        // Live publishing is unaffected.
        using var subscriber = new KvEventSubscriber(publisher.Endpoint);
        await JoinAsync(publisher, subscriber);
    }

    [Fact]
    public async Task A_subscriber_that_stops_reading_never_holds_up_the_cache()
    {
        var options = Options(replay: false);
        options.SendHighWatermark = 4;
        using var metrics = new CacheMetrics();
        using var publisher = new ZmqKvEventPublisher(options, metrics);
        using var stalled = new KvEventSubscriber(publisher.Endpoint); // connected, never read
        await JoinAsync(publisher, stalled);
        var cacheOptions = new LMCacheOptions { ChunkSize = Chunk, MaxLocalCpuSize = 4.0 * KvBufferPool.Alignment / (1L << 30), TokenExactReuse = false };
        await using var engine = CacheEngine.Create(cacheOptions, TestData.Namespace(), metrics, events: publisher);
        for (var i = 0; i < 200; i++)
        {
            var tokens = TestData.Tokens(4 * Chunk, 100 + i);
            Assert.Equal(4 * Chunk, await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens)));
        }

        await publisher.FlushAsync().WaitAsync(Wait); // the publisher thread kept going: the PUB socket drops at its mark
        Assert.Equal(0, publisher.Queue.Count);
        Assert.True(publisher.NextSequence > 4);
    }

    [Fact]
    public void Bad_options_are_refused_with_every_problem_named()
    {
        var e = Assert.Throws<ArgumentException>(() => new ZmqKvEventPublisher(new KvEventPublisherOptions
        {
            Endpoint = "udp://x:1",
            ReplayEndpoint = "tcp://127.0.0.1:99999",
            BlockSize = 0,
        }));
        Assert.Contains("Endpoint", e.Message, StringComparison.Ordinal);
        Assert.Contains("ReplayEndpoint", e.Message, StringComparison.Ordinal);
        Assert.Contains("BlockSize", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_port_in_use_fails_at_bind()
    {
        using var first = new ZmqKvEventPublisher(Options(replay: false));
        var e = Assert.Throws<KvEventBindException>(() => new ZmqKvEventPublisher(new KvEventPublisherOptions { Endpoint = first.Endpoint, BlockSize = Chunk }));
        Assert.Equal(first.Endpoint, e.Endpoint);
    }
}
