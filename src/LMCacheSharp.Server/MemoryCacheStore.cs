using System.Diagnostics.CodeAnalysis;
using System.Text;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Storage;

namespace LMCacheSharp.Server;

/// <summary>
/// The in-memory store: values in native buffers from a <see cref="KvBufferPool"/>, capacity in bytes of buffer held,
/// least-recently-used eviction. Lookups by span allocate nothing; a new key costs its key array and entry (and a link in
/// its group's list when it is put in a quota group).
/// <para>
/// Pins (PIN, UNPIN) exempt values from eviction: a pinned value leaves the recency lists until its last unpin, pins are
/// counted per key and bounded by <see cref="MaxPinnedBytes"/>, and a PUT that could only fit by evicting pins is refused
/// (<see cref="CachePutStatus.PinnedFull"/>). A replaced value keeps its key's pins.
/// </para>
/// <para>
/// Quota groups (PUT-IN-GROUP, LMCache's isolated LRU): a value put in a group with a quota counts against it, and a PUT
/// that would take the group over its quota first evicts the group's own least recently used values, so one tenant
/// filling the store evicts its own values, not another's. Global capacity eviction works across groups as before.
/// Values put without a group, or in a group without a quota, count against the capacity only.
/// </para>
/// </summary>
public sealed class MemoryCacheStore : ICacheStore
{
    private readonly Lock _lock = new();
    private readonly Dictionary<byte[], Entry> _entries;
    private readonly Dictionary<byte[], Entry>.AlternateLookup<ReadOnlySpan<byte>> _bySpan;
    private readonly Dictionary<byte[], Group> _groups;
    private readonly Dictionary<byte[], Group>.AlternateLookup<ReadOnlySpan<byte>> _groupsBySpan;
    private readonly Group[] _configured;
    private readonly long? _defaultQuota;
    private readonly KvBufferPool _pool;
    private readonly LruList<Entry> _lru = new(); // head: most recently used; tail: the next victim
    private long _usedBytes;
    private long _evictions;
    private long _quotaEvictions;
    private long _pinnedBytes;
    private long _pinnedItems;
    private bool _disposed;

    /// <summary>Creates a store.</summary>
    /// <param name="capacityBytes">Capacity in bytes (&gt; 0).</param>
    /// <param name="poolRetainedBytes">Bytes of freed buffers kept for reuse (default: an eighth of the capacity, at most 256 MiB).</param>
    /// <param name="limits">The pinned-bytes limit and the quota groups (default: half the capacity may be pinned, no quotas).</param>
    public MemoryCacheStore(long capacityBytes, long? poolRetainedBytes = null, CacheStoreLimits? limits = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(capacityBytes);
        limits ??= CacheStoreLimits.None;
        if (limits.MaxPinnedBytes is { } maxPinned)
        {
            ArgumentOutOfRangeException.ThrowIfNegative(maxPinned, nameof(limits));
            ArgumentOutOfRangeException.ThrowIfGreaterThan(maxPinned, capacityBytes, nameof(limits));
        }

        CapacityBytes = capacityBytes;
        MaxPinnedBytes = limits.MaxPinnedBytes ?? capacityBytes / 2;
        _pool = new KvBufferPool(poolRetainedBytes ?? Math.Min(capacityBytes / 8, 256L << 20));
        _entries = new Dictionary<byte[], Entry>(KeyComparer.Instance);
        _bySpan = _entries.GetAlternateLookup<ReadOnlySpan<byte>>();
        _groups = new Dictionary<byte[], Group>(KeyComparer.Instance);
        _groupsBySpan = _groups.GetAlternateLookup<ReadOnlySpan<byte>>();
        foreach (var (id, quota) in limits.GroupQuotas)
        {
            ArgumentOutOfRangeException.ThrowIfNegativeOrZero(quota, nameof(limits));
            var key = Encoding.ASCII.GetBytes(id);
            _groups[key] = new Group(key, quota, configured: true);
        }

        _configured = [.. _groups.Values.OrderBy(g => g.Name, StringComparer.Ordinal)];
        _defaultQuota = limits.DefaultGroupQuotaBytes;
    }

