using System.Runtime.InteropServices;

namespace LMCacheSharp.Core.Kv;

/// <summary>
/// Hands out <see cref="KvChunk"/> buffers in native memory, aligned to 4 KiB (so the disk tier can use O_DIRECT), and
/// keeps returned ones for reuse by size, up to <see cref="MaxRetainedBytes"/>. Chunk sizes in one cache are nearly all
/// equal, so after warm-up a store or a load allocates nothing, managed or native. Thread-safe.
/// </summary>
public sealed unsafe class KvBufferPool : IDisposable
{
    /// <summary>Buffer alignment and size granularity in bytes.</summary>
    public const int Alignment = 4096;

    private readonly Lock _lock = new();
    private readonly Dictionary<int, Stack<KvChunk>> _free = [];
    private long _retainedBytes;
    private long _rentedBytes;
    private int _rentedCount;
    private bool _disposed;

    /// <summary>Creates a pool.</summary>
    /// <param name="maxRetainedBytes">Bytes of returned buffers kept for reuse. Default 256 MiB; 0 keeps none.</param>
    public KvBufferPool(long maxRetainedBytes = 256L << 20)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(maxRetainedBytes);
        MaxRetainedBytes = maxRetainedBytes;
    }

    /// <summary>Bytes of free buffers the pool keeps for reuse.</summary>
    public long MaxRetainedBytes { get; }

    /// <summary>Chunks rented and not yet returned.</summary>
    public int RentedCount => Volatile.Read(ref _rentedCount);

    /// <summary>Capacity bytes of chunks rented and not yet returned.</summary>
    public long RentedBytes => Interlocked.Read(ref _rentedBytes);

    /// <summary>Capacity bytes of free buffers kept for reuse.</summary>
    public long RetainedBytes => Interlocked.Read(ref _retainedBytes);

    /// <summary>Rents a chunk whose payload length is <paramref name="length"/>; the caller holds its only reference.</summary>
    public KvChunk Rent(int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        var capacity = RoundUp(length);
        KvChunk? chunk = null;
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_free.TryGetValue(capacity, out var stack) && stack.TryPop(out chunk))
            {
                _retainedBytes -= capacity;
            }

            _rentedCount++;
            _rentedBytes += capacity;
        }

        if (chunk is null)
        {
            try
            {
                var buffer = (byte*)NativeMemory.AlignedAlloc((nuint)capacity, Alignment);
                chunk = new KvChunk(this, buffer, capacity);
            }
            catch
            {
                lock (_lock)
                {
                    _rentedCount--;
                    _rentedBytes -= capacity;
                }

                throw;
            }
        }

        chunk.Revive(length);
        return chunk;
    }

    internal void Return(KvChunk chunk)
    {
        var keep = false;
        lock (_lock)
        {
            _rentedCount--;
            _rentedBytes -= chunk.Capacity;
            if (!_disposed && _retainedBytes + chunk.Capacity <= MaxRetainedBytes)
            {
                if (!_free.TryGetValue(chunk.Capacity, out var stack))
                {
                    _free[chunk.Capacity] = stack = new Stack<KvChunk>();
                }

                stack.Push(chunk);
                _retainedBytes += chunk.Capacity;
                keep = true;
            }
        }

        if (!keep)
        {
            chunk.FreeNative();
        }
    }

    /// <summary>Frees every retained buffer. Buffers still rented are freed when their last reference goes.</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            foreach (var stack in _free.Values)
            {
                while (stack.TryPop(out var chunk))
                {
                    chunk.FreeNative();
                }
            }

            _free.Clear();
            _retainedBytes = 0;
        }
    }

    private static int RoundUp(int length)
    {
        var rounded = ((long)Math.Max(length, 1) + Alignment - 1) / Alignment * Alignment;
        if (rounded > int.MaxValue - Alignment)
        {
            throw new ArgumentOutOfRangeException(nameof(length), length, "chunk payload too large");
        }

        return (int)rounded;
    }
}
