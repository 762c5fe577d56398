using System.Buffers;
using System.Runtime.InteropServices;
using LLama.Native;
using LMCacheSharp.Core.Engine;
using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.LlamaCpp;

/// <summary>
/// The cache engine's KV source and sink over one sequence of a llama.cpp context. Chunks move through a scratch
/// sequence of the same (unified) KV cache: a store copies the chunk's position range into the scratch sequence
/// (<c>llama_memory_seq_cp</c> shares cells, no data moves) and serializes only it; a restore loads the chunk into the
/// scratch sequence with <c>llama_state_seq_set_data</c>, shares its cells with the target and drops the scratch id.
/// With <see cref="LlamaChunkLayout.StateBlob"/> a chunk is that blob itself, so neither direction copies beyond
/// llama.cpp's own copy. Every blob is checked (magic, stream count, cell count and positions, layer count, types, row
/// sizes) and any surprise makes the call return false: the engine then stores nothing / restores no further.
/// Not thread-safe: use it on the inference thread, between decodes.
/// </summary>
public sealed unsafe class LlamaKvConnector : IKvSource, IKvSink, IDisposable
{
    private readonly SafeLLamaContextHandle _context;
    private byte* _scratch;
    private nuint _scratchCapacity;
    private bool _disposed;

    /// <summary>Creates a connector.</summary>
    /// <param name="context">The context.</param>
    /// <param name="shape">The context's KV shape (see <see cref="LlamaKvCache.TryProbeShape"/>).</param>
    /// <param name="layout">How chunk payloads are laid out.</param>
    /// <param name="scratchSequence">A sequence id the connector may clear and use at will.</param>
    public LlamaKvConnector(SafeLLamaContextHandle context, LlamaKvShape shape, LlamaChunkLayout layout, LLamaSeqId scratchSequence)
    {
        ArgumentNullException.ThrowIfNull(context);
        _context = context;
        Shape = shape;
        Layout = layout;
        Format = shape.ToFormat(layout);
        ScratchSequence = scratchSequence;
    }

    /// <summary>The context's KV shape.</summary>
    public LlamaKvShape Shape { get; }

    /// <summary>The chunk layout.</summary>
    public LlamaChunkLayout Layout { get; }

    /// <summary>The chunk format.</summary>
    public KvFormat Format { get; }

    /// <summary>The scratch sequence.</summary>
    public LLamaSeqId ScratchSequence { get; }

    /// <summary>The sequence read from and written to.</summary>
    public LLamaSeqId Sequence { get; set; }

    /// <inheritdoc />
    public bool TryReadKv(int startToken, int tokenCount, Span<byte> destination)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (tokenCount <= 0 || destination.Length != Format.PayloadLength(tokenCount))
        {
            return false;
        }

