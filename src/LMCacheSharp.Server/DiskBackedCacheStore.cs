using System.Threading.Channels;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Metrics;
using LMCacheSharp.Core.Storage;

namespace LMCacheSharp.Server;

/// <summary>
/// The persistent store (<c>lmcache server --disk DIR</c>): a <see cref="MemoryCacheStore"/> in front of Core's
/// <see cref="DiskTier"/>, so that a restarted server over the same directory serves the values it had.
/// <list type="bullet">
/// <item>PUT goes into memory and is answered; the disk write happens behind, on one background writer fed by a queue
/// bounded in bytes (<see cref="DiskStoreOptions.WriteQueueBytes"/>) and in PUT records (<see cref="DiskStoreOptions.WriteQueueRecords"/>).
/// The queue holds a reference on the memory buffer, never a copy, and at most one waiting record per key: a later PUT or
/// DELETE of a key replaces its waiting record. When the queue is full the disk write is dropped and counted (the value is
/// still in memory). A DELETE, or a dropped PUT, queues a removal only when the key is on disk or being written, so removal
/// records are bounded by the keys on disk, not by what clients send.</item>
/// <item>GET: memory, else a value still queued for the disk, else the disk (verified; a hit is promoted into memory).
/// EXISTS-PREFIX counts keys in memory or on disk. DELETE and CLEAR reach both.</item>
/// <item>Only values stored under 32-byte keys (a <see cref="ChunkHash"/>, what the remote tier sends) that are valid
/// serialized <see cref="ChunkEnvelope"/>s for that key go to the disk; anything else is kept in memory only and counted.</item>
/// </list>
/// Pins and quota groups (<see cref="CacheStoreLimits"/>) are the memory store's: a pinned value is held in memory (PIN
/// promotes a value found only on disk first), so the disk's own eviction cannot take it from GETs; quotas count the values
/// in memory. Both are soft state: after a restart the disk's values are unpinned and in no group until PUT again.
/// Disk reads (a GET that misses memory) run on the calling connection's task: that connection answers in order anyway,
/// other connections are not held up (the tiers' locks cover index updates only). Thread-safe.
/// </summary>
public sealed class DiskBackedCacheStore : ICacheStore, IAsyncDisposable
{
    private readonly MemoryCacheStore _memory;
    private readonly DiskTier _disk;
    private readonly CacheMetrics _diskMetrics = new();
    private readonly Lock _lock = new();
    private readonly Dictionary<ChunkHash, DiskWrite> _pending = []; // the latest queued PUT or DELETE of each key
    private readonly Channel<DiskWrite> _queue = Channel.CreateUnbounded<DiskWrite>(new UnboundedChannelOptions { SingleReader = true });
    private readonly Task _writer;
    private readonly long _queueLimitBytes;
    private readonly int _queueLimitPuts;
    private readonly TimeSpan _shutdownFlushTimeout;
    private long _queuedBytes;
    private int _queuedPuts; // PUT records waiting or being written
    private int _queuedRecords; // every record waiting or being written
    private long _recordsEnqueued;
    private DiskWrite? _waitingClear; // a CLEAR not taken by the writer yet: another CLEAR joins it
    private volatile bool _abandon; // shutdown ran out of time: the writer drops what is left
    private long _removals; // DELETE and CLEAR so far: a disk read that raced one is not promoted into memory
    private int _clearsQueued; // while a CLEAR waits for the writer, the disk's old contents are not served
    private long _diskHits, _writes, _dropped, _refused, _failed, _abandoned, _abandonedBytes;
    private int _disposed;

