using System.Buffers;
using System.Runtime.InteropServices;
using LLama.Native;
using LMCacheSharp.Core.Engine;
using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.LlamaCpp;

/// <summary>
/// The cache engine's KV source and sink over one sequence of a llama.cpp context, in one of two modes.
/// <list type="bullet">
/// <item>With a scratch sequence (a unified KV cache): chunks move through the scratch sequence. A store copies the
/// chunk's position range into it (<c>llama_memory_seq_cp</c> shares cells, no data moves) and serializes only it; a
/// restore loads the chunk into it with <c>llama_state_seq_set_data</c>, shares its cells with the target and drops the
/// scratch id.</item>
/// <item>Without one (per-sequence KV streams, <c>KVUnified = false</c>, where cells cannot be shared across streams and
/// <c>set_data</c> replaces a sequence's cells): a store serializes the whole sequence once, at its first chunk, and cuts
/// every chunk from that snapshot (dropped at <see cref="CompleteRead"/>); a restore collects the chunks and writes them
/// with one <c>llama_state_seq_set_data</c> into the target at <see cref="CompleteWrite"/>.</item>
/// </list>
/// With <see cref="LlamaChunkLayout.StateBlob"/> a chunk is a one-stream blob itself, so the scratch mode copies nothing
/// beyond llama.cpp's own copy. Every blob is checked (magic, stream count, cell count and positions, layer count, types,
/// row sizes) and any surprise makes the call return false: the engine then stores nothing / restores no further.
/// Not thread-safe: use it on the inference thread, between decodes.
/// </summary>
public sealed unsafe class LlamaKvConnector : IKvSource, IKvSink, IDisposable
{
    private readonly SafeLLamaContextHandle _context;
    private byte* _scratch;
    private nuint _scratchCapacity;
    private bool _disposed;

    // Per-sequence mode: the store's snapshot of the whole sequence, and the restore's chunks waiting for CompleteWrite.
    private byte* _snapshot;
    private nuint _snapshotCapacity;
    private bool _haveSnapshot;
    private LlamaStateBlob.BlobInfo _snapshotInfo;
    private int[] _cellOfPosition = [];
    private readonly List<(byte[] Rows, int Tokens)> _pending = [];
    private int _pendingTokens;
    private LLamaSeqId _sequence;

    /// <summary>Creates a connector.</summary>
    /// <param name="context">The context.</param>
    /// <param name="shape">The context's KV shape (see <see cref="LlamaKvCache.TryProbeShape(SafeLLamaContextHandle, LLamaSeqId, out LlamaKvShape, out int, out string)"/>).</param>
    /// <param name="layout">How chunk payloads are laid out.</param>
    /// <param name="scratchSequence">A sequence id the connector may clear and use at will (a unified KV cache), or null for
    /// the per-sequence mode (no scratch: whole-sequence state calls).</param>
    /// <param name="streams">KV streams of the context: 1 for a unified KV cache, n_seq_max with per-sequence streams
    /// (the per-sequence mode's blobs list them all).</param>
    public LlamaKvConnector(SafeLLamaContextHandle context, LlamaKvShape shape, LlamaChunkLayout layout, LLamaSeqId? scratchSequence, int streams = 1)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentOutOfRangeException.ThrowIfLessThan(streams, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(streams, LlamaStateBlob.MaxStreams);
        if (scratchSequence is not null && streams != 1)
        {
            throw new ArgumentException("a scratch sequence needs a unified KV cache (one stream)", nameof(scratchSequence));
        }

        _context = context;
        Shape = shape;
        Layout = layout;
        Format = shape.ToFormat(layout);
        ScratchSequence = scratchSequence;
        Streams = streams;
    }

    /// <summary>The context's KV shape.</summary>
    public LlamaKvShape Shape { get; }

    /// <summary>The chunk layout.</summary>
    public LlamaChunkLayout Layout { get; }

    /// <summary>The chunk format.</summary>
    public KvFormat Format { get; }

    /// <summary>The scratch sequence, or null in the per-sequence mode.</summary>
    public LLamaSeqId? ScratchSequence { get; }

    /// <summary>KV streams of the context.</summary>
    public int Streams { get; }