        var expected = LlamaStateBlob.BlobLength(Shape, tokenCount);
        var scratch = ScratchSequence;
        _context.MemorySequenceRemove(scratch, -1, -1);
        try
        {
            _context.MemorySequenceCopy(Sequence, scratch, startToken, startToken + tokenCount);
            var size = _context.GetStateSize(scratch);
            if ((long)size != expected)
            {
                return false; // positions missing or doubled, or a shape we did not probe
            }

            var positions = ArrayPool<int>.Shared.Rent(tokenCount);
            try
            {
                fixed (byte* dest = destination)
                {
                    var direct = Layout == LlamaChunkLayout.StateBlob;
                    var blob = direct ? dest : EnsureScratch(size);
                    if (_context.GetState(blob, size, scratch) != size)
                    {
                        return false;
                    }

                    var blobSpan = new ReadOnlySpan<byte>(blob, (int)size);
                    if (!LlamaStateBlob.TryParse(blobSpan, out var info, positions) || !Matches(info, tokenCount) ||
                        !IsRange(positions.AsSpan(0, tokenCount), startToken, out var sorted))
                    {
                        return false;
                    }

                    if (direct && sorted)
                    {
                        destination[(int)size..].Clear();
                        return true;
                    }

                    if (direct)
                    {
                        // Cells came in cell order: re-emit the blob in position order from a copy.
                        var copy = EnsureScratch(size);
                        Buffer.MemoryCopy(blob, copy, (long)size, (long)size);
                        blobSpan = new ReadOnlySpan<byte>(copy, (int)size);
                        WriteBlob(blobSpan, info, positions.AsSpan(0, tokenCount), startToken, destination);
                    }
                    else
                    {
                        WritePortable(blobSpan, info, positions.AsSpan(0, tokenCount), startToken, destination);
                    }

                    return true;
                }
            }
            finally
            {
                ArrayPool<int>.Shared.Return(positions);
            }
        }
        finally
        {
            _context.MemorySequenceRemove(scratch, -1, -1);
        }
    }

    /// <inheritdoc />
    public bool TryWriteKv(int startToken, int tokenCount, ReadOnlySpan<byte> payload)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (tokenCount <= 0 || payload.Length != Format.PayloadLength(tokenCount))
        {
            return false;
        }

        var scratch = ScratchSequence;
        try
        {
            fixed (byte* source = payload)
            {
                byte* blob;
                nuint length;
                if (Layout == LlamaChunkLayout.StateBlob)
                {
                    var positions = ArrayPool<int>.Shared.Rent(tokenCount);
                    try
                    {
                        if (!LlamaStateBlob.TryParse(payload, out var info, positions) || !Matches(info, tokenCount) ||
                            !IsRange(positions.AsSpan(0, tokenCount), startToken, out var sorted) || !sorted)
                        {
                            return false;
                        }

                        blob = source;
                        length = (nuint)info.Length;
                    }
                    finally
                    {
                        ArrayPool<int>.Shared.Return(positions);
                    }
                }
                else
                {
                    length = (nuint)LlamaStateBlob.BlobLength(Shape, tokenCount);
                    blob = EnsureScratch(length);
                    AssembleBlob(payload, tokenCount, startToken, new Span<byte>(blob, (int)length));
                }

                if (_context.SetState(blob, length, scratch) != length)
                {
                    return false;
                }
            }

            if (_context.MemorySequenceMinPosition(scratch) != startToken ||
                _context.MemorySequenceMaxPosition(scratch) != startToken + tokenCount - 1)
            {
                return false;
            }

            _context.MemorySequenceCopy(scratch, Sequence, -1, -1);
            return true;
        }
        finally
        {
            _context.MemorySequenceRemove(scratch, -1, -1);
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        if (_scratch != null)
        {
            NativeMemory.AlignedFree(_scratch);
            _scratch = null;
        }
    }

    private bool Matches(in LlamaStateBlob.BlobInfo info, int cells) => info.Cells == cells && info.Shape == Shape;

    private static bool IsRange(ReadOnlySpan<int> positions, int start, out bool sorted)
    {
        sorted = true;
        var n = positions.Length;
        var seen = ArrayPool<bool>.Shared.Rent(n);
        try
        {
            Array.Clear(seen, 0, n);
            for (var i = 0; i < n; i++)
            {
                var p = positions[i] - start;
                if ((uint)p >= (uint)n || seen[p])
                {
                    return false;
                }

                seen[p] = true;
                sorted &= p == i;
            }

            return true;
        }
        finally
        {
            ArrayPool<bool>.Shared.Return(seen);
        }
    }

    private byte* EnsureScratch(nuint size)
    {
        if (_scratchCapacity < size)
        {
            if (_scratch != null)
            {
                NativeMemory.AlignedFree(_scratch);
                _scratch = null;
                _scratchCapacity = 0;
            }

            var capacity = (size + 4095) & ~(nuint)4095;
            _scratch = (byte*)NativeMemory.AlignedAlloc(capacity, 4096);
            _scratchCapacity = capacity;
        }

        return _scratch;
    }

    // Offsets of layer l's rows in a blob of `cells` cells (both K and V layer headers are 12 bytes).
    private long KData(in LlamaStateBlob.BlobInfo info, int l) => info.KOffset + ((long)l * (12 + ((long)info.Cells * Shape.KRowBytes))) + 12;

    private long VData(in LlamaStateBlob.BlobInfo info, int l) => info.VOffset + ((long)l * (12 + ((long)info.Cells * Shape.VRowBytes))) + 12;

    /// <summary>Writes the portable payload of the cells in <paramref name="blob"/>, ordered by position.</summary>
    private void WritePortable(ReadOnlySpan<byte> blob, in LlamaStateBlob.BlobInfo info, ReadOnlySpan<int> positions, int start,
        Span<byte> destination)
    {
        int n = info.Cells, k = Shape.KRowBytes, v = Shape.VRowBytes;
        var order = CellOrder(positions, start);
        try
        {
            long o = 0;
            for (var l = 0; l < Shape.Layers; l++)
            {
                CopyRows(blob.Slice((int)KData(info, l), n * k), destination.Slice((int)o, n * k), k, order.AsSpan(0, n));
                o += (long)n * k;
                CopyV(blob.Slice((int)VData(info, l), n * v), destination.Slice((int)o, n * v), order.AsSpan(0, n));
                o += (long)n * v;
            }
        }
        finally
        {
            ArrayPool<int>.Shared.Return(order);
        }
    }

    /// <summary>Writes a one-chunk blob in position order (from a blob whose cells are out of order), zero-padded.</summary>
    private void WriteBlob(ReadOnlySpan<byte> blob, in LlamaStateBlob.BlobInfo info, ReadOnlySpan<int> positions, int start, Span<byte> destination)
    {
        int n = info.Cells, k = Shape.KRowBytes, v = Shape.VRowBytes;
        var order = CellOrder(positions, start);
        try
        {
            var o = LlamaStateBlob.WriteHeader(destination, Shape, start, n);
            for (var l = 0; l < Shape.Layers; l++)
            {
                o = LlamaStateBlob.WriteKLayerHeader(destination, o, Shape);
                CopyRows(blob.Slice((int)KData(info, l), n * k), destination.Slice(o, n * k), k, order.AsSpan(0, n));
                o += n * k;
            }

            for (var l = 0; l < Shape.Layers; l++)
            {
                o = LlamaStateBlob.WriteVLayerHeader(destination, o, Shape);
                CopyV(blob.Slice((int)VData(info, l), n * v), destination.Slice(o, n * v), order.AsSpan(0, n));
                o += n * v;
            }

            destination[o..].Clear();
        }
        finally
        {
            ArrayPool<int>.Shared.Return(order);
        }
    }

    /// <summary>Builds the one-chunk blob of a portable payload (per layer K rows then V).</summary>
    private void AssembleBlob(ReadOnlySpan<byte> payload, int n, int start, Span<byte> blob)
    {
        int k = Shape.KRowBytes, v = Shape.VRowBytes;
        var o = LlamaStateBlob.WriteHeader(blob, Shape, start, n);
        var layerBytes = (long)n * (k + v);
        for (var l = 0; l < Shape.Layers; l++)
        {
            o = LlamaStateBlob.WriteKLayerHeader(blob, o, Shape);
            payload.Slice((int)(l * layerBytes), n * k).CopyTo(blob[o..]);
            o += n * k;
        }

        for (var l = 0; l < Shape.Layers; l++)
        {
            o = LlamaStateBlob.WriteVLayerHeader(blob, o, Shape);
            payload.Slice((int)((l * layerBytes) + ((long)n * k)), n * v).CopyTo(blob[o..]);
            o += n * v;
        }
    }

    /// <summary>order[i] = index of the cell holding position start + i.</summary>
    private static int[] CellOrder(ReadOnlySpan<int> positions, int start)
    {
        var order = ArrayPool<int>.Shared.Rent(positions.Length);
        for (var cell = 0; cell < positions.Length; cell++)
        {
            order[positions[cell] - start] = cell;
        }

        return order;
    }

    private static void CopyRows(ReadOnlySpan<byte> source, Span<byte> destination, int rowBytes, ReadOnlySpan<int> order)
    {
        if (IsIdentity(order))
        {
            source.CopyTo(destination);
            return;
        }

        for (var i = 0; i < order.Length; i++)
        {
            source.Slice(order[i] * rowBytes, rowBytes).CopyTo(destination.Slice(i * rowBytes, rowBytes));
        }
    }

    private void CopyV(ReadOnlySpan<byte> source, Span<byte> destination, ReadOnlySpan<int> order)
    {
        if (!Shape.VTransposed)
        {
            CopyRows(source, destination, Shape.VRowBytes, order);
            return;
        }

        if (IsIdentity(order))
        {
            source.CopyTo(destination);
            return;
        }

        // [dim][cell] -> [dim][token]
        int n = order.Length, el = Shape.VElementBytes, dims = Shape.VRowBytes / el;
        for (var d = 0; d < dims; d++)
        {
            var src = source.Slice(d * n * el, n * el);
            var dst = destination.Slice(d * n * el, n * el);
            for (var i = 0; i < n; i++)
            {
                src.Slice(order[i] * el, el).CopyTo(dst.Slice(i * el, el));
            }
        }
    }

    private static bool IsIdentity(ReadOnlySpan<int> order)
    {
        for (var i = 0; i < order.Length; i++)
        {
            if (order[i] != i)
            {
                return false;
            }
        }

        return true;
    }
}
