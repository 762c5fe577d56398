using System.IO.Hashing;
using System.Runtime.InteropServices;
using LMCacheSharp.Core.Keys;

namespace LMCacheSharp.Core.Kv;

/// <summary>
/// One chunk of KV in native memory, reference counted. The creator holds the first reference; every holder that keeps the
/// chunk (a tier, a reader, a write queue) takes its own with <see cref="AddRef"/> and gives it back with
/// <see cref="Release"/> (or <see cref="Dispose"/>). When the last reference goes the buffer returns to its pool, so a chunk
/// evicted from a tier while a reader still holds it stays valid until that reader releases it.
/// <para>
/// Lifetime is checked, so a reference-counting bug fails loudly instead of reading another chunk's bytes: each rent hands
/// out a new <see cref="KvChunk"/> object over a reused native buffer (a stale reference is to a dead object and throws on
/// any use), and the buffer carries a generation stamp bumped on every rent, which the chunk checks on every access in
/// Debug builds and on its last release in Release builds. Metadata (key, tokens, format, checksum, length) is immutable
/// once the chunk is sealed (<see cref="SealChecksum"/> or <see cref="Seal"/>).
/// </para>
/// </summary>
public sealed unsafe class KvChunk : IDisposable
{
    private readonly KvBufferPool _pool;
    private readonly NativeKvBuffer _buffer;
    private readonly int _generation;
    private int _refCount;
    private int _length;
    private ChunkHash _key;
    private int _tokenCount;
    private KvFormat _format;
    private ulong _checksum;
    private ChunkLineage? _lineage;
    private string? _quotaGroup;
    private volatile bool _sealed;

    internal KvChunk(KvBufferPool pool, NativeKvBuffer buffer, int length)
    {
        _pool = pool;
        _buffer = buffer;
        _generation = buffer.Generation;
        _length = length;
        _refCount = 1;
    }

    internal NativeKvBuffer NativeBuffer => _buffer;

    /// <summary>Bytes the native buffer holds (a multiple of <see cref="KvBufferPool.Alignment"/>).</summary>
    public int Capacity => _buffer.Capacity;

    /// <summary>Payload length in bytes.</summary>
    public int Length => _length;

    /// <summary>The key the chunk is stored under. Set before the chunk is sealed.</summary>
    public ChunkHash Key
    {
        get => _key;
        set
        {
            ThrowIfSealed();
            _key = value;
        }
    }

    /// <summary>Tokens covered by the chunk. Set before the chunk is sealed.</summary>
    public int TokenCount
    {
        get => _tokenCount;
        set
        {
            ThrowIfSealed();
            _tokenCount = value;
        }
    }

    /// <summary>The format of the payload. Set before the chunk is sealed.</summary>
    public KvFormat Format
    {
        get => _format;
        set
        {
            ThrowIfSealed();
            _format = value;
        }
    }

    /// <summary>
    /// Where the chunk sits in its prompt (the previous chunk's key and this chunk's token ids), for token-exact reuse; null
    /// when unknown. Set before the chunk is sealed; tiers that can keep it (the disk tier) persist it with the chunk.
    /// </summary>
    public ChunkLineage? Lineage
    {
        get => _lineage;
        set
        {
            ThrowIfSealed();
            _lineage = value;
        }
    }

    /// <summary>
    /// The quota group the chunk counts against on a shared cache server (<see cref="Keys.CacheNamespace.QuotaGroup"/>: an id
    /// of its <c>cache_salt</c>), or null. Set before the chunk is sealed, by the engine when it stores a salted chunk; the
    /// remote tier sends it with the PUT. Not persisted: a chunk read back from a tier has none.
    /// </summary>
    public string? QuotaGroup
    {
        get => _quotaGroup;
        set
        {
            ThrowIfSealed();
            _quotaGroup = value;
        }
    }

    /// <summary>XxHash3 of the payload, set by <see cref="SealChecksum"/> when the chunk is filled (or from a verified header).</summary>
    public ulong Checksum
    {
        get => _checksum;
        set
        {
            ThrowIfSealed();
            _checksum = value;
        }
    }

    /// <summary>Whether the metadata is frozen (<see cref="SealChecksum"/> or <see cref="Seal"/>).</summary>
    public bool IsSealed => _sealed;

    /// <summary>The buffer's generation when this chunk was rented (diagnostics: it changes on every rent of the buffer).</summary>
    public int Generation => _generation;

