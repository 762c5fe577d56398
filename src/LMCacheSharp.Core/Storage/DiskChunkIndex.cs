using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Core.Storage;

/// <summary>How <see cref="DiskChunkIndex.TryReserve"/> answered.</summary>
internal enum DiskWriteReservation
{
    /// <summary>Room is reserved and the key is being written: finish with <see cref="DiskChunkIndex.Commit"/> or <see cref="DiskChunkIndex.Abort"/>.</summary>
    Reserved,
    /// <summary>The write is larger than the whole capacity.</summary>
    TooLarge,
    /// <summary>The key is stored (with the same file, when one was given to replace): marked as used instead.</summary>
    AlreadyStored,
    /// <summary>Another write of the key is in progress.</summary>
    BeingWritten,
    /// <summary>The key's file is being unlinked: a file renamed in now could be the one unlinked.</summary>
    BeingDeleted,
}

/// <summary>
/// The disk tier's index, in memory only: key -> file record and lineage, least recently used order, the bytes the
/// directory holds (files in whole 4 KiB blocks, plus reservations of writes in flight, so the directory never exceeds
/// the capacity), and the keys being written or deleted, whose paths no one else may touch meanwhile. It decides which
/// chunks are evicted; the files themselves are the caller's. Rebuilt from the files at start
/// (<see cref="DiskTierRecovery"/>). Not thread-safe: the tier calls it under its lock, and <see cref="Removed"/> is raised
/// there.
/// </summary>
/// <param name="capacityBytes">Bytes the directory may hold (&gt; 0).</param>
internal sealed class DiskChunkIndex(long capacityBytes)
{
    private readonly Dictionary<ChunkHash, Entry> _entries = [];
    private readonly HashSet<ChunkHash> _writing = [];
    private readonly HashSet<ChunkHash> _deleting = []; // forgotten by the index, file not yet unlinked: writes refused
    private readonly LruList<Entry> _lru = new(); // head: most recently used; tail: the next victim

    /// <summary>Bytes the directory may hold.</summary>
    public long CapacityBytes { get; } = capacityBytes > 0 ? capacityBytes : throw new ArgumentOutOfRangeException(nameof(capacityBytes));

    /// <summary>Bytes held: indexed files in whole blocks and the reservations of writes in progress.</summary>
    public long UsedBytes { get; private set; }

    /// <summary>Chunks indexed.</summary>
    public int Count => _entries.Count;

    /// <summary>Called with the key of every entry that leaves the index (removed, evicted, replaced, discarded), not on <see cref="Reset"/>.</summary>
    public Action<ChunkHash>? Removed { get; set; }

    /// <summary>Whether <paramref name="key"/> is indexed (does not refresh it).</summary>
    public bool Contains(ChunkHash key) => _entries.ContainsKey(key);

    /// <summary>The entry of <paramref name="key"/>, marked as just used; false when it is not indexed.</summary>
    public bool TryTouch(ChunkHash key, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out Entry? entry)
    {
        if (!_entries.TryGetValue(key, out entry))
        {
            return false;
        }

        _lru.MoveToHead(entry);
        return true;
    }

    /// <summary>Whether <paramref name="entry"/> is still the one indexed under its key (not removed, evicted or replaced since).</summary>
    public bool IsCurrent(Entry entry) => _entries.TryGetValue(entry.Key, out var current) && ReferenceEquals(current, entry);

    /// <summary>How many of <paramref name="keys"/>, from the first, are indexed without a gap.</summary>
    public int CountPrefix(ReadOnlySpan<ChunkHash> keys)
    {
        var n = 0;
        while (n < keys.Length && _entries.ContainsKey(keys[n]))
        {
            n++;
        }

        return n;
    }

    /// <summary>
    /// Reserves <paramref name="bytes"/> for a new file of <paramref name="key"/>, evicting least recently used entries to
    /// make room (their keys are added to <paramref name="evicted"/>, marked as being deleted until
    /// <see cref="FileDeleted(ChunkHash)"/>). When the key is stored it is only marked as used, unless
    /// <paramref name="replacing"/> is given and describes another file: then the stored entry leaves the index (its file
    /// is renamed over, or deleted by the caller if the write fails) and the write goes ahead.
    /// </summary>
    public DiskWriteReservation TryReserve(ChunkHash key, long bytes, DiskChunkRecord? replacing, ref List<ChunkHash>? evicted)
    {
        if (bytes > CapacityBytes)
        {
            return DiskWriteReservation.TooLarge;
        }

        if (_entries.TryGetValue(key, out var existing))
        {
            if (replacing is not { } r || existing.Record.SameFileAs(r))
            {
                _lru.MoveToHead(existing);
                return DiskWriteReservation.AlreadyStored;
            }

            Unindex(existing);
        }

        if (_deleting.Contains(key))
        {
            return DiskWriteReservation.BeingDeleted;
        }

        if (!_writing.Add(key))
        {
            return DiskWriteReservation.BeingWritten;
        }

        while (UsedBytes + bytes > CapacityBytes && _lru.Tail is { } victim)
        {
            (evicted ??= []).Add(victim.Key);
            Forget(victim);
        }

        UsedBytes += bytes;
        return DiskWriteReservation.Reserved;
    }

