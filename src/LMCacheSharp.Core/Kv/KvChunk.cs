using System.IO.Hashing;
using LMCacheSharp.Core.Keys;

namespace LMCacheSharp.Core.Kv;

/// <summary>
/// One chunk of KV in native memory, reference counted. The creator holds the first reference; every holder that keeps the
/// chunk (a tier, a reader, a write queue) takes its own with <see cref="AddRef"/> and gives it back with
/// <see cref="Release"/> (or <see cref="Dispose"/>). When the last reference goes the buffer returns to its pool, so a chunk
/// evicted from a tier while a reader still holds it stays valid until that reader releases it.
/// </summary>
public sealed unsafe class KvChunk : IDisposable
{
    private readonly KvBufferPool _pool;
    private int _refCount;

    internal KvChunk(KvBufferPool pool, byte* buffer, int capacity)
    {
        _pool = pool;
        Buffer = buffer;
        Capacity = capacity;
    }

    internal byte* Buffer { get; private set; }

    /// <summary>Bytes the native buffer holds (a multiple of <see cref="KvBufferPool.Alignment"/>).</summary>
    public int Capacity { get; }

    /// <summary>Payload length in bytes.</summary>
    public int Length { get; private set; }

    /// <summary>The key the chunk is stored under.</summary>
    public ChunkHash Key { get; set; }

    /// <summary>Tokens covered by the chunk.</summary>
    public int TokenCount { get; set; }

    /// <summary>The format of the payload.</summary>
    public KvFormat Format { get; set; }

    /// <summary>XxHash3 of the payload, set by <see cref="SealChecksum"/> when the chunk is filled.</summary>
    public ulong Checksum { get; set; }

    /// <summary>Current reference count (diagnostics and tests).</summary>
    public int ReferenceCount => Volatile.Read(ref _refCount);

    /// <summary>The payload. Valid only while the caller holds a reference.</summary>
    public Span<byte> Span
    {
        get
        {
            ThrowIfDead();
            return new Span<byte>(Buffer, Length);
        }
    }

    /// <summary>Pointer to the payload, aligned to <see cref="KvBufferPool.Alignment"/>. Valid only while a reference is held.</summary>
    public nint Pointer
    {
        get
        {
            ThrowIfDead();
            return (nint)Buffer;
        }
    }

    /// <summary>Sets the payload length (at most <see cref="Capacity"/>).</summary>
    public void SetLength(int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(length, Capacity);
        Length = length;
    }

    /// <summary>Computes and records the payload checksum.</summary>
    public void SealChecksum() => Checksum = XxHash3.HashToUInt64(Span);

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
            _pool.Return(this);
        }
        else if (remaining < 0)
        {
            throw new InvalidOperationException("KvChunk released more times than it was referenced.");
        }
    }

    /// <summary>Same as <see cref="Release"/>.</summary>
    public void Dispose() => Release();

    internal void Revive(int length)
    {
        Length = length;
        Key = default;
        TokenCount = 0;
        Format = default;
        Checksum = 0;
        Volatile.Write(ref _refCount, 1);
    }

    internal void FreeNative()
    {
        if (Buffer != null)
        {
            System.Runtime.InteropServices.NativeMemory.AlignedFree(Buffer);
            Buffer = null;
        }
    }

    private void ThrowIfDead()
    {
        if (Volatile.Read(ref _refCount) <= 0)
        {
            throw new InvalidOperationException("KvChunk used after its last reference was released.");
        }
    }
}
