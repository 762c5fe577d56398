using LMCacheSharp.Core.Codecs;

namespace LMCacheSharp.Core.Configuration;

/// <summary>
/// Cache configuration. Property names map to LMCache's YAML keys (shown on each) and to <c>LMCACHE_*</c> environment
/// variables (the key in upper case, e.g. <c>LMCACHE_CHUNK_SIZE</c>). Load with <see cref="LMCacheConfigLoader"/>;
/// <see cref="Validate"/> names the key and the allowed range of every bad value.
/// </summary>
public sealed class LMCacheOptions
{
    /// <summary><c>chunk_size</c>: tokens per chunk. Default 256; range 1..65536.</summary>
    public int ChunkSize { get; set; } = 256;

    /// <summary><c>local_cpu</c>: keep a memory tier. Default true.</summary>
    public bool LocalCpu { get; set; } = true;

    /// <summary><c>max_local_cpu_size</c>: memory tier capacity in GiB (fractions allowed). Default 5; range (0, 4096].</summary>
    public double MaxLocalCpuSize { get; set; } = 5.0;

    /// <summary><c>save_unfull_chunk</c>: also store a prompt's trailing partial chunk. Default false.</summary>
    public bool SaveUnfullChunk { get; set; }

    /// <summary><c>local_disk</c>: directory of the disk tier, as <c>file:///path</c> or a path; null disables it. Default null.</summary>
    public string? LocalDisk { get; set; }

    /// <summary><c>max_local_disk_size</c>: disk tier capacity in GiB. Default 0; must be &gt; 0 (up to 1,048,576) when <see cref="LocalDisk"/> is set.</summary>
    public double MaxLocalDiskSize { get; set; }

    /// <summary><c>local_disk_serde</c>: codec of the disk tier (naive, lz4, zstd, int8, fp8 where built). Default naive.</summary>
    public string LocalDiskSerde { get; set; } = "naive";

    /// <summary><c>local_disk_o_direct</c>: read and write disk-tier files with O_DIRECT (Linux), bypassing the page cache; falls back to buffered I/O where the filesystem refuses it. Default false.</summary>
    public bool LocalDiskODirect { get; set; }

    /// <summary><c>local_disk_fsync</c>: fsync each disk-tier file before renaming it into place (and its directory after), so stored chunks survive a power loss; without it a torn file is detected by its checksum and dropped. Default false.</summary>
    public bool LocalDiskFsync { get; set; }

    /// <summary><c>remote_url</c>: remote tier, e.g. <c>lm://127.0.0.1:65432</c>, <c>redis://host:6379</c>, <c>blackhole://</c>; null disables it. Default null.</summary>
    public string? RemoteUrl { get; set; }

    /// <summary><c>remote_serde</c>: codec of the remote tier. Default naive.</summary>
    public string RemoteSerde { get; set; } = "naive";

    /// <summary><c>remote_timeout_ms</c>: timeout of one remote operation in milliseconds. Default 1000; range 1..600000.</summary>
    public int RemoteTimeoutMs { get; set; } = 1000;

    /// <summary><c>write_queue_chunks</c>: chunks the background writer to disk/remote may hold before stores are dropped. Default 256; range 1..1000000.</summary>
    public int WriteQueueChunks { get; set; } = 256;

    /// <summary><c>verify_memory_checksums</c>: check a chunk's checksum on every memory-tier hit (disk and remote hits are always checked). Default false.</summary>
    public bool VerifyMemoryChecksums { get; set; }

    /// <summary><c>pool_retained_size</c>: bytes of freed chunk buffers kept for reuse, as a size ("256MB"). Default 256 MiB; range 0..1 TiB.</summary>
    public long PoolRetainedBytes { get; set; } = 256L << 20;

    /// <summary>
    /// <c>max_pinned_size</c> (LMCacheSharp's key): bytes of the memory tier that pinned chunks (<c>POST /lmcache/pin</c>)
    /// may hold at once, as a size ("2GB"); a pin that would go over it is refused. Default null: half of
    /// <c>max_local_cpu_size</c>; range 0..<c>max_local_cpu_size</c> (0: no pins).
    /// </summary>
    public long? MaxPinnedBytes { get; set; }

    /// <summary>
    /// <c>token_exact_reuse</c>: reuse cached KV to the token, not only whole chunks: every stored chunk is indexed by its
    /// parent with its token ids, the partial last chunk of each prompt (and of prompt + completion) is kept in the memory
    /// tier, and a lookup continues past the last whole-chunk hit with the stored child that shares the most tokens.
    /// Default true.
    /// </summary>
    public bool TokenExactReuse { get; set; } = true;

