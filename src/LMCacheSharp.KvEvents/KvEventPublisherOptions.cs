using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Events;

namespace LMCacheSharp.KvEvents;

/// <summary>Settings of a <see cref="ZmqKvEventPublisher"/>. Defaults follow vLLM's <c>KVEventsConfig</c> where it has one.</summary>
public sealed class KvEventPublisherOptions
{
    /// <summary>The PUB socket's endpoint, <c>tcp://HOST:PORT</c> (see <see cref="KvEventEndpoint"/>); bound, never connected. Required.</summary>
    public string Endpoint { get; set; } = "";

    /// <summary>The ROUTER socket's endpoint for replay requests, same form; null: no replay. Default null.</summary>
    public string? ReplayEndpoint { get; set; }

    /// <summary>The first frame of every message. Default "kv-events" (vLLM's default is "", which no subscriber filter excludes
    /// either; "kv-events" is what vLLM's example subscriber asks for); at most 256 bytes of UTF-8.</summary>
    public string Topic { get; set; } = "kv-events";

    /// <summary>Tokens per chunk: the <c>block_size</c> of every BlockStored. Required; range 1..65536.</summary>
    public int BlockSize { get; set; }

    /// <summary>Batches kept for replay (vLLM's <c>buffer_steps</c>). Default 10,000; range 1..1,000,000.</summary>
    public int BufferSteps { get; set; } = 10_000;

    /// <summary>Bytes of payload kept for replay; the oldest batches go first when either bound is reached. Default 64 MiB; range 1 KiB..16 GiB.</summary>
    public long BufferBytes { get; set; } = 64L << 20;

    /// <summary>Events waiting for the publisher thread before new ones are dropped (vLLM's <c>max_queue_size</c>). Default 100,000; range 1..10,000,000.</summary>
    public int QueueCapacity { get; set; } = KvEventQueue.DefaultCapacity;

    /// <summary>ZeroMQ high-water mark of the PUB socket, in messages per subscriber (vLLM's <c>hwm</c>): a subscriber that
    /// falls further behind loses messages (and can replay them). Default 100,000; range 1..10,000,000.</summary>
    public int SendHighWatermark { get; set; } = 100_000;

    /// <summary>Events in one batch at most. Default 1,024; range 1..100,000.</summary>
    public int MaxEventsPerBatch { get; set; } = 1024;

    /// <summary>The third field of every batch (vLLM's data-parallel rank). Default 0; range 0..65535.</summary>
    public int DataParallelRank { get; set; }

    /// <summary>How long disposing waits to publish what is queued. Default 1 s (vLLM's); range 0..60 s.</summary>
    public TimeSpan ShutdownTimeout { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>The publisher options that <paramref name="cache"/> asks for (its <c>kv_events_*</c> keys and chunk size), or null when it asks for none.</summary>
    public static KvEventPublisherOptions? FromCacheOptions(LMCacheOptions cache)
    {
        ArgumentNullException.ThrowIfNull(cache);
        return cache.KvEventsEndpoint is null ? null : new KvEventPublisherOptions
        {
            Endpoint = cache.KvEventsEndpoint,
            ReplayEndpoint = cache.KvEventsReplayEndpoint,
            Topic = cache.KvEventsTopic,
            BlockSize = cache.ChunkSize,
            BufferSteps = cache.KvEventsBufferSteps,
            QueueCapacity = cache.KvEventsMaxQueueSize,
        };
    }

    /// <summary>Every problem with the values, each naming the setting; empty when valid.</summary>
    public IReadOnlyList<string> GetErrors()
    {
        var errors = new List<string>();
        if (!KvEventEndpoint.TryParse(Endpoint, out var pub, out var problem))
        {
            errors.Add($"Endpoint: {problem}");
        }

        if (ReplayEndpoint is not null)
        {
            if (!KvEventEndpoint.TryParse(ReplayEndpoint, out var replay, out problem))
            {
                errors.Add($"ReplayEndpoint: {problem}");
            }
            else if (replay.Port != 0 && replay.Port == pub.Port)
            {
                errors.Add("ReplayEndpoint: must use another port than Endpoint");
            }
        }

        if (Topic is null || System.Text.Encoding.UTF8.GetByteCount(Topic) > 256)
        {
            errors.Add("Topic: must be at most 256 bytes of UTF-8");
        }

        Check(errors, nameof(BlockSize), BlockSize, 1, 65536);
        Check(errors, nameof(BufferSteps), BufferSteps, 1, 1_000_000);
        Check(errors, nameof(BufferBytes), BufferBytes, 1024, 16L << 30);
        Check(errors, nameof(QueueCapacity), QueueCapacity, 1, 10_000_000);
        Check(errors, nameof(SendHighWatermark), SendHighWatermark, 1, 10_000_000);
        Check(errors, nameof(MaxEventsPerBatch), MaxEventsPerBatch, 1, 100_000);
        Check(errors, nameof(DataParallelRank), DataParallelRank, 0, 65535);
        if (ShutdownTimeout < TimeSpan.Zero || ShutdownTimeout > TimeSpan.FromSeconds(60))
        {
            errors.Add($"ShutdownTimeout: must be in 0..60 s, got {ShutdownTimeout}");
        }

        return errors;
    }

    private static void Check(List<string> errors, string name, long value, long min, long max)
    {
        if (value < min || value > max)
        {
            errors.Add($"{name}: must be in {min}..{max}, got {value}");
        }
    }
}
