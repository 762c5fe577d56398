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
/// <item>PUT goes into memory and is answered; the disk write happens behind, in order, on one background writer fed by a
/// queue bounded in bytes (<see cref="DiskStoreOptions.WriteQueueBytes"/>). The queue holds a reference on the memory
/// buffer, never a copy. When the queue is full the disk write is dropped and counted (the value is still in memory).</item>
/// <item>GET: memory, else a value still queued for the disk, else the disk (verified; a hit is promoted into memory).
/// EXISTS-PREFIX counts keys in memory or on disk. DELETE and CLEAR reach both.</item>
/// <item>Only values stored under 32-byte keys (a <see cref="ChunkHash"/>, what the remote tier sends) that are valid
/// serialized <see cref="ChunkEnvelope"/>s for that key go to the disk; anything else is kept in memory only and counted.</item>
/// </list>
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
    private long _queuedBytes;
    private long _removals; // DELETE and CLEAR so far: a disk read that raced one is not promoted into memory
    private int _clearsQueued; // while a CLEAR waits for the writer, the disk's old contents are not served
    private long _diskHits, _writes, _dropped, _refused, _failed;
    private int _disposed;

    /// <summary>Opens the directory (taking its lock and rebuilding the index from the files there) and starts the writer.</summary>
    /// <param name="memoryCapacityBytes">Capacity of the memory store in bytes (&gt; 0).</param>
    /// <param name="options">Directory, capacity, write queue, fsync.</param>
    /// <exception cref="IOException">The directory cannot be created, or another process is using it.</exception>
    public DiskBackedCacheStore(long memoryCapacityBytes, DiskStoreOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var errors = options.GetErrors();
        if (errors.Count > 0)
        {
            throw new ArgumentException("Invalid disk store options: " + string.Join("; ", errors), nameof(options));
        }

        _queueLimitBytes = options.WriteQueueBytes;
        _memory = new MemoryCacheStore(memoryCapacityBytes);
        try
        {
            // One pool for both: a value read from disk is promoted into memory without a copy.
            _disk = new DiskTier(
                new DiskTierOptions { Directory = options.Directory, CapacityBytes = options.CapacityBytes, Fsync = options.Fsync },
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
    public bool Put(ReadOnlySpan<byte> key, KvChunk value)
    {
        ArgumentNullException.ThrowIfNull(value);
        if (key.Length != ChunkHash.Size)
        {
            Interlocked.Increment(ref _refused);
            return _memory.Put(key, value);
        }

        var hash = new ChunkHash(key);
        lock (_lock)
        {
            // Under the lock with the queueing, so that a disk read racing this PUT cannot promote an older value over it.
            if (!_memory.Put(key, value))
            {
                return false;
            }

            if (_queuedBytes > 0 && _queuedBytes + value.Length > _queueLimitBytes)
            {
                // Full: this value stays in memory only; an older value on disk must not outlive it.
                _dropped++;
                Enqueue(new DiskWrite(DiskWriteKind.Remove, hash, null));
            }
            else
            {
                Enqueue(new DiskWrite(DiskWriteKind.Put, hash, value.AddRef()));
            }
        }

        return true;
    }

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
                return queued.Value?.AddRef(); // a PUT not written yet (evicted from memory meanwhile), or a DELETE
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
        lock (_lock)
        {
            _removals++;
            var found = _memory.Remove(key);
            if (_pending.TryGetValue(hash, out var queued))
            {
                found |= queued.Kind == DiskWriteKind.Put;
            }
            else if (_clearsQueued == 0)
            {
                found |= _disk.Contains(hash);
            }

            Enqueue(new DiskWrite(DiskWriteKind.Remove, hash, null));
            return found;
        }
    }

    /// <inheritdoc />
    public void Clear()
    {
        lock (_lock)
        {
            _removals++;
            _memory.Clear();
            _pending.Clear(); // the queued writes still own their buffers; the writer releases them
            _clearsQueued++;
            Enqueue(new DiskWrite(DiskWriteKind.Clear, default, null));
        }
    }

    /// <summary>Completes when every disk write queued before the call has been done (tests, orderly shutdown).</summary>
    public Task FlushAsync(CancellationToken cancellationToken = default)
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_lock)
        {
            Enqueue(new DiskWrite(DiskWriteKind.Flush, default, null, done));
        }

        return done.Task.WaitAsync(cancellationToken);
    }

    /// <inheritdoc />
    public CacheStoreStats GetStats()
    {
        var disk = _disk.GetStats();
        var metrics = _diskMetrics.Snapshot();
        long queued;
        lock (_lock)
        {
            queued = _queuedBytes;
        }

        return _memory.GetStats() with
        {
            Disk = new DiskStoreStats(disk.Chunks, disk.UsedBytes, disk.CapacityBytes, queued, Interlocked.Read(ref _diskHits),
                Interlocked.Read(ref _writes), Interlocked.Read(ref _dropped), Interlocked.Read(ref _refused), Interlocked.Read(ref _failed),
                metrics.Evictions, metrics.CorruptChunks, metrics.TierErrors),
        };
    }

    /// <summary>Finishes the queued disk writes, then releases the directory lock and every buffer.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        lock (_lock)
        {
            _queue.Writer.TryComplete();
        }

        await _writer.ConfigureAwait(false);
        await _disk.DisposeAsync().ConfigureAwait(false);
        _memory.Dispose();
        _diskMetrics.Dispose();
    }

    /// <summary>Synchronous <see cref="DisposeAsync"/>.</summary>
    public void Dispose() => DisposeAsync().AsTask().GetAwaiter().GetResult();

    // Under _lock, so that the queue's order is the order the requests were answered in.
    private void Enqueue(DiskWrite write)
    {
        if (!_queue.Writer.TryWrite(write))
        {
            // Disposed: nothing more reaches the disk.
            write.Value?.Release();
            write.Done?.TrySetResult();
            return;
        }

        switch (write.Kind)
        {
            case DiskWriteKind.Put:
                _queuedBytes += write.Value!.Length;
                _pending[write.Key] = write;
                break;
            case DiskWriteKind.Remove:
                _pending[write.Key] = write;
                break;
        }
    }

    private async Task WriteLoopAsync()
    {
        await foreach (var write in _queue.Reader.ReadAllAsync().ConfigureAwait(false))
        {
            try
            {
                switch (write.Kind)
                {
                    case DiskWriteKind.Put:
                        WriteToDisk(write.Key, write.Value!);
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
                    if (write.Kind == DiskWriteKind.Clear)
                    {
                        _clearsQueued--;
                    }
                    else if (write.Kind != DiskWriteKind.Flush && _pending.TryGetValue(write.Key, out var current) && ReferenceEquals(current, write))
                    {
                        _pending.Remove(write.Key);
                    }

                    if (write.Kind == DiskWriteKind.Put)
                    {
                        _queuedBytes -= write.Value!.Length;
                    }
                }

                write.Value?.Release();
                write.Done?.TrySetResult();
            }
        }
    }

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

    private sealed record DiskWrite(DiskWriteKind Kind, ChunkHash Key, KvChunk? Value, TaskCompletionSource? Done = null);
}