    /// <summary>
    /// <c>save_decode_cache</c> (LMCache's key): when a request ends, store the KV of its prompt and generated tokens, so
    /// that the next turn of a chat restores the whole previous exchange. Default true.
    /// </summary>
    public bool SaveDecodeCache { get; set; } = true;

    /// <summary>
    /// <c>kv_events_endpoint</c>: publish KV events (stores, evictions, clears of every tier) in vLLM's format on a ZeroMQ
    /// PUB socket bound here, <c>tcp://HOST:PORT</c> (HOST <c>*</c>, an IP address or localhost; PORT 0 picks a free one);
    /// null: no events. Default null. See docs/fleet.md.
    /// </summary>
    public string? KvEventsEndpoint { get; set; }

    /// <summary>
    /// <c>kv_events_replay_endpoint</c>: a ZeroMQ ROUTER socket bound here answers replay requests (resends the buffered
    /// batches from a sequence number), same form as <see cref="KvEventsEndpoint"/>; null: no replay. Default null.
    /// </summary>
    public string? KvEventsReplayEndpoint { get; set; }

    /// <summary><c>kv_events_topic</c>: the topic frame of every event message. Default "kv-events"; at most 256 bytes of UTF-8.</summary>
    public string KvEventsTopic { get; set; } = "kv-events";

    /// <summary><c>kv_events_buffer_steps</c>: event batches kept for replay. Default 10000 (vLLM's <c>buffer_steps</c>); range 1..1000000.</summary>
    public int KvEventsBufferSteps { get; set; } = 10_000;

    /// <summary>
    /// <c>kv_events_max_queue_size</c>: events waiting for the publisher thread before new ones are dropped (and counted in
    /// <c>lmcache_num_dropped_kv_events</c>; the cache never waits). Default 100000 (vLLM's <c>max_queue_size</c>); range 1..10000000.
    /// </summary>
    public int KvEventsMaxQueueSize { get; set; } = Events.KvEventQueue.DefaultCapacity;

    /// <summary><c>cache_policy</c>: eviction policy of the memory tier: LRU, LFU, FIFO or MRU (case-insensitive). Default LRU.</summary>
    public string CachePolicy { get; set; } = "LRU";

    /// <summary><see cref="CachePolicy"/> parsed (valid options only).</summary>
    public Storage.EvictionPolicy EvictionPolicy => Enum.TryParse<Storage.EvictionPolicy>(CachePolicy, ignoreCase: true, out var p) ? p : Storage.EvictionPolicy.Lru;

    /// <summary>Memory tier capacity in bytes.</summary>
    public long MaxLocalCpuSizeBytes => (long)(MaxLocalCpuSize * (1L << 30));

    /// <summary>Disk tier capacity in bytes.</summary>
    public long MaxLocalDiskSizeBytes => (long)(MaxLocalDiskSize * (1L << 30));

    /// <summary>A copy of these options.</summary>
    public LMCacheOptions Clone() => (LMCacheOptions)MemberwiseClone();

