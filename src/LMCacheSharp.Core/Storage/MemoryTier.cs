using LMCacheSharp.Core.Events;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Metrics;

namespace LMCacheSharp.Core.Storage;

/// <summary>
/// The in-process tier: chunks in native memory, capacity in bytes (buffer capacity, what the process really holds),
/// least-recently-used eviction. Keeps a reference on each chunk it holds; an evicted chunk that a reader still holds
/// stays valid until that reader releases it. Lookups and hits allocate nothing. Thread-safe.
/// </summary>
public sealed class MemoryTier : IStorageTier
{
    private readonly Lock _lock = new();
    private readonly Dictionary<ChunkHash, Entry> _entries = [];
    private readonly Stack<Entry> _freeEntries = new();
    private readonly CacheMetrics? _metrics;
    private readonly bool _verifyOnRead;
    private readonly LruList<Entry> _lru = new(); // head: most recently used; tail: the next victim
    private long _usedBytes;
    private bool _disposed;

    /// <summary>Creates a memory tier.</summary>
    /// <param name="capacityBytes">Capacity in bytes (&gt; 0).</param>
    /// <param name="metrics">Where evictions and usage are reported, or null.</param>
    /// <param name="verifyOnRead">Check each chunk's checksum on every hit (costs one hash pass over the payload).</param>
    /// <param name="policy">Which chunk goes when room is needed (LMCache's <c>cache_policy</c>). Default LRU.</param>
    public MemoryTier(long capacityBytes, CacheMetrics? metrics = null, bool verifyOnRead = false, EvictionPolicy policy = EvictionPolicy.Lru)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(capacityBytes);
        CapacityBytes = capacityBytes;
        Policy = policy;
        _metrics = metrics;
        _verifyOnRead = verifyOnRead;
        metrics?.AddUsageSource(() => UsedBytes);
    }

    /// <inheritdoc />
    public string Name => "memory";

    /// <inheritdoc />
    public StorageTierKind Kind => StorageTierKind.Memory;

    /// <summary>Capacity in bytes.</summary>
    public long CapacityBytes { get; }

    /// <summary>The eviction policy.</summary>
    public EvictionPolicy Policy { get; }

    /// <summary>Bytes held.</summary>
    public long UsedBytes => Interlocked.Read(ref _usedBytes);

    /// <summary>
    /// Where stores and removals are reported (set by the <see cref="StorageManager"/> that owns the tier), or null. Raised
    /// under the tier's lock, so the events come in the order the tier changed.
    /// </summary>
    internal KvEventRelay? Events { get; set; }

    /// <summary>Chunks held.</summary>
    public int Count
    {
        get
        {
            lock (_lock)
            {
                return _entries.Count;
            }
        }
    }

    /// <summary>Whether <paramref name="key"/> is held (does not refresh it).</summary>
    public bool Contains(ChunkHash key)
    {
        lock (_lock)
        {
            return _entries.ContainsKey(key);
        }
    }

    /// <summary>Synchronous <see cref="CountPrefixAsync"/>.</summary>
    public int CountPrefix(ReadOnlySpan<ChunkHash> keys)
    {
        lock (_lock)
        {
            var n = 0;
            while (n < keys.Length && _entries.ContainsKey(keys[n]))
            {
                n++;
            }

            return n;
        }
    }

    /// <summary>Synchronous <see cref="GetAsync"/>: the chunk with one reference for the caller, or null.</summary>
    public KvChunk? TryGet(ChunkHash key)
    {
        KvChunk chunk;
        lock (_lock)
        {
            if (!_entries.TryGetValue(key, out var entry))
            {
                return null;
            }

            Touch(entry);
            chunk = entry.Chunk!.AddRef();
        }

        if (_verifyOnRead && !chunk.VerifyChecksum())
        {
            chunk.Release();
            _metrics?.CorruptChunk(Name);
            Remove(key);
            return null;
        }

        return chunk;
    }

    /// <summary>Synchronous <see cref="PutAsync"/>.</summary>
    public bool Put(KvChunk chunk)
    {
        ArgumentNullException.ThrowIfNull(chunk);
        var size = chunk.Capacity;
        if (size > CapacityBytes)
        {
            _metrics?.DroppedStore(Name);
            return false;
        }

        var evicted = 0;
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_entries.TryGetValue(chunk.Key, out var existing))
            {
                Touch(existing);
                return true;
            }

            while (_usedBytes + size > CapacityBytes && Victim() is { } victim)
            {
                _lru.Unlink(victim);
                _entries.Remove(victim.Key);
                _usedBytes -= victim.Chunk!.Capacity;
                // Release outside the lock would be nicer, but Release only touches the pool's own lock.
                victim.Chunk.Release();
                victim.Chunk = null;
                _freeEntries.Push(victim);
                evicted++;
                Events?.Removed(KvMedium.Cpu, victim.Key);
            }

            var entry = _freeEntries.TryPop(out var e) ? e : new Entry();
            entry.Key = chunk.Key;
            entry.Uses = 1;
            entry.Chunk = chunk.AddRef();
            _entries.Add(chunk.Key, entry);
            _lru.LinkAtHead(entry);
            _usedBytes += size;
            Events?.Stored(KvMedium.Cpu, chunk.Key, chunk.Lineage);
        }

        if (evicted > 0)
        {
            _metrics?.Evicted(Name, evicted);
        }

        return true;
    }

    // The list's head is the most recent insertion (FIFO) or use (the others); every policy but FIFO moves a used chunk there.
    private void Touch(Entry entry)
    {
        entry.Uses++;
        if (Policy != EvictionPolicy.Fifo)
        {
            _lru.MoveToHead(entry);
        }
    }

    private Entry? Victim()
    {
        switch (Policy)
        {
            case EvictionPolicy.Mru:
                return _lru.Head;
            case EvictionPolicy.Lfu:
                // Fewest uses; among equals the least recently used (scan from the tail). O(chunks) per eviction.
                Entry? best = null;
                for (var e = _lru.Tail; e is not null; e = e.Previous)
                {
                    if (best is null || e.Uses < best.Uses)
                    {
                        best = e;
                    }
                }

                return best;
            default:
                return _lru.Tail;
        }
    }

    /// <summary>Synchronous <see cref="RemoveAsync"/>.</summary>
    public bool Remove(ChunkHash key)
    {
        KvChunk? chunk;
        lock (_lock)
        {
            if (!_entries.Remove(key, out var entry))
            {
                return false;
            }

            _lru.Unlink(entry);
            chunk = entry.Chunk;
            entry.Chunk = null;
            _usedBytes -= chunk!.Capacity;
            _freeEntries.Push(entry);
            Events?.Removed(KvMedium.Cpu, key);
        }

        chunk.Release();
        return true;
    }

    /// <summary>Synchronous <see cref="ClearAsync"/>.</summary>
    public void Clear()
    {
        List<KvChunk> chunks;
        lock (_lock)
        {
            chunks = new List<KvChunk>(_entries.Count);
            foreach (var entry in _entries.Values)
            {
                chunks.Add(entry.Chunk!);
                entry.Chunk = null;
                _freeEntries.Push(entry);
                Events?.Removed(KvMedium.Cpu, entry.Key);
            }

            _entries.Clear();
            _lru.Clear();
            _usedBytes = 0;
        }

        foreach (var chunk in chunks)
        {
            chunk.Release();
        }
    }

    /// <summary>Keys from most to least recently used (diagnostics and tests).</summary>
    public IReadOnlyList<ChunkHash> KeysByRecency()
    {
        lock (_lock)
        {
            var keys = new List<ChunkHash>(_entries.Count);
            for (var e = _lru.Head; e is not null; e = e.Next)
            {
                keys.Add(e.Key);
            }

            return keys;
        }
    }

    /// <inheritdoc />
    public ValueTask<int> CountPrefixAsync(ReadOnlyMemory<ChunkHash> keys, CancellationToken cancellationToken = default) =>
        ValueTask.FromResult(CountPrefix(keys.Span));

    /// <inheritdoc />
    public ValueTask<KvChunk?> GetAsync(ChunkHash key, CancellationToken cancellationToken = default) => ValueTask.FromResult(TryGet(key));

    /// <inheritdoc />
    public ValueTask<bool> PutAsync(KvChunk chunk, CancellationToken cancellationToken = default) => ValueTask.FromResult(Put(chunk));

    /// <inheritdoc />
    public ValueTask<bool> RemoveAsync(ChunkHash key, CancellationToken cancellationToken = default) => ValueTask.FromResult(Remove(key));

    /// <inheritdoc />
    public ValueTask ClearAsync(CancellationToken cancellationToken = default)
    {
        Clear();
        return ValueTask.CompletedTask;
    }

    /// <inheritdoc />
    public StorageTierStats GetStats()
    {
        lock (_lock)
        {
            return new StorageTierStats(_entries.Count, _usedBytes, CapacityBytes);
        }
    }

    /// <summary>Releases every chunk held.</summary>
    public ValueTask DisposeAsync()
    {
        Clear();
        lock (_lock)
        {
            _disposed = true;
        }

        return ValueTask.CompletedTask;
    }

    private sealed class Entry : LruNode<Entry>
    {
        public ChunkHash Key;
        public KvChunk? Chunk;
        public long Uses;
    }
}

/// <summary>Which chunk a full memory tier evicts (LMCache's <c>cache_policy</c> values).</summary>
public enum EvictionPolicy
{
    /// <summary>Least recently used (the default).</summary>
    Lru,
    /// <summary>Least frequently used; among equals the least recently used.</summary>
    Lfu,
    /// <summary>First in, first out: the oldest insertion, whatever its use.</summary>
    Fifo,
    /// <summary>Most recently used (for scans that never come back to what they just read).</summary>
    Mru,
}
