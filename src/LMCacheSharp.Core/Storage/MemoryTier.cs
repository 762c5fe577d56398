using LMCacheSharp.Core.Events;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Metrics;

namespace LMCacheSharp.Core.Storage;

/// <summary>
/// The in-process tier: chunks in native memory, capacity in bytes (buffer capacity, what the process really holds),
/// least-recently-used eviction. Keeps a reference on each chunk it holds; an evicted chunk that a reader still holds
/// stays valid until that reader releases it. Lookups and hits allocate nothing. Thread-safe.
/// <para>
/// Pins (<see cref="Pin"/>, <see cref="Unpin"/>: <c>POST /lmcache/pin</c>) exempt chunks from eviction: a pinned chunk is
/// taken out of the recency list, so no policy ever picks it, and goes back in (as just used) when its last pin goes.
/// Pins are counted per chunk and bounded by <see cref="MaxPinnedBytes"/>; a store that finds no room because everything
/// else is pinned is dropped (counted as a dropped store), never a pin evicted. Removing a chunk (a clear, a failed
/// checksum) removes its pins with it.
/// </para>
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
    private long _pinnedBytes;
    private int _pinnedChunks;
    private bool _disposed;

    /// <summary>Creates a memory tier.</summary>
    /// <param name="capacityBytes">Capacity in bytes (&gt; 0).</param>
    /// <param name="metrics">Where evictions and usage are reported, or null.</param>
    /// <param name="verifyOnRead">Check each chunk's checksum on every hit (costs one hash pass over the payload).</param>
    /// <param name="policy">Which chunk goes when room is needed (LMCache's <c>cache_policy</c>). Default LRU.</param>
    /// <param name="maxPinnedBytes">
    /// Bytes of chunks that may be pinned at once (<see cref="MaxPinnedBytes"/>). Default null: half of
    /// <paramref name="capacityBytes"/>; range 0..<paramref name="capacityBytes"/> (0: nothing can be pinned).
    /// </param>
    public MemoryTier(long capacityBytes, CacheMetrics? metrics = null, bool verifyOnRead = false, EvictionPolicy policy = EvictionPolicy.Lru,
        long? maxPinnedBytes = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(capacityBytes);
        if (maxPinnedBytes is { } max)
        {
            ArgumentOutOfRangeException.ThrowIfNegative(max, nameof(maxPinnedBytes));
            ArgumentOutOfRangeException.ThrowIfGreaterThan(max, capacityBytes, nameof(maxPinnedBytes));
        }

        CapacityBytes = capacityBytes;
        MaxPinnedBytes = maxPinnedBytes ?? capacityBytes / 2;
        Policy = policy;
        _metrics = metrics;
        _verifyOnRead = verifyOnRead;
        metrics?.AddUsageSource(() => UsedBytes);
        metrics?.AddPinnedSource(() => GetPinStats());
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

    /// <summary>Bytes of chunks that may be pinned at once (buffer capacity, as <see cref="UsedBytes"/>).</summary>
    public long MaxPinnedBytes { get; }

    /// <summary>Pinned chunks and their bytes now.</summary>
    public PinStats GetPinStats()
    {
        lock (_lock)
        {
            return new PinStats(_pinnedChunks, _pinnedBytes, MaxPinnedBytes);
        }
    }

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
        bool stored;
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_entries.TryGetValue(chunk.Key, out var existing))
            {
                Touch(existing);
                return true;
            }

            // When evicting every unpinned chunk would still leave no room, the store is dropped: the pins stay, and so
            // does the rest of the cache (nothing is evicted for a store that cannot happen).
            stored = _pinnedBytes + size <= CapacityBytes;
            while (stored && _usedBytes + size > CapacityBytes && Victim() is { } victim)
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

            // Pinned and unpinned bytes add up to the bytes used, so this holds after the loop; checked so that capacity is
            // never exceeded whatever the policy returned.
            stored &= _usedBytes + size <= CapacityBytes;
            if (stored)
            {
                var entry = _freeEntries.TryPop(out var e) ? e : new Entry();
                entry.Key = chunk.Key;
                entry.Uses = 1;
                entry.Pins = 0;
                entry.Chunk = chunk.AddRef();
                _entries.Add(chunk.Key, entry);
                _lru.LinkAtHead(entry);
                _usedBytes += size;
                Events?.Stored(KvMedium.Cpu, chunk.Key, chunk.Lineage);
            }
        }

        if (evicted > 0)
        {
            _metrics?.Evicted(Name, evicted);
        }

        if (!stored)
        {
            _metrics?.DroppedStore(Name);
        }

        return stored;
    }

    /// <summary>
    /// Pins the chunks of <paramref name="keys"/> that the tier holds (a key listed twice is pinned twice): until as many
    /// <see cref="Unpin"/>s, they are exempt from eviction. All or nothing against <see cref="MaxPinnedBytes"/>: when the
    /// chunks not pinned yet would take the pinned bytes over it, nothing is pinned and the result says
    /// <see cref="PinResult.OverLimit"/>. Keys the tier does not hold are counted in <see cref="PinResult.Missing"/>.
    /// </summary>
    public PinResult Pin(ReadOnlySpan<ChunkHash> keys)
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            long added = 0;
            var missing = 0;
            HashSet<ChunkHash>? counted = null; // a key listed twice adds its bytes once
            foreach (var key in keys)
            {
                if (!_entries.TryGetValue(key, out var entry))
                {
                    missing++;
                }
                else if (entry.Pins == 0 && (counted ??= []).Add(key))
                {
                    added += entry.Chunk!.Capacity;
                }
            }

            if (_pinnedBytes + added > MaxPinnedBytes)
            {
                return new PinResult(0, missing, new PinStats(_pinnedChunks, _pinnedBytes, MaxPinnedBytes), OverLimit: true, RequestedBytes: added);
            }

            var pinned = 0;
            foreach (var key in keys)
            {
                if (_entries.TryGetValue(key, out var entry))
                {
                    if (entry.Pins++ == 0)
                    {
                        _lru.Unlink(entry);
                        _pinnedChunks++;
                        _pinnedBytes += entry.Chunk!.Capacity;
                    }

                    pinned++;
                }
            }

            return new PinResult(pinned, missing, new PinStats(_pinnedChunks, _pinnedBytes, MaxPinnedBytes), OverLimit: false, RequestedBytes: added);
        }
    }

    /// <summary>
    /// Takes one pin off each chunk of <paramref name="keys"/> that is pinned (a key listed twice loses two); a chunk whose
    /// last pin goes is evictable again, as just used. Keys absent or not pinned are counted in <see cref="PinResult.Missing"/>.
    /// </summary>
    public PinResult Unpin(ReadOnlySpan<ChunkHash> keys)
    {
        lock (_lock)
        {
            var unpinned = 0;
            var missing = 0;
            foreach (var key in keys)
            {
                if (!_entries.TryGetValue(key, out var entry) || entry.Pins == 0)
                {
                    missing++;
                    continue;
                }

                unpinned++;
                if (--entry.Pins == 0)
                {
                    _pinnedChunks--;
                    _pinnedBytes -= entry.Chunk!.Capacity;
                    _lru.LinkAtHead(entry);
                }
            }

            return new PinResult(unpinned, missing, new PinStats(_pinnedChunks, _pinnedBytes, MaxPinnedBytes), OverLimit: false, RequestedBytes: 0);
        }
    }

    /// <summary>How many pins <paramref name="key"/> holds (0: absent or not pinned).</summary>
    public int PinCount(ChunkHash key)
    {
        lock (_lock)
        {
            return _entries.TryGetValue(key, out var entry) ? entry.Pins : 0;
        }
    }

    // Under the lock: the entry leaves the tier, and its pins with it.
    private void ForgetPins(Entry entry)
    {
        if (entry.Pins > 0)
        {
            entry.Pins = 0;
            _pinnedChunks--;
            _pinnedBytes -= entry.Chunk!.Capacity;
        }
    }

    // The list's head is the most recent insertion (FIFO) or use (the others); every policy but FIFO moves a used chunk there.
    private void Touch(Entry entry)
    {
        entry.Uses++;
        if (Policy != EvictionPolicy.Fifo && entry.Pins == 0) // a pinned chunk is outside the list until its last unpin
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
            ForgetPins(entry);
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
                entry.Pins = 0;
                entry.Chunk = null;
                _freeEntries.Push(entry);
                Events?.Removed(KvMedium.Cpu, entry.Key);
            }

            _entries.Clear();
            _lru.Clear();
            _usedBytes = 0;
            _pinnedBytes = 0;
            _pinnedChunks = 0;
        }

        foreach (var chunk in chunks)
        {
            chunk.Release();
        }
    }

    /// <summary>Keys from most to least recently used, pinned chunks (outside the recency order) first (diagnostics and tests).</summary>
    public IReadOnlyList<ChunkHash> KeysByRecency()
    {
        lock (_lock)
        {
            var keys = new List<ChunkHash>(_entries.Count);
            foreach (var (key, entry) in _entries)
            {
                if (entry.Pins > 0)
                {
                    keys.Add(key);
                }
            }

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
        public int Pins; // > 0: outside the recency list, never a victim
    }
}

/// <summary>What a tier has pinned.</summary>
/// <param name="Chunks">Chunks pinned.</param>
/// <param name="Bytes">Their bytes.</param>
/// <param name="MaxBytes">The most bytes that may be pinned.</param>
public readonly record struct PinStats(long Chunks, long Bytes, long MaxBytes);

/// <summary>The outcome of <see cref="MemoryTier.Pin"/> or <see cref="MemoryTier.Unpin"/>.</summary>
/// <param name="Changed">Keys pinned (or unpinned).</param>
/// <param name="Missing">Keys not held (for an unpin: not held or not pinned).</param>
/// <param name="Totals">The tier's pins after the call.</param>
/// <param name="OverLimit">The pin was refused whole: it would take the pinned bytes over the limit.</param>
/// <param name="RequestedBytes">Bytes the pin would have added (chunks not pinned before).</param>
public readonly record struct PinResult(int Changed, int Missing, PinStats Totals, bool OverLimit, long RequestedBytes);

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
