namespace LMCacheSharp.Core.Kv;

/// <summary>
/// Hands out <see cref="KvChunk"/> buffers in native memory, aligned to 4 KiB (so the disk tier can use O_DIRECT), and
/// keeps returned buffers for reuse by size, up to <see cref="MaxRetainedBytes"/>. Chunk sizes in one cache are nearly all
/// equal, so after warm-up a store or a load allocates no native memory; each rent allocates one small managed
/// <see cref="KvChunk"/> object (never reused, so that a stale reference to a released chunk fails instead of reading the
/// next chunk's bytes). Native buffers are owned by safe handles. Thread-safe.
/// </summary>
public sealed class KvBufferPool : IDisposable
{
    /// <summary>Buffer alignment and size granularity in bytes.</summary>
    public const int Alignment = 4096;

    private readonly Lock _lock = new();
    private readonly Dictionary<int, Stack<NativeKvBuffer>> _free = [];
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
        NativeKvBuffer? buffer = null;
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_free.TryGetValue(capacity, out var stack) && stack.TryPop(out buffer))
            {
                _retainedBytes -= capacity;
            }

            _rentedCount++;
            _rentedBytes += capacity;
        }

        if (buffer is null)
        {
            try
            {
                buffer = new NativeKvBuffer(capacity, Alignment);
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

        buffer.NextGeneration();
        return new KvChunk(this, buffer, length);
    }

    internal void Return(KvChunk chunk)
    {
        var buffer = chunk.NativeBuffer;
        var keep = false;
        lock (_lock)
        {
            _rentedCount--;
            _rentedBytes -= buffer.Capacity;
            if (!_disposed && _retainedBytes + buffer.Capacity <= MaxRetainedBytes)
            {
                if (!_free.TryGetValue(buffer.Capacity, out var stack))
                {
                    _free[buffer.Capacity] = stack = new Stack<NativeKvBuffer>();
                }

                stack.Push(buffer);
                _retainedBytes += buffer.Capacity;
                keep = true;
            }
        }

        if (!keep)
        {
            buffer.Dispose();
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
                while (stack.TryPop(out var buffer))
                {
                    buffer.Dispose();
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