    /// <summary>Ends a reserved write whose file is in place: indexes <paramref name="entry"/> as most recently used, its blocks replacing the reservation.</summary>
    public void Commit(Entry entry, long reserved)
    {
        _writing.Remove(entry.Key);
        UsedBytes += entry.Record.BlockBytes - reserved;
        _entries[entry.Key] = entry;
        _lru.LinkAtHead(entry);
    }

    /// <summary>Ends a reserved write that failed: releases the reservation.</summary>
    public void Abort(ChunkHash key, long reserved)
    {
        _writing.Remove(key);
        UsedBytes -= reserved;
    }

    /// <summary>
    /// Forgets the entry of <paramref name="key"/> (only when it is <paramref name="only"/>, if given) and marks the key as
    /// being deleted until <see cref="FileDeleted(ChunkHash)"/>, so that a write of the same key cannot rename a fresh file
    /// in before the caller unlinks the old one. False when there was no such entry. Meanwhile the directory may hold the
    /// file on top of the bytes the index counts.
    /// </summary>
    public bool TryForget(ChunkHash key, Entry? only = null)
    {
        if (!_entries.TryGetValue(key, out var entry) || (only is not null && !ReferenceEquals(entry, only)))
        {
            return false;
        }

        Forget(entry);
        return true;
    }

    /// <summary>Forgets every entry, least recently used first, each marked as being deleted; returns their keys.</summary>
    public List<ChunkHash> ForgetAll()
    {
        var keys = new List<ChunkHash>(_entries.Count);
        while (_lru.Tail is { } tail)
        {
            keys.Add(tail.Key);
            Forget(tail);
        }

        return keys;
    }

    /// <summary>The caller has unlinked (or failed to unlink) the file of a forgotten key: writes of it are allowed again.</summary>
    public void FileDeleted(ChunkHash key) => _deleting.Remove(key);

    /// <summary><see cref="FileDeleted(ChunkHash)"/> for each of <paramref name="keys"/>.</summary>
    public void FileDeleted(List<ChunkHash> keys)
    {
        foreach (var key in keys)
        {
            _deleting.Remove(key);
        }
    }

    /// <summary>Indexes a file found at start as the most recently used so far (the recovery adds them oldest first).</summary>
    public void Load(Entry entry)
    {
        _entries[entry.Key] = entry;
        _lru.LinkAtHead(entry);
        UsedBytes += entry.Record.BlockBytes;
    }

    /// <summary>Forgets least recently used entries while more than the capacity is held; returns their keys, marked as being deleted.</summary>
    public List<ChunkHash> EvictOverCapacity()
    {
        var evicted = new List<ChunkHash>();
        while (UsedBytes > CapacityBytes && _lru.Tail is { } victim)
        {
            evicted.Add(victim.Key);
            Forget(victim);
        }

        return evicted;
    }

    /// <summary>Keys from most to least recently used.</summary>
    public List<ChunkHash> KeysByRecency()
    {
        var keys = new List<ChunkHash>(_entries.Count);
        for (var e = _lru.Head; e is not null; e = e.Next)
        {
            keys.Add(e.Key);
        }

        return keys;
    }

    /// <summary>The indexed chunks whose files hold their lineage.</summary>
    public List<(ChunkHash Key, ChunkLineage Lineage)> Lineages() =>
        [.. _entries.Values.Where(e => e.Lineage is not null).Select(e => (e.Key, e.Lineage!))];

    /// <summary>Empties the index without reporting anything (the tier is closing; the files stay).</summary>
    public void Reset()
    {
        _entries.Clear();
        _lru.Clear();
    }

    private void Unindex(Entry entry)
    {
        _entries.Remove(entry.Key);
        _lru.Unlink(entry);
        UsedBytes -= entry.Record.BlockBytes;
        Removed?.Invoke(entry.Key);
    }

    private void Forget(Entry entry)
    {
        Unindex(entry);
        _deleting.Add(entry.Key);
    }

    /// <summary>An indexed chunk file: what the index recorded of it, and the chunk's lineage when the file holds one.</summary>
    /// <param name="record">The file's record.</param>
    /// <param name="lineage">The chunk's parent and token ids, or null.</param>
    internal sealed class Entry(DiskChunkRecord record, ChunkLineage? lineage = null) : LruNode<Entry>
    {
        /// <summary>The chunk key.</summary>
        public ChunkHash Key => Record.Key;

        /// <summary>What the index recorded of the file.</summary>
        public DiskChunkRecord Record { get; } = record;

        /// <summary>The chunk's parent and token ids, when the file holds them.</summary>
        public ChunkLineage? Lineage { get; } = lineage;
    }
}
