using System.Buffers;
using System.Collections.Concurrent;
using Microsoft.AspNetCore.Connections;

namespace LMCacheSharp.Server;

/// <summary>
/// A memory pool of large pinned blocks for Kestrel's connection pipes. Kestrel's default blocks are 4 KiB, so every
/// socket receive reads at most 4 KiB: multi-megabyte values then cost thousands of system calls. With 128 KiB blocks a
/// receive (and a send) moves up to 128 KiB. Freed blocks are kept for reuse up to a bound; the rest go to the GC.
/// </summary>
internal sealed class LargeBlockMemoryPool : MemoryPool<byte>
{
    private readonly ConcurrentStack<byte[]> _free = new();
    private readonly int _blockSize;
    private readonly int _maxRetained;

    public LargeBlockMemoryPool(int blockSize = 128 << 10, int maxRetainedBlocks = 512)
    {
        _blockSize = blockSize;
        _maxRetained = maxRetainedBlocks;
    }

    public override int MaxBufferSize => _blockSize;

    public override IMemoryOwner<byte> Rent(int minBufferSize = -1)
    {
        if (minBufferSize > _blockSize)
        {
            return new Block(this, GC.AllocateUninitializedArray<byte>(minBufferSize, pinned: true), pooled: false);
        }

        return new Block(this, _free.TryPop(out var array) ? array : GC.AllocateUninitializedArray<byte>(_blockSize, pinned: true), pooled: true);
    }

    protected override void Dispose(bool disposing) => _free.Clear();

    private void Return(byte[] array)
    {
        if (_free.Count < _maxRetained)
        {
            _free.Push(array);
        }
    }

    private sealed class Block(LargeBlockMemoryPool pool, byte[] array, bool pooled) : IMemoryOwner<byte>
    {
        private byte[]? _array = array;

        public Memory<byte> Memory => _array ?? throw new ObjectDisposedException(nameof(Block));

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _array, null) is { } returned && pooled)
            {
                pool.Return(returned);
            }
        }
    }
}

/// <summary>Hands Kestrel's socket transport a <see cref="LargeBlockMemoryPool"/> (resolved from DI as <see cref="IMemoryPoolFactory{T}"/>).</summary>
internal sealed class LargeBlockMemoryPoolFactory : IMemoryPoolFactory<byte>
{
    public MemoryPool<byte> Create(MemoryPoolOptions? options = null) => new LargeBlockMemoryPool();
}