    /// <summary>Capacity in bytes.</summary>
    public long CapacityBytes { get; }

    /// <summary>Bytes of values that may be pinned at once.</summary>
    public long MaxPinnedBytes { get; }

    /// <summary>The pool the values come from (tests check it ends empty).</summary>
    public KvBufferPool Pool => _pool;

    /// <inheritdoc />
    public KvChunk Rent(int length) => _pool.Rent(length);

    /// <inheritdoc />
    public bool Put(ReadOnlySpan<byte> key, KvChunk value) => Put(key, value, default) == CachePutStatus.Stored;

    /// <inheritdoc />
    public CachePutStatus Put(ReadOnlySpan<byte> key, KvChunk value, ReadOnlySpan<byte> group)
    {
        ArgumentNullException.ThrowIfNull(value);
        if (key.IsEmpty)
        {
            throw new ArgumentException("Empty key.", nameof(key));
        }

        var size = value.Capacity;
        if (size > CapacityBytes)
        {
            return CachePutStatus.LargerThanCapacity;
        }

        KvChunk? replaced = null;
        List<KvChunk>? evicted = null;
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            Group? quota = null;
            var limit = group.IsEmpty ? null : _groupsBySpan.TryGetValue(group, out quota) ? quota.Quota : _defaultQuota;
            if (size > limit)
            {
                return CachePutStatus.LargerThanQuota;
            }

            _bySpan.TryGetValue(key, out var existing);
            var pins = existing?.Pins ?? 0;
            // Checked before anything changes, so a refused PUT leaves the store (and the value it would replace) as it was:
            // only unpinned values can be evicted, and a replaced value's pins go over to the new one.
            var pinnedElsewhere = _pinnedBytes - (pins > 0 ? existing!.Value.Capacity : 0);
            var pinnedInGroup = (quota?.PinnedBytes ?? 0) - (pins > 0 && existing!.Group == quota ? existing.Value.Capacity : 0);
            if (pinnedElsewhere + size > CapacityBytes || (quota is not null && pinnedInGroup + size > quota.Quota))
            {
                return CachePutStatus.PinnedFull;
            }

            if (quota is null && limit is { } defaultQuota)
            {
                // A group met through the default quota: created with its first value, dropped with its last, so clients
                // cannot grow the table past the values held.
                quota = new Group(group.ToArray(), defaultQuota, configured: false);
                _groups.Add(quota.Id, quota);
            }

            if (existing is not null)
            {
                replaced = existing.Value;
                Detach(existing);
            }

            while (quota is not null && quota.UsedBytes + size > quota.Quota && quota.Lru.Tail is { } link)
            {
                // Isolated LRU: the group's own least recently used value goes first.
                (evicted ??= []).Add(Evict(link.Entry));
                quota.Evictions++;
                _quotaEvictions++;
            }

            while (_usedBytes + size > CapacityBytes && _lru.Tail is { } victim)
            {
                (evicted ??= []).Add(Evict(victim));
            }

            var entry = new Entry(existing?.Key ?? key.ToArray(), value.AddRef(), quota);
            Attach(entry, pins);
        }