    /// <summary>Current reference count (diagnostics and tests).</summary>
    public int ReferenceCount => Volatile.Read(ref _refCount);

    /// <summary>The payload. Valid only while the caller holds a reference.</summary>
    public Span<byte> Span
    {
        get
        {
            ThrowIfDead();
            return new Span<byte>((void*)_buffer.DangerousGetHandle(), _length);
        }
    }

    /// <summary>Pointer to the payload, aligned to <see cref="KvBufferPool.Alignment"/>. Valid only while a reference is held.</summary>
    public nint Pointer
    {
        get
        {
            ThrowIfDead();
            return _buffer.DangerousGetHandle();
        }
    }

    /// <summary>Sets the payload length (at most <see cref="Capacity"/>). Not after the chunk is sealed.</summary>
    public void SetLength(int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(length, Capacity);
        ThrowIfSealed();
        _length = length;
    }

    /// <summary>Computes and records the payload checksum, then seals the metadata.</summary>
    public void SealChecksum()
    {
        ThrowIfSealed();
        _checksum = XxHash3.HashToUInt64(Span);
        _sealed = true;
    }

    /// <summary>Seals the metadata as it is (the checksum was set from a verified header). Idempotent.</summary>
    public void Seal()
    {
        ThrowIfDead();
        _sealed = true;
    }

    /// <summary>True when the payload still hashes to <see cref="Checksum"/>.</summary>
    public bool VerifyChecksum() => XxHash3.HashToUInt64(Span) == Checksum;

    /// <summary>Takes another reference. Throws when the chunk was already returned to its pool.</summary>
    public KvChunk AddRef()
    {
        while (true)
        {
            var current = Volatile.Read(ref _refCount);
            if (current <= 0)
            {
                throw new InvalidOperationException("KvChunk used after its last reference was released.");
            }

            if (Interlocked.CompareExchange(ref _refCount, current + 1, current) == current)
            {
                CheckGenerationInDebug();
                return this;
            }
        }
    }

    /// <summary>Gives one reference back; the last one returns the buffer to the pool.</summary>
    public void Release()
    {
        var remaining = Interlocked.Decrement(ref _refCount);
        if (remaining == 0)
        {
            if (_buffer.Generation != _generation)
            {
                throw new InvalidOperationException(
                    $"KvChunk buffer was handed to another chunk while this one was live (generation {_generation}, buffer at {_buffer.Generation}).");
            }

            _pool.Return(this);
        }
        else if (remaining < 0)
        {
            throw new InvalidOperationException("KvChunk released more times than it was referenced.");
        }
    }

    /// <summary>Same as <see cref="Release"/>.</summary>
    public void Dispose() => Release();

    private void ThrowIfDead()
    {
        if (Volatile.Read(ref _refCount) <= 0)
        {
            throw new InvalidOperationException("KvChunk used after its last reference was released.");
        }

        CheckGenerationInDebug();
    }

    [System.Diagnostics.Conditional("DEBUG")]
    private void CheckGenerationInDebug()
    {
        if (_buffer.Generation != _generation || _buffer.IsClosed)
        {
            throw new InvalidOperationException($"KvChunk used after its buffer went to another chunk (generation {_generation}, buffer at {_buffer.Generation}).");
        }
    }

    private void ThrowIfSealed()
    {
        ThrowIfDead();
        if (_sealed)
        {
            throw new InvalidOperationException("KvChunk metadata is immutable once sealed.");
        }
    }
}

/// <summary>
/// A native buffer (<see cref="NativeMemory.AlignedAlloc"/>) owned by a safe handle, so it is freed exactly once, by the
/// pool or, if a buffer is leaked, by the finalizer. <see cref="Generation"/> is bumped each time the pool hands it out.
/// </summary>
internal sealed unsafe class NativeKvBuffer : SafeHandle
{
    private int _generation;

    public NativeKvBuffer(int capacity, int alignment)
        : base(0, ownsHandle: true)
    {
        SetHandle((nint)NativeMemory.AlignedAlloc((nuint)capacity, (nuint)alignment));
        Capacity = capacity;
    }

    public int Capacity { get; }

    public int Generation => Volatile.Read(ref _generation);

    public override bool IsInvalid => handle == 0;

    public void NextGeneration() => Interlocked.Increment(ref _generation);

    protected override bool ReleaseHandle()
    {
        NativeMemory.AlignedFree((void*)handle);
        return true;
    }
}