    /// <summary>Opens the directory (taking its lock and rebuilding the index from the files there) and starts the writer.</summary>
    /// <param name="memoryCapacityBytes">Capacity of the memory store in bytes (&gt; 0).</param>
    /// <param name="options">Directory, capacity, write queue, fsync.</param>
    /// <param name="limits">Pins and quota groups of the memory store (default: half of it may be pinned, no quotas).</param>
    /// <exception cref="IOException">The directory cannot be created, or another process is using it.</exception>
    public DiskBackedCacheStore(long memoryCapacityBytes, DiskStoreOptions options, CacheStoreLimits? limits = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        var errors = options.GetErrors();
        if (errors.Count > 0)
        {
            throw new ArgumentException("Invalid disk store options: " + string.Join("; ", errors), nameof(options));
        }

        _queueLimitBytes = options.WriteQueueBytes;
        _queueLimitPuts = options.WriteQueueRecords;
        _shutdownFlushTimeout = options.ShutdownFlushTimeout;
        _memory = new MemoryCacheStore(memoryCapacityBytes, limits: limits);
        try
        {
            // One pool for both: a value read from disk is promoted into memory without a copy.
            _disk = new DiskTier(
                new DiskTierOptions
                {
                    Directory = options.Directory,
                    CapacityBytes = options.CapacityBytes,
                    Fsync = options.Fsync,
                    ScanProgress = options.ScanProgress,
                },
                _memory.Pool, _diskMetrics);
        }
        catch
        {
            _memory.Dispose();
            _diskMetrics.Dispose();
            throw;
        }

        _writer = Task.Run(WriteLoopAsync);
    }

    /// <summary>The memory store in front.</summary>
    public MemoryCacheStore Memory => _memory;

    /// <summary>The disk tier behind (its directory, <see cref="DiskTier.StartupScan"/>, counts).</summary>
    public DiskTier Disk => _disk;

    /// <inheritdoc />
    public KvChunk Rent(int length) => _memory.Rent(length);

    /// <inheritdoc />
    public bool Put(ReadOnlySpan<byte> key, KvChunk value) => Put(key, value, default) == CachePutStatus.Stored;

    /// <inheritdoc />
    public CachePutStatus Put(ReadOnlySpan<byte> key, KvChunk value, ReadOnlySpan<byte> group)
    {
        ArgumentNullException.ThrowIfNull(value);
        if (key.Length != ChunkHash.Size)
        {
            Interlocked.Increment(ref _refused);
            return _memory.Put(key, value, group);
        }

        var hash = new ChunkHash(key);
        KvChunk? replaced = null;
        lock (_lock)
        {
            // Under the lock with the queueing, so that a disk read racing this PUT cannot promote an older value over it.
            if (_memory.Put(key, value, group) is not CachePutStatus.Stored and var refused)
            {
                return refused;
            }

            _pending.TryGetValue(hash, out var pending);
            if (pending is { Taken: false })
            {
                // One waiting record per key: this PUT takes the place of the waiting PUT or DELETE.
                replaced = Withdraw(pending);
            }

            var full = (_queuedBytes > 0 && _queuedBytes + value.Length > _queueLimitBytes) || _queuedPuts >= _queueLimitPuts;
            if (!full)
            {
                Enqueue(pending is { Taken: false } ? pending : new DiskWrite(hash), DiskWriteKind.Put, value.AddRef());
            }
            else
            {
                // Full: this value stays in memory only; an older value on disk (or being written) must not outlive it.
                _dropped++;
                if (pending is { Taken: false })
                {
                    Enqueue(pending, DiskWriteKind.Remove, null);
                }
                else if (pending is not null || (_clearsQueued == 0 && _disk.Contains(hash)))
                {
                    Enqueue(new DiskWrite(hash), DiskWriteKind.Remove, null);
                }
            }
        }

        replaced?.Release();
        return CachePutStatus.Stored;
    }

    /// <inheritdoc />
    public CachePinResult Pin(IReadOnlyList<byte[]> keys)
    {
        ArgumentNullException.ThrowIfNull(keys);
        foreach (var key in keys)
        {
            // A value only on disk (or queued for it) is promoted into memory, where the pin holds it.
            if (!_memory.Contains(key))
            {
                Get(key)?.Release();
            }
        }

        return _memory.Pin(keys);
    }

    /// <inheritdoc />
    public int Unpin(IReadOnlyList<byte[]> keys) => _memory.Unpin(keys);

    /// <inheritdoc />
    public IReadOnlyList<QuotaGroupStats> GetGroupStats() => _memory.GetGroupStats();