        replaced?.Release();
        evicted?.ForEach(v => v.Release());
        return CachePutStatus.Stored;
    }

    /// <inheritdoc />
    public KvChunk? Get(ReadOnlySpan<byte> key)
    {
        lock (_lock)
        {
            if (!_bySpan.TryGetValue(key, out var entry))
            {
                return null;
            }

            Touch(entry);
            return entry.Value.AddRef();
        }
    }

    /// <inheritdoc />
    public bool Contains(ReadOnlySpan<byte> key)
    {
        lock (_lock)
        {
            if (!_bySpan.TryGetValue(key, out var entry))
            {
                return false;
            }

            Touch(entry);
            return true;
        }
    }

    /// <inheritdoc />
    public bool Remove(ReadOnlySpan<byte> key)
    {
        KvChunk value;
        lock (_lock)
        {
            if (!_bySpan.TryGetValue(key, out var entry))
            {
                return false;
            }

            Detach(entry);
            value = entry.Value;
        }

        value.Release();
        return true;
    }

    /// <inheritdoc />
    public CachePinResult Pin(IReadOnlyList<byte[]> keys)
    {
        ArgumentNullException.ThrowIfNull(keys);
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            long added = 0;
            HashSet<Entry>? counted = null; // a key listed twice adds its bytes once
            foreach (var key in keys)
            {
                if (_entries.TryGetValue(key, out var entry) && entry.Pins == 0 && (counted ??= []).Add(entry))
                {
                    added += entry.Value.Capacity;
                }
            }

            if (_pinnedBytes + added > MaxPinnedBytes)
            {
                return new CachePinResult(0, OverLimit: true);
            }

            var pinned = 0;
            foreach (var key in keys)
            {
                if (_entries.TryGetValue(key, out var entry))
                {
                    if (entry.Pins++ == 0)
                    {
                        Unlink(entry);
                        AddPinned(entry, 1);
                    }

                    pinned++;
                }
            }

            return new CachePinResult(pinned, OverLimit: false);
        }
    }

    /// <inheritdoc />
    public int Unpin(IReadOnlyList<byte[]> keys)
    {
        ArgumentNullException.ThrowIfNull(keys);
        lock (_lock)
        {
            var unpinned = 0;
            foreach (var key in keys)
            {
                if (_entries.TryGetValue(key, out var entry) && entry.Pins > 0)
                {
                    unpinned++;
                    if (--entry.Pins == 0)
                    {
                        AddPinned(entry, -1);
                        Link(entry); // evictable again, as just used
                    }
                }
            }

            return unpinned;
        }
    }

    /// <summary>How many pins <paramref name="key"/> holds (0: absent or not pinned).</summary>
    public int PinCount(ReadOnlySpan<byte> key)
    {
        lock (_lock)
        {
            return _bySpan.TryGetValue(key, out var entry) ? entry.Pins : 0;
        }
    }

    /// <inheritdoc />
    public void Clear()
    {
        List<KvChunk> values;
        lock (_lock)
        {
            values = [.. _entries.Values.Select(e => e.Value)];
            _entries.Clear();
            _lru.Clear();
            _usedBytes = 0;
            _pinnedBytes = 0;
            _pinnedItems = 0;
            foreach (var group in _groups.Values.ToList())
            {
                group.Lru.Clear();
                group.UsedBytes = 0;
                group.PinnedBytes = 0;
                if (!group.Configured)
                {
                    _groups.Remove(group.Id);
                }
            }
        }

        values.ForEach(v => v.Release());
    }

    /// <inheritdoc />
    public CacheStoreStats GetStats()
    {
        lock (_lock)
        {
            return new CacheStoreStats(_entries.Count, _usedBytes, CapacityBytes, _evictions)
            {
                PinnedItems = _pinnedItems,
                PinnedBytes = _pinnedBytes,
                MaxPinnedBytes = MaxPinnedBytes,
                QuotaEvictions = _quotaEvictions,
            };
        }
    }

    /// <inheritdoc />
    public IReadOnlyList<QuotaGroupStats> GetGroupStats()
    {
        lock (_lock)
        {
            return [.. _configured.Select(g => new QuotaGroupStats(g.Name, g.UsedBytes, g.Quota, g.Evictions))];
        }
    }

    /// <summary>Releases every value and the pool's free buffers.</summary>
    public void Dispose()
    {
        Clear();
        lock (_lock)
        {
            _disposed = true;
        }

        _pool.Dispose();
    }

    // Under the lock: a value entering the store, with the pins of the value it replaces.
    private void Attach(Entry entry, int pins)
    {
        _entries.Add(entry.Key, entry);
        _usedBytes += entry.Value.Capacity;
        if (entry.Group is { } group)
        {
            group.UsedBytes += entry.Value.Capacity;
        }

        entry.Pins = pins;
        if (pins > 0)
        {
            AddPinned(entry, 1);
        }
        else
        {
            Link(entry);
        }
    }

    // Under the lock: a value leaving the store (replaced, removed or evicted), its pins with it. The caller releases it.
    private void Detach(Entry entry)
    {
        Unlink(entry);
        _entries.Remove(entry.Key);
        _usedBytes -= entry.Value.Capacity;
        if (entry.Pins > 0)
        {
            AddPinned(entry, -1);
            entry.Pins = 0;
        }

        if (entry.Group is { } group)
        {
            group.UsedBytes -= entry.Value.Capacity;
            if (group.UsedBytes == 0 && !group.Configured)
            {
                _groups.Remove(group.Id);
            }
        }
    }

    private KvChunk Evict(Entry entry)
    {
        Detach(entry);
        _evictions++;
        return entry.Value;
    }

    private void AddPinned(Entry entry, int sign)
    {
        _pinnedItems += sign;
        _pinnedBytes += sign * (long)entry.Value.Capacity;
        if (entry.Group is { } group)
        {
            group.PinnedBytes += sign * (long)entry.Value.Capacity;
        }
    }

    // The recency lists hold the unpinned values only: eviction never meets a pin.
    private void Link(Entry entry)
    {
        _lru.LinkAtHead(entry);
        if (entry.Group is { } group)
        {
            group.Lru.LinkAtHead(entry.Link!);
        }
    }

    private void Unlink(Entry entry)
    {
        _lru.Unlink(entry);
        entry.Group?.Lru.Unlink(entry.Link!);
    }

    private void Touch(Entry entry)
    {
        if (entry.Pins == 0)
        {
            _lru.MoveToHead(entry);
            entry.Group?.Lru.MoveToHead(entry.Link!);
        }
    }

    private sealed class Entry : LruNode<Entry>
    {
        public Entry(byte[] key, KvChunk value, Group? group)
        {
            Key = key;
            Value = value;
            Group = group;
            Link = group is null ? null : new GroupLink(this);
        }

        public byte[] Key { get; }

        public KvChunk Value { get; }

        public Group? Group { get; }

        /// <summary>The entry's place in its group's recency list (null without a group).</summary>
        public GroupLink? Link { get; }

        public int Pins { get; set; }
    }

    private sealed class GroupLink(Entry entry) : LruNode<GroupLink>
    {
        public Entry Entry { get; } = entry;
    }

    /// <summary>A quota group: its values' bytes, its own recency list (the unpinned values), its quota.</summary>
    private sealed class Group(byte[] id, long quota, bool configured)
    {
        public byte[] Id { get; } = id;

        public string Name { get; } = Encoding.ASCII.GetString(id);

        public long Quota { get; } = quota;

        public bool Configured { get; } = configured;

        public LruList<GroupLink> Lru { get; } = new();

        public long UsedBytes { get; set; }

        public long PinnedBytes { get; set; }

        public long Evictions { get; set; }
    }

    /// <summary>Byte-wise key equality, with lookups by span (no allocation).</summary>
    private sealed class KeyComparer : IEqualityComparer<byte[]>, IAlternateEqualityComparer<ReadOnlySpan<byte>, byte[]>
    {
        public static readonly KeyComparer Instance = new();

        public bool Equals(byte[]? x, byte[]? y) => x.AsSpan().SequenceEqual(y);

        public int GetHashCode([DisallowNull] byte[] obj) => GetHashCode((ReadOnlySpan<byte>)obj);

        public bool Equals(ReadOnlySpan<byte> alternate, byte[] other) => alternate.SequenceEqual(other);

        public int GetHashCode(ReadOnlySpan<byte> alternate)
        {
            // HashCode is seeded per process: keys chosen by a client cannot be crafted to collide.
            var hash = new HashCode();
            hash.AddBytes(alternate);
            return hash.ToHashCode();
        }

        public byte[] Create(ReadOnlySpan<byte> alternate) => alternate.ToArray();
    }
}
