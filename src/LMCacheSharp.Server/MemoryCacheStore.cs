using System.Diagnostics.CodeAnalysis;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Storage;

namespace LMCacheSharp.Server;

/// <summary>
/// The in-memory store: values in native buffers from a <see cref="KvBufferPool"/>, capacity in bytes of buffer held,
/// least-recently-used eviction. Lookups by span allocate nothing; a new key costs one key array.
/// </summary>
public sealed class MemoryCacheStore : ICacheStore
{
    private readonly Lock _lock = new();
    private readonly Dictionary<byte[], Entry> _entries;
    private readonly Dictionary<byte[], Entry>.AlternateLookup<ReadOnlySpan<byte>> _bySpan;
    private readonly KvBufferPool _pool;
    private readonly LruList<Entry> _lru = new(); // head: most recently used; tail: the next victim
    private long _usedBytes;
    private long _evictions;
    private bool _disposed;

    /// <summary>Creates a store.</summary>
    /// <param name="capacityBytes">Capacity in bytes (&gt; 0).</param>
    /// <param name="poolRetainedBytes">Bytes of freed buffers kept for reuse (default: an eighth of the capacity, at most 256 MiB).</param>
    public MemoryCacheStore(long capacityBytes, long? poolRetainedBytes = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(capacityBytes);
        CapacityBytes = capacityBytes;
        _pool = new KvBufferPool(poolRetainedBytes ?? Math.Min(capacityBytes / 8, 256L << 20));
        _entries = new Dictionary<byte[], Entry>(KeyComparer.Instance);
        _bySpan = _entries.GetAlternateLookup<ReadOnlySpan<byte>>();
    }

    /// <summary>Capacity in bytes.</summary>
    public long CapacityBytes { get; }

    /// <summary>The pool the values come from (tests check it ends empty).</summary>
    public KvBufferPool Pool => _pool;

    /// <inheritdoc />
    public KvChunk Rent(int length) => _pool.Rent(length);

    /// <inheritdoc />
    public bool Put(ReadOnlySpan<byte> key, KvChunk value)
    {
        ArgumentNullException.ThrowIfNull(value);
        if (key.IsEmpty)
        {
            throw new ArgumentException("Empty key.", nameof(key));
        }

        var size = value.Capacity;
        if (size > CapacityBytes)
        {
            return false;
        }

        KvChunk? replaced = null;
        List<KvChunk>? evicted = null;
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_bySpan.TryGetValue(key, out var existing))
            {
                _lru.Unlink(existing);
                _entries.Remove(existing.Key);
                _usedBytes -= existing.Value.Capacity;
                replaced = existing.Value;
            }

            while (_usedBytes + size > CapacityBytes && _lru.Tail is not null)
            {
                var victim = _lru.Tail;
                _lru.Unlink(victim);
                _entries.Remove(victim.Key);
                _usedBytes -= victim.Value.Capacity;
                (evicted ??= []).Add(victim.Value);
                _evictions++;
            }

            var entry = new Entry(existing?.Key ?? key.ToArray(), value.AddRef());
            _entries.Add(entry.Key, entry);
            _lru.LinkAtHead(entry);
            _usedBytes += size;
        }

        replaced?.Release();
        evicted?.ForEach(v => v.Release());
        return true;
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

            _lru.MoveToHead(entry);
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

            _lru.MoveToHead(entry);
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

            _lru.Unlink(entry);
            _entries.Remove(entry.Key);
            _usedBytes -= entry.Value.Capacity;
            value = entry.Value;
        }

        value.Release();
        return true;
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
        }

        values.ForEach(v => v.Release());
    }

    /// <inheritdoc />
    public CacheStoreStats GetStats()
    {
        lock (_lock)
        {
            return new CacheStoreStats(_entries.Count, _usedBytes, CapacityBytes, _evictions);
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

    private sealed class Entry(byte[] key, KvChunk value) : LruNode<Entry>
    {
        public byte[] Key { get; } = key;

        public KvChunk Value { get; } = value;
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