    /// <inheritdoc />
    public KvChunk? Get(ReadOnlySpan<byte> key)
    {
        if (_memory.Get(key) is { } hit)
        {
            return hit;
        }

        if (key.Length != ChunkHash.Size)
        {
            return null;
        }

        var hash = new ChunkHash(key);
        long removals;
        lock (_lock)
        {
            if (_pending.TryGetValue(hash, out var queued))
            {
                return queued.Kind == DiskWriteKind.Put ? queued.Value?.AddRef() : null; // a PUT not written yet (evicted from memory meanwhile), or a DELETE
            }

            if (_clearsQueued > 0)
            {
                return null;
            }

            removals = _removals;
        }

        var envelope = _disk.GetEnvelope(hash);
        if (envelope is null)
        {
            return null;
        }

        Interlocked.Increment(ref _diskHits);
        lock (_lock)
        {
            // Promote unless the key was written, deleted or cleared while the file was being read.
            if (_removals == removals && !_pending.ContainsKey(hash) && !_memory.Contains(key))
            {
                _memory.Put(key, envelope);
            }
        }

        return envelope;
    }

    /// <inheritdoc />
    public bool Contains(ReadOnlySpan<byte> key)
    {
        if (_memory.Contains(key))
        {
            return true;
        }

        if (key.Length != ChunkHash.Size)
        {
            return false;
        }

        var hash = new ChunkHash(key);
        lock (_lock)
        {
            if (_pending.TryGetValue(hash, out var queued))
            {
                return queued.Kind == DiskWriteKind.Put;
            }

            if (_clearsQueued > 0)
            {
                return false;
            }
        }

        return _disk.Contains(hash);
    }

    /// <inheritdoc />
    public bool Remove(ReadOnlySpan<byte> key)
    {
        if (key.Length != ChunkHash.Size)
        {
            return _memory.Remove(key);
        }

        var hash = new ChunkHash(key);
        KvChunk? replaced = null;
        bool found;
        lock (_lock)
        {
            _removals++;
            found = _memory.Remove(key);
            if (_pending.TryGetValue(hash, out var pending))
            {
                found |= pending.Kind == DiskWriteKind.Put;
                if (!pending.Taken)
                {
                    replaced = Withdraw(pending);
                    Enqueue(pending, DiskWriteKind.Remove, null);
                }
                else
                {
                    Enqueue(new DiskWrite(hash), DiskWriteKind.Remove, null); // after the write in progress
                }
            }
            else if (_clearsQueued == 0 && _disk.Contains(hash))
            {
                found = true;
                Enqueue(new DiskWrite(hash), DiskWriteKind.Remove, null);
            }

            // Absent from the disk and from the queue: nothing to queue, whatever a client sends.
        }

        replaced?.Release();
        return found;
    }

    /// <inheritdoc />
    public void Clear()
    {
        lock (_lock)
        {
            _removals++;
            _memory.Clear();
            _pending.Clear(); // the queued writes still own their buffers; the writer releases them
            if (_waitingClear is null)
            {
                _clearsQueued++;
                _waitingClear = new DiskWrite(default);
                Enqueue(_waitingClear, DiskWriteKind.Clear, null);
            }
        }
    }