    /// <summary>The sequence read from and written to.</summary>
    public LLamaSeqId Sequence
    {
        get => _sequence;
        set
        {
            _sequence = value;
            _haveSnapshot = false;
            ClearPending();
        }
    }

    /// <inheritdoc />
    public bool TryReadKv(int startToken, int tokenCount, Span<byte> destination)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (tokenCount <= 0 || destination.Length != Format.PayloadLength(tokenCount))
        {
            return false;
        }

        if (ScratchSequence is not { } scratch)
        {
            return TryReadFromSnapshot(startToken, tokenCount, destination);
        }

        var expected = LlamaStateBlob.BlobLength(Shape, tokenCount);
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
                        var order = CellOrder(positions.AsSpan(0, tokenCount), startToken);
                        WriteBlob(blobSpan, info, order.AsSpan(0, tokenCount), startToken, destination);
                        ArrayPool<int>.Shared.Return(order);
                    }
                    else
                    {
                        var order = CellOrder(positions.AsSpan(0, tokenCount), startToken);
                        WritePortable(blobSpan, info, order.AsSpan(0, tokenCount), destination);
                        ArrayPool<int>.Shared.Return(order);
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

        if (ScratchSequence is not { } scratch)
        {
            return TryCollect(startToken, tokenCount, payload);
        }

        try
        {
            fixed (byte* source = payload)
            {
                byte* blob;
                nuint length;
                if (Layout == LlamaChunkLayout.StateBlob)
                {
                    if (!TryCheckChunkBlob(payload, startToken, tokenCount, out var info))
                    {
                        return false;
                    }

                    blob = source;
                    length = (nuint)info.Length;
                }
                else
                {
                    length = (nuint)LlamaStateBlob.BlobLength(Shape, tokenCount);
                    blob = EnsureScratch(length);
                    AssembleChunkBlob(payload, tokenCount, startToken, new Span<byte>(blob, (int)length));
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

        if (_snapshot != null)
        {
            NativeMemory.AlignedFree(_snapshot);
            _snapshot = null;
        }

        ClearPending();
    }

    private bool Matches(in LlamaStateBlob.BlobInfo info, int cells) => info.Cells == cells && info.Shape == Shape;

    // A chunk in the state-blob layout: a one-stream blob of this shape holding positions start.. in order.
    private bool TryCheckChunkBlob(ReadOnlySpan<byte> payload, int startToken, int tokenCount, out LlamaStateBlob.BlobInfo info)
    {
        var positions = ArrayPool<int>.Shared.Rent(tokenCount);
        try
        {
            return LlamaStateBlob.TryParse(payload, out info, positions) && Matches(info, tokenCount) &&
                IsRange(positions.AsSpan(0, tokenCount), startToken, out var sorted) && sorted;
        }
        finally
        {
            ArrayPool<int>.Shared.Return(positions);
        }
    }

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

    private byte* EnsureScratch(nuint size) => Ensure(ref _scratch, ref _scratchCapacity, size);

    // A page-aligned native buffer of at least size bytes, grown (its contents dropped) when too small.
    private static byte* Ensure(ref byte* buffer, ref nuint capacity, nuint size)
    {
        if (capacity < size)
        {
            if (buffer != null)
            {
                NativeMemory.AlignedFree(buffer);
                buffer = null;
                capacity = 0;
            }

            var rounded = (size + 4095) & ~(nuint)4095;
            buffer = (byte*)NativeMemory.AlignedAlloc(rounded, 4096);
            capacity = rounded;
        }

        return buffer;
    }

    // Offsets of layer l's rows in a blob of `cells` cells (both K and V layer headers are 12 bytes).
    private long KData(in LlamaStateBlob.BlobInfo info, int l) => info.KOffset + ((long)l * (12 + ((long)info.Cells * Shape.KRowBytes))) + 12;

    private long VData(in LlamaStateBlob.BlobInfo info, int l) => info.VOffset + ((long)l * (12 + ((long)info.Cells * Shape.VRowBytes))) + 12;

    /// <summary>
    /// Per-sequence mode: cuts a chunk from the snapshot of the whole sequence, taking the snapshot at the first call after
    /// <see cref="CompleteRead"/> (or a change of <see cref="Sequence"/>).
    /// </summary>
    private bool TryReadFromSnapshot(int startToken, int tokenCount, Span<byte> destination)
    {
        if (!_haveSnapshot && !TryTakeSnapshot())
        {
            return false;
        }

        if (startToken < 0 || (long)startToken + tokenCount > _cellOfPosition.Length)
        {
            return false;
        }

        var order = ArrayPool<int>.Shared.Rent(tokenCount);
        try
        {
            for (var i = 0; i < tokenCount; i++)
            {
                if ((order[i] = _cellOfPosition[startToken + i]) < 0)
                {
                    return false; // a position the sequence does not hold
                }
            }

            var blob = new ReadOnlySpan<byte>(_snapshot, _snapshotInfo.Length);
            if (Layout == LlamaChunkLayout.StateBlob)
            {
                WriteBlob(blob, _snapshotInfo, order.AsSpan(0, tokenCount), startToken, destination);
            }
            else
            {
                WritePortable(blob, _snapshotInfo, order.AsSpan(0, tokenCount), destination);
            }

            return true;
        }
        finally
        {
            ArrayPool<int>.Shared.Return(order);
        }
    }

    private bool TryTakeSnapshot()
    {
        var size = _context.GetStateSize(Sequence);
        if (size == 0 || size > int.MaxValue)
        {
            return false;
        }

        Ensure(ref _snapshot, ref _snapshotCapacity, size);
        if (_context.GetState(_snapshot, size, Sequence) != size)
        {
            return false;
        }

        var blob = new ReadOnlySpan<byte>(_snapshot, (int)size);
        if (!LlamaStateBlob.TryParse(blob, out var info, default, anyStreams: true) || info.Streams != Streams || info.Length != (int)size ||
            (info.Cells > 0 && info.Shape != Shape))
        {
            return false;
        }

        var positions = ArrayPool<int>.Shared.Rent(Math.Max(1, info.Cells));
        try
        {
            if (!LlamaStateBlob.TryParse(blob, out info, positions, anyStreams: true))
            {
                return false;
            }

            var span = positions.AsSpan(0, info.Cells);
            var max = -1;
            foreach (var p in span)
            {
                if (p < 0)
                {
                    return false;
                }

                max = Math.Max(max, p);
            }

            if (_cellOfPosition.Length != max + 1)
            {
                _cellOfPosition = new int[max + 1];
            }

            Array.Fill(_cellOfPosition, -1);
            for (var cell = 0; cell < span.Length; cell++)
            {
                if (_cellOfPosition[span[cell]] >= 0)
                {
                    return false; // a position held twice
                }

                _cellOfPosition[span[cell]] = cell;
            }
        }
        finally
        {
            ArrayPool<int>.Shared.Return(positions);
        }

        _snapshotInfo = info;
        _haveSnapshot = true;
        return true;
    }

    /// <inheritdoc />
    /// <remarks>A whole-sequence snapshot over <see cref="KeptBufferBytes"/> is freed here, not kept for the next store.</remarks>
    public void CompleteRead()
    {
        _haveSnapshot = false;
        Shrink(ref _snapshot, ref _snapshotCapacity);
    }

    /// <summary>
    /// Per-sequence mode: the largest whole-sequence buffer (store snapshot, restore blob) kept between calls; a larger one
    /// (a long sequence of a large model: 64 KiB per token on the bench model) is freed after use. 64 MiB.
    /// </summary>
    public const long KeptBufferBytes = 64L << 20;

    private static void Shrink(ref byte* buffer, ref nuint capacity)
    {
        if (buffer != null && capacity > KeptBufferBytes)
        {
            NativeMemory.AlignedFree(buffer);
            buffer = null;
            capacity = 0;
        }
    }

    /// <summary>Per-sequence mode: checks a chunk and keeps its rows (portable order) until <see cref="CompleteWrite"/>.</summary>
    private bool TryCollect(int startToken, int tokenCount, ReadOnlySpan<byte> payload)
    {
        if (startToken == 0)
        {
            ClearPending(); // a new restore
        }

        if (startToken != _pendingTokens)
        {
            return false; // chunks come in token order, from 0
        }

        var rows = ArrayPool<byte>.Shared.Rent((int)Format.PayloadLength(tokenCount));
        var kept = false;
        try
        {
            var portable = rows.AsSpan(0, (int)Format.PayloadLength(tokenCount));
            if (Layout == LlamaChunkLayout.StateBlob)
            {
                if (!TryCheckChunkBlob(payload, startToken, tokenCount, out var info))
                {
                    return false;
                }

                var order = ArrayPool<int>.Shared.Rent(tokenCount);
                for (var c = 0; c < tokenCount; c++)
                {
                    order[c] = c; // checked: the cells are in position order
                }

                WritePortable(payload, info, order.AsSpan(0, tokenCount), portable);
                ArrayPool<int>.Shared.Return(order);
            }
            else
            {
                payload.CopyTo(portable);
            }

            _pending.Add((rows, tokenCount));
            _pendingTokens += tokenCount;
            kept = true;
            return true;
        }
        finally
        {
            if (!kept)
            {
                ArrayPool<byte>.Shared.Return(rows);
            }
        }
    }

    /// <inheritdoc />
    /// <remarks>Per-sequence mode: one <c>llama_state_seq_set_data</c> of every collected chunk (positions 0..n-1) into
    /// <see cref="Sequence"/>, which it replaces. The scratch mode wrote each chunk when it was given: true.</remarks>
    public bool CompleteWrite()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (ScratchSequence is not null)
        {
            return true;
        }

        try
        {
            var n = _pendingTokens;
            if (n == 0)
            {
                return false;
            }

            var length = (nuint)(LlamaStateBlob.BlobLength(Shape, n) + (4L * (Streams - 1)));
            var blob = EnsureScratch(length);
            var span = new Span<byte>(blob, (int)length);
            AssembleBlob(span, n);
            if (_context.SetState(blob, length, Sequence) != length)
            {
                return false;
            }

            return _context.MemorySequenceMinPosition(Sequence) == 0 && _context.MemorySequenceMaxPosition(Sequence) == n - 1;
        }
        finally
        {
            ClearPending();
            Shrink(ref _scratch, ref _scratchCapacity);
        }
    }

    // The blob of the collected chunks: cells at positions 0..n-1 in the first stream, the other streams empty.
    private void AssembleBlob(Span<byte> blob, int n)
    {
        int k = Shape.KRowBytes, v = Shape.VRowBytes;
        var o = LlamaStateBlob.WriteHeader(blob, Shape, 0, n, Streams);
        for (var l = 0; l < Shape.Layers; l++)
        {
            o = LlamaStateBlob.WriteKLayerHeader(blob, o, Shape);
            foreach (var (rows, tokens) in _pending)
            {
                rows.AsSpan((int)(l * (long)tokens * (k + v)), tokens * k).CopyTo(blob[o..]);
                o += tokens * k;
            }
        }

        for (var l = 0; l < Shape.Layers; l++)
        {
            o = LlamaStateBlob.WriteVLayerHeader(blob, o, Shape);
            if (!Shape.VTransposed)
            {
                foreach (var (rows, tokens) in _pending)
                {
                    rows.AsSpan((int)((l * (long)tokens * (k + v)) + ((long)tokens * k)), tokens * v).CopyTo(blob[o..]);
                    o += tokens * v;
                }

                continue;
            }

            // [dim][cell]: each dimension's row runs over every chunk's tokens in turn.
            int el = Shape.VElementBytes, dims = v / el;
            for (var d = 0; d < dims; d++)
            {
                foreach (var (rows, tokens) in _pending)
                {
                    var vStart = (l * (long)tokens * (k + v)) + ((long)tokens * k);
                    rows.AsSpan((int)(vStart + ((long)d * tokens * el)), tokens * el).CopyTo(blob[o..]);
                    o += tokens * el;
                }
            }
        }

        LlamaStateBlob.WriteEmptyStreams(blob, o, Streams);
    }

    /// <summary>Builds the one-chunk blob of a portable payload (per layer K rows then V).</summary>
    private void AssembleChunkBlob(ReadOnlySpan<byte> payload, int n, int start, Span<byte> blob)
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

    private void ClearPending()
    {
        foreach (var (rows, _) in _pending)
        {
            ArrayPool<byte>.Shared.Return(rows);
        }

        _pending.Clear();
        _pendingTokens = 0;
    }

    /// <summary>Writes the portable payload of the cells <paramref name="order"/> of <paramref name="blob"/> (in that order).</summary>
    private void WritePortable(ReadOnlySpan<byte> blob, in LlamaStateBlob.BlobInfo info, ReadOnlySpan<int> order, Span<byte> destination)
    {
        int m = info.Cells, n = order.Length, k = Shape.KRowBytes, v = Shape.VRowBytes;
        long o = 0;
        for (var l = 0; l < Shape.Layers; l++)
        {
            CopyRows(blob.Slice((int)KData(info, l), m * k), destination.Slice((int)o, n * k), k, order);
            o += (long)n * k;
            CopyV(blob.Slice((int)VData(info, l), m * v), destination.Slice((int)o, n * v), m, order);
            o += (long)n * v;
        }
    }

    /// <summary>Writes a one-stream blob of the cells <paramref name="order"/> of <paramref name="blob"/> (positions start..), zero-padded.</summary>
    private void WriteBlob(ReadOnlySpan<byte> blob, in LlamaStateBlob.BlobInfo info, ReadOnlySpan<int> order, int start, Span<byte> destination)
    {
        int m = info.Cells, n = order.Length, k = Shape.KRowBytes, v = Shape.VRowBytes;
        var o = LlamaStateBlob.WriteHeader(destination, Shape, start, n);
        for (var l = 0; l < Shape.Layers; l++)
        {
            o = LlamaStateBlob.WriteKLayerHeader(destination, o, Shape);
            CopyRows(blob.Slice((int)KData(info, l), m * k), destination.Slice(o, n * k), k, order);
            o += n * k;
        }

        for (var l = 0; l < Shape.Layers; l++)
        {
            o = LlamaStateBlob.WriteVLayerHeader(destination, o, Shape);
            CopyV(blob.Slice((int)VData(info, l), m * v), destination.Slice(o, n * v), m, order);
            o += n * v;
        }

        destination[o..].Clear();
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

    // Rows order[0], order[1], ... of source (rowBytes each) into destination, one after the other.
    private static void CopyRows(ReadOnlySpan<byte> source, Span<byte> destination, int rowBytes, ReadOnlySpan<int> order)
    {
        if (IsRun(order))
        {
            source.Slice(order[0] * rowBytes, order.Length * rowBytes).CopyTo(destination);
            return;
        }

        for (var i = 0; i < order.Length; i++)
        {
            source.Slice(order[i] * rowBytes, rowBytes).CopyTo(destination.Slice(i * rowBytes, rowBytes));
        }
    }

    // V of the cells order[..] from a layer of sourceCells cells.
    private void CopyV(ReadOnlySpan<byte> source, Span<byte> destination, int sourceCells, ReadOnlySpan<int> order)
    {
        if (!Shape.VTransposed)
        {
            CopyRows(source, destination, Shape.VRowBytes, order);
            return;
        }

        // [dim][cell] -> [dim][token]
        int n = order.Length, el = Shape.VElementBytes, dims = Shape.VRowBytes / el;
        var run = IsRun(order);
        for (var d = 0; d < dims; d++)
        {
            var src = source.Slice(d * sourceCells * el, sourceCells * el);
            var dst = destination.Slice(d * n * el, n * el);
            if (run)
            {
                src.Slice(order[0] * el, n * el).CopyTo(dst);
                continue;
            }

            for (var i = 0; i < n; i++)
            {
                src.Slice(order[i] * el, el).CopyTo(dst.Slice(i * el, el));
            }
        }
    }

    // order is first, first + 1, ... (one contiguous run of cells).
    private static bool IsRun(ReadOnlySpan<int> order)
    {
        for (var i = 1; i < order.Length; i++)
        {
            if (order[i] != order[0] + i)
            {
                return false;
            }
        }

        return order.Length > 0;
    }
}