    /// <summary>Every problem with the current values, each naming its key and the allowed range; empty when valid.</summary>
    public IReadOnlyList<string> GetErrors()
    {
        var errors = new List<string>();
        if (ChunkSize is < 1 or > 65536)
        {
            errors.Add($"chunk_size: must be an integer in 1..65536 tokens, got {ChunkSize}");
        }

        if (!(MaxLocalCpuSize > 0 && MaxLocalCpuSize <= 4096))
        {
            errors.Add($"max_local_cpu_size: must be a number of GiB in (0, 4096], got {MaxLocalCpuSize}");
        }

        if (MaxLocalDiskSize is < 0 or > 1_048_576 || double.IsNaN(MaxLocalDiskSize))
        {
            errors.Add($"max_local_disk_size: must be a number of GiB in [0, 1048576], got {MaxLocalDiskSize}");
        }
        else if (!string.IsNullOrEmpty(LocalDisk) && MaxLocalDiskSize <= 0)
        {
            errors.Add("max_local_disk_size: must be > 0 GiB when local_disk is set");
        }

        if (KvCodecs.Find(LocalDiskSerde) is null)
        {
            errors.Add($"local_disk_serde: must be one of {KvCodecs.Names}, got '{LocalDiskSerde}'");
        }

        if (KvCodecs.Find(RemoteSerde) is null)
        {
            errors.Add($"remote_serde: must be one of {KvCodecs.Names}, got '{RemoteSerde}'");
        }

        if (RemoteUrl is { Length: > 0 } url && !Uri.TryCreate(url, UriKind.Absolute, out _))
        {
            errors.Add($"remote_url: must be an absolute URL such as lm://127.0.0.1:65432 or redis://127.0.0.1:6379, got '{url}'");
        }

        if (RemoteTimeoutMs is < 1 or > 600_000)
        {
            errors.Add($"remote_timeout_ms: must be an integer in 1..600000 ms, got {RemoteTimeoutMs}");
        }

        if (WriteQueueChunks is < 1 or > 1_000_000)
        {
            errors.Add($"write_queue_chunks: must be an integer in 1..1000000, got {WriteQueueChunks}");
        }

        if (MaxPinnedBytes is < 0 || MaxPinnedBytes > MaxLocalCpuSizeBytes)
        {
            errors.Add($"max_pinned_size: must be a size in 0..max_local_cpu_size ({MaxLocalCpuSizeBytes} bytes), got {MaxPinnedBytes} bytes");
        }

        if (PoolRetainedBytes is < 0 or > 1L << 40)
        {
            errors.Add($"pool_retained_size: must be a size in 0..1TB, got {PoolRetainedBytes} bytes");
        }

        if (CachePolicy is null || !Enum.TryParse<Storage.EvictionPolicy>(CachePolicy, ignoreCase: true, out _) || int.TryParse(CachePolicy, out _))
        {
            errors.Add($"cache_policy: must be LRU, LFU, FIFO or MRU, got '{CachePolicy}'");
        }

        Events.KvEventEndpoint? events = null;
        if (KvEventsEndpoint is not null)
        {
            if (Events.KvEventEndpoint.TryParse(KvEventsEndpoint, out var parsed, out var problem))
            {
                events = parsed;
            }
            else
            {
                errors.Add($"kv_events_endpoint: {problem}");
            }
        }

        if (KvEventsReplayEndpoint is not null)
        {
            if (!Events.KvEventEndpoint.TryParse(KvEventsReplayEndpoint, out var replay, out var problem))
            {
                errors.Add($"kv_events_replay_endpoint: {problem}");
            }
            else if (KvEventsEndpoint is null)
            {
                errors.Add("kv_events_replay_endpoint: is set but kv_events_endpoint is not: replay serves the published events");
            }
            else if (events is { } e && e.Port != 0 && e.Port == replay.Port)
            {
                errors.Add($"kv_events_replay_endpoint: must use another port than kv_events_endpoint, got '{KvEventsReplayEndpoint}'");
            }
        }

        if (KvEventsTopic is null || System.Text.Encoding.UTF8.GetByteCount(KvEventsTopic) > 256)
        {
            errors.Add("kv_events_topic: must be at most 256 bytes of UTF-8");
        }

        if (KvEventsBufferSteps is < 1 or > 1_000_000)
        {
            errors.Add($"kv_events_buffer_steps: must be an integer in 1..1000000 batches, got {KvEventsBufferSteps}");
        }

        if (KvEventsMaxQueueSize is < 1 or > 10_000_000)
        {
            errors.Add($"kv_events_max_queue_size: must be an integer in 1..10000000 events, got {KvEventsMaxQueueSize}");
        }

        if (!LocalCpu && string.IsNullOrEmpty(LocalDisk) && string.IsNullOrEmpty(RemoteUrl))
        {
            errors.Add("local_cpu: is false and neither local_disk nor remote_url is set: no tier would hold the cache");
        }

        return errors;
    }

    /// <summary>Throws <see cref="LMCacheConfigurationException"/> listing every problem.</summary>
    public void Validate()
    {
        var errors = GetErrors();
        if (errors.Count > 0)
        {
            throw new LMCacheConfigurationException(errors);
        }
    }
}

/// <summary>Bad configuration: the message lists every problem, each naming its key and allowed range.</summary>
public sealed class LMCacheConfigurationException : Exception
{
    /// <summary>Creates the exception.</summary>
    public LMCacheConfigurationException(IReadOnlyList<string> errors)
        : base("Invalid LMCache configuration:" + Environment.NewLine + string.Join(Environment.NewLine, (errors ?? []).Select(e => "  " + e)))
    {
        Errors = errors ?? [];
    }

    /// <summary>Creates the exception with one message.</summary>
    public LMCacheConfigurationException(string message)
        : this([message])
    {
    }

    /// <summary>Creates the exception.</summary>
    public LMCacheConfigurationException()
        : this([])
    {
    }

    /// <summary>Creates the exception.</summary>
    public LMCacheConfigurationException(string message, Exception innerException)
        : base(message, innerException)
    {
        Errors = [message];
    }

    /// <summary>Each problem.</summary>
    public IReadOnlyList<string> Errors { get; }
}