    /// <summary>Completes when every disk write queued before the call has been done (tests, orderly shutdown).</summary>
    public Task FlushAsync(CancellationToken cancellationToken = default)
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_lock)
        {
            Enqueue(new DiskWrite(default) { Done = done }, DiskWriteKind.Flush, null);
        }

        return done.Task.WaitAsync(cancellationToken);
    }

    /// <inheritdoc />
    public CacheStoreStats GetStats()
    {
        var disk = _disk.GetStats();
        var metrics = _diskMetrics.Snapshot();
        long queued, records, enqueued;
        lock (_lock)
        {
            queued = _queuedBytes;
            records = _queuedRecords;
            enqueued = _recordsEnqueued;
        }

        return _memory.GetStats() with
        {
            Disk = new DiskStoreStats(disk.Chunks, disk.UsedBytes, disk.CapacityBytes, queued, Interlocked.Read(ref _diskHits),
                Interlocked.Read(ref _writes), Interlocked.Read(ref _dropped), Interlocked.Read(ref _refused), Interlocked.Read(ref _failed),
                metrics.Evictions, metrics.CorruptChunks, metrics.TierErrors)
            {
                QueuedRecords = records,
                RecordsEnqueued = enqueued,
            },
        };
    }

    /// <summary>
    /// Finishes the queued disk writes within <see cref="DiskStoreOptions.ShutdownFlushTimeout"/> (what is left then is
    /// dropped), then releases the directory lock and every buffer.
    /// </summary>
    public async ValueTask DisposeAsync() => await ShutdownAsync(_shutdownFlushTimeout).ConfigureAwait(false);

    /// <summary>
    /// Stops taking writes, writes what is queued for at most <paramref name="timeout"/> (on <paramref name="timeProvider"/>),
    /// drops the rest, then releases the directory lock and every buffer. Returns what was flushed and dropped. Idempotent:
    /// a second call returns an empty report.
    /// </summary>
    public async Task<DiskFlushReport> ShutdownAsync(TimeSpan timeout, TimeProvider? timeProvider = null)
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return default;
        }

        long recordsBefore, bytesBefore, writesBefore = Interlocked.Read(ref _writes);
        lock (_lock)
        {
            recordsBefore = _queuedRecords;
            bytesBefore = _queuedBytes;
            _queue.Writer.TryComplete();
        }

        var timedOut = false;
        try
        {
            await _writer.WaitAsync(timeout, timeProvider ?? TimeProvider.System).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            // The record being written finishes (a write is not torn); every other one is dropped.
            timedOut = true;
            _abandon = true;
            await _writer.ConfigureAwait(false);
        }

        await _disk.DisposeAsync().ConfigureAwait(false);
        _memory.Dispose();
        _diskMetrics.Dispose();
        return new DiskFlushReport(recordsBefore, bytesBefore, Interlocked.Read(ref _writes) - writesBefore, Interlocked.Read(ref _abandoned),
            Interlocked.Read(ref _abandonedBytes), timedOut);
    }

    /// <summary>Synchronous <see cref="DisposeAsync"/>.</summary>
    public void Dispose() => DisposeAsync().AsTask().GetAwaiter().GetResult();

    // Under _lock: takes a waiting record's value out of the queue's accounts (the caller releases it after the lock).
    private KvChunk? Withdraw(DiskWrite pending)
    {
        var value = pending.Value;
        if (pending.Kind == DiskWriteKind.Put)
        {
            _queuedBytes -= value!.Length;
            _queuedPuts--;
        }

        pending.Value = null;
        return value;
    }

    // Under _lock, so that the queue's order is the order the requests were answered in. A record already in the queue (not
    // taken by the writer yet) is updated in place and not queued again.
    private void Enqueue(DiskWrite write, DiskWriteKind kind, KvChunk? value)
    {
        var queued = write.InQueue;
        write.Kind = kind;
        write.Value = value;
        if (!queued)
        {
            if (!_queue.Writer.TryWrite(write))
            {
                // Disposed: nothing more reaches the disk.
                write.Value?.Release();
                write.Value = null;
                write.Done?.TrySetResult();
                if (kind == DiskWriteKind.Clear)
                {
                    _clearsQueued--;
                    _waitingClear = null;
                }

                return;
            }

            write.InQueue = true;
            _queuedRecords++;
            _recordsEnqueued++;
        }

        if (kind == DiskWriteKind.Put)
        {
            _queuedBytes += value!.Length;
            _queuedPuts++;
        }

        if (kind is DiskWriteKind.Put or DiskWriteKind.Remove)
        {
            _pending[write.Key] = write;
        }
    }

    private async Task WriteLoopAsync()
    {
        await foreach (var write in _queue.Reader.ReadAllAsync().ConfigureAwait(false))
        {
            if (WriterGate is { } gate)
            {
                await gate().ConfigureAwait(false);
            }

            DiskWriteKind kind;
            KvChunk? value;
            lock (_lock)
            {
                write.Taken = true; // from here on a PUT or DELETE of this key queues a record of its own
                kind = write.Kind;
                value = write.Value;
                if (ReferenceEquals(_waitingClear, write))
                {
                    _waitingClear = null;
                }
            }

            try
            {
                if (_abandon && kind != DiskWriteKind.Flush)
                {
                    Interlocked.Increment(ref _abandoned);
                    Interlocked.Add(ref _abandonedBytes, value?.Length ?? 0);
                    continue;
                }

                switch (kind)
                {
                    case DiskWriteKind.Put:
                        WriteToDisk(write.Key, value!);
                        break;
                    case DiskWriteKind.Remove:
                        _disk.Remove(write.Key);
                        break;
                    case DiskWriteKind.Clear:
                        _disk.Clear();
                        break;
                }
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                // DiskTier counts its own I/O errors; what escapes it (an unlink refused, say) leaves at worst a file the
                // next read verifies. The writer must keep going: a dead writer would leave deletes and clears undone.
                Interlocked.Increment(ref _failed);
            }
            finally
            {
                lock (_lock)
                {
                    _queuedRecords--;
                    if (kind == DiskWriteKind.Clear)
                    {
                        _clearsQueued--;
                    }
                    else if (kind != DiskWriteKind.Flush && _pending.TryGetValue(write.Key, out var current) && ReferenceEquals(current, write))
                    {
                        _pending.Remove(write.Key);
                    }

                    if (kind == DiskWriteKind.Put)
                    {
                        _queuedBytes -= value!.Length;
                        _queuedPuts--;
                    }

                    write.Value = null;
                }

                value?.Release();
                write.Done?.TrySetResult();
            }
        }
    }

    /// <summary>Awaited by the writer before each record (tests hold the writer with it). Default null.</summary>
    internal Func<ValueTask>? WriterGate { get; set; }

    private void WriteToDisk(ChunkHash key, KvChunk value)
    {
        var bytes = value.Span;
        if (ChunkEnvelope.TryReadHeader(bytes, out var header) != ChunkReadStatus.Ok || header.Key != key ||
            bytes.Length != ChunkEnvelope.HeaderSize + (long)header.EncodedLength)
        {
            // Not a chunk envelope for this key: memory only. An older envelope on disk must not come back later.
            Interlocked.Increment(ref _refused);
            _disk.Remove(key);
            return;
        }

        // A PUT replaces: a different envelope (another codec, say) takes the file's place; the same one is not rewritten.
        if (_disk.PutEnvelope(key, bytes, replace: true))
        {
            Interlocked.Increment(ref _writes);
        }
        else
        {
            // A payload checksum that does not match, a value larger than the disk, or a failed write: an older envelope on
            // disk must not come back in its place.
            Interlocked.Increment(ref _failed);
            _disk.Remove(key);
        }
    }

    private enum DiskWriteKind
    {
        Put,
        Remove,
        Clear,
        Flush,
    }

    /// <summary>One queued disk operation. Mutable under the store's lock until the writer takes it.</summary>
    private sealed class DiskWrite(ChunkHash key)
    {
        public ChunkHash Key { get; } = key;

        public DiskWriteKind Kind { get; set; }

        public KvChunk? Value { get; set; }

        public TaskCompletionSource? Done { get; init; }

        public bool InQueue { get; set; }

        public bool Taken { get; set; }
    }
}

/// <summary>What a <see cref="DiskBackedCacheStore"/> shutdown did with its write-behind queue.</summary>
/// <param name="QueuedRecords">Records waiting when the shutdown began (PUTs, removals, clears).</param>
/// <param name="QueuedBytes">Bytes of PUT values waiting then.</param>
/// <param name="Written">Values written to disk during the shutdown.</param>
/// <param name="Dropped">Records dropped because the flush ran out of time.</param>
/// <param name="DroppedBytes">Bytes of the dropped PUT values.</param>
/// <param name="TimedOut">Whether the flush ran out of time.</param>
public readonly record struct DiskFlushReport(long QueuedRecords, long QueuedBytes, long Written, long Dropped, long DroppedBytes, bool TimedOut);
