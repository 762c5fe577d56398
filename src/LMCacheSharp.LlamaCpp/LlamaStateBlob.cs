using System.Buffers.Binary;

namespace LMCacheSharp.LlamaCpp;

/// <summary>
/// Reads and writes llama.cpp's per-sequence state blob (<c>llama_state_seq_get_data</c> / <c>set_data</c>) as measured
/// in DESIGN section 6, little-endian:
/// <code>
/// u32 magic 0xAF143CD8 | i32 seq_id | u32 n_stream | per stream: u32 cell_count, then (when cells) cell_count x
/// {i32 pos, u32 n_seq_id, i32 seq_id[n]}, u32 v_trans, u32 n_layer, per layer {i32 k_type, u64 k_row, cells x row},
/// per layer V: v_trans = 0 {i32 type, u64 row, cells x row}; v_trans = 1 {i32 type, u32 el, u32 n_embd_v, n_embd_v x cells x el}
/// </code>
/// There is no version field beyond the magic, so every field is checked and anything unexpected is a parse failure
/// (a cache miss), never KV.
/// </summary>
internal static class LlamaStateBlob
{
    public const uint Magic = 0xAF143CD8;

    /// <summary>Bytes before the per-stream data: magic, seq_id, n_stream.</summary>
    public const int PrefixBytes = 12;

    /// <summary>Size of a one-stream blob holding <paramref name="cells"/> cells of <paramref name="shape"/>.</summary>
    public static long BlobLength(LlamaKvShape shape, int cells) =>
        PrefixBytes + 4 + (12L * cells) + 8 + (24L * shape.Layers) + ((long)cells * shape.Layers * (shape.KRowBytes + shape.VRowBytes));

    /// <summary>
    /// Parses a blob that holds one sequence in stream 0 of a one-stream context. Returns false on any surprise. The
    /// cell positions are written to <paramref name="positions"/> (which must hold the cell count) when it is large enough.
    /// </summary>
    public static bool TryParse(ReadOnlySpan<byte> blob, out BlobInfo info, Span<int> positions = default) =>
        TryParse(blob, out info, positions, anyStreams: false);

    /// <summary>
    /// <see cref="TryParse(ReadOnlySpan{byte}, out BlobInfo, Span{int})"/>; with <paramref name="anyStreams"/> also a blob of a
    /// context with per-sequence KV streams (<c>KVUnified = false</c>): n_stream streams of which at most one holds cells
    /// (a sequence lives in its own stream). <see cref="BlobInfo.Streams"/> tells how many there were.
    /// </summary>
    public static bool TryParse(ReadOnlySpan<byte> blob, out BlobInfo info, Span<int> positions, bool anyStreams)
    {
        info = default;
        var r = new Reader(blob);
        if (!r.U32(out var magic) || magic != Magic || !r.U32(out _) || !r.U32(out var nStream) || nStream == 0 || nStream > MaxStreams ||
            (nStream != 1 && !anyStreams))
        {
            return false;
        }

        var found = false;
        for (var s = 0; s < nStream; s++)
        {
            if (!r.U32(out var cellCount))
            {
                return false;
            }

            if (cellCount == 0)
            {
                continue;
            }

            if (found || !TryParseStream(ref r, cellCount, out info, positions))
            {
                return false; // a sequence's cells in two streams: not a layout this connector knows
            }

            found = true;
        }

        if (!found)
        {
            info = new BlobInfo(0, 0, false, 0, 0, 0, 0, 0, 0, 0, r.Offset, r.Offset);
        }

        info = info with { Length = r.Offset, Streams = (int)nStream };
        return true;
    }

    /// <summary>The most KV streams a blob may name (llama.cpp's LLAMA_MAX_SEQ is 256).</summary>
    public const int MaxStreams = 256;

    private static bool TryParseStream(ref Reader r, uint cellCount, out BlobInfo info, Span<int> positions)
    {
        info = default;
        if (cellCount > int.MaxValue / 16)
        {
            return false;
        }

        var cellsOffset = r.Offset;
        var sorted = true;
        var previous = int.MinValue;
        for (var i = 0; i < cellCount; i++)
        {
            if (!r.U32(out var pos) || !r.U32(out var nSeq) || nSeq != 1 || !r.U32(out _))
            {
                return false;
            }

            if (i < positions.Length)
            {
                positions[i] = (int)pos;
            }

            sorted &= (int)pos > previous;
            previous = (int)pos;
        }

        if (!r.U32(out var vTrans) || vTrans > 1 || !r.U32(out var nLayer) || nLayer is 0 or > 4096)
        {
            return false;
        }

        var kOffset = r.Offset;
        uint kType = 0, vType = 0;
        ulong kRow = 0, vRow = 0;
        uint vElement = 0, vEmbd = 0;
        for (var l = 0; l < nLayer; l++)
        {
            if (!r.U32(out var type) || !r.U64(out var row) || row is 0 or > 1 << 24 || (l > 0 && (type != kType || row != kRow)))
            {
                return false; // layers of different shapes are not supported
            }

            kType = type;
            kRow = row;
            if (!r.Skip(row * cellCount))
            {
                return false;
            }
        }

        var vOffset = r.Offset;
        for (var l = 0; l < nLayer; l++)
        {
            if (vTrans == 0)
            {
                if (!r.U32(out var type) || !r.U64(out var row) || row is 0 or > 1 << 24 || (l > 0 && (type != vType || row != vRow)))
                {
                    return false;
                }

                vType = type;
                vRow = row;
                if (!r.Skip(row * cellCount))
                {
                    return false;
                }
            }
            else
            {
                if (!r.U32(out var type) || !r.U32(out var el) || !r.U32(out var embd) || el is 0 or > 16 || embd is 0 or > 1 << 20 ||
                    (l > 0 && (type != vType || el != vElement || embd != vEmbd)))
                {
                    return false;
                }

                vType = type;
                vElement = el;
                vEmbd = embd;
                vRow = (ulong)el * embd;
                if (!r.Skip(vRow * cellCount))
                {
                    return false;
                }
            }
        }

        info = new BlobInfo((int)cellCount, (int)nLayer, vTrans == 1, (int)kType, (int)kRow, (int)vType, (int)vRow, (int)vElement,
            sorted ? 1 : 0, cellsOffset, kOffset, r.Offset)
        { VOffset = vOffset };
        return true;
    }

    /// <summary>
    /// Writes the header and cell list of a blob of <paramref name="cells"/> cells at positions start.. in its first stream
    /// (of <paramref name="streams"/>: the others follow the data as empty streams, see <see cref="WriteEmptyStreams"/>).
    /// </summary>
    public static int WriteHeader(Span<byte> destination, LlamaKvShape shape, int startPos, int cells, int streams = 1)
    {
        var o = 0;
        Put32(destination, ref o, Magic);
        Put32(destination, ref o, 0); // seq_id: ignored by set_data
        Put32(destination, ref o, (uint)streams); // n_stream
        Put32(destination, ref o, (uint)cells);
        for (var i = 0; i < cells; i++)
        {
            Put32(destination, ref o, (uint)(startPos + i));
            Put32(destination, ref o, 1);
            Put32(destination, ref o, 0);
        }

        Put32(destination, ref o, shape.VTransposed ? 1u : 0u);
        Put32(destination, ref o, (uint)shape.Layers);
        return o;
    }

    /// <summary>Writes the cell counts (0) of the streams after the first; returns the offset after them.</summary>
    public static int WriteEmptyStreams(Span<byte> destination, int offset, int streams)
    {
        for (var i = 1; i < streams; i++)
        {
            Put32(destination, ref offset, 0);
        }

        return offset;
    }

    /// <summary>Writes a K layer header (type, row bytes) at <paramref name="offset"/>; returns the offset after it.</summary>
    public static int WriteKLayerHeader(Span<byte> destination, int offset, LlamaKvShape shape)
    {
        Put32(destination, ref offset, (uint)shape.KType);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[offset..], (ulong)shape.KRowBytes);
        return offset + 8;
    }

    /// <summary>Writes a V layer header at <paramref name="offset"/>; returns the offset after it.</summary>
    public static int WriteVLayerHeader(Span<byte> destination, int offset, LlamaKvShape shape)
    {
        Put32(destination, ref offset, (uint)shape.VType);
        if (shape.VTransposed)
        {
            Put32(destination, ref offset, (uint)shape.VElementBytes);
            Put32(destination, ref offset, (uint)(shape.VRowBytes / shape.VElementBytes));
            return offset;
        }

        BinaryPrimitives.WriteUInt64LittleEndian(destination[offset..], (ulong)shape.VRowBytes);
        return offset + 8;
    }

    private static void Put32(Span<byte> destination, ref int offset, uint value)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(destination[offset..], value);
        offset += 4;
    }

    /// <summary>What <see cref="TryParse(ReadOnlySpan{byte}, out BlobInfo, Span{int}, bool)"/> found.</summary>
    /// <param name="Cells">Cell count.</param>
    /// <param name="Layers">Layer count.</param>
    /// <param name="VTransposed">V kept dimension-major (no flash attention).</param>
    /// <param name="KType">ggml type of K.</param>
    /// <param name="KRowBytes">Bytes of one K row.</param>
    /// <param name="VType">ggml type of V.</param>
    /// <param name="VRowBytes">Bytes of V for one token in one layer.</param>
    /// <param name="VElementBytes">Bytes of one V element (transposed V only).</param>
    /// <param name="Sorted">1 when the cells are in strictly ascending position order.</param>
    /// <param name="CellsOffset">Offset of the cell list.</param>
    /// <param name="KOffset">Offset of the first K layer header.</param>
    /// <param name="Length">Bytes the blob occupies.</param>
    internal readonly record struct BlobInfo(int Cells, int Layers, bool VTransposed, int KType, int KRowBytes, int VType, int VRowBytes,
        int VElementBytes, int Sorted, int CellsOffset, int KOffset, int Length)
    {
        /// <summary>Offset of the first V layer header.</summary>
        public int VOffset { get; init; }

        /// <summary>KV streams the blob lists (1 for a unified KV cache; n_seq_max with per-sequence streams).</summary>
        public int Streams { get; init; } = 1;

        /// <summary>The shape these fields describe.</summary>
        public LlamaKvShape Shape => new(Layers, KType, KRowBytes, VType, VRowBytes, VTransposed, VElementBytes);
    }

    private ref struct Reader(ReadOnlySpan<byte> data)
    {
        private readonly ReadOnlySpan<byte> _data = data;

        public int Offset { get; private set; }

        public bool U32(out uint value)
        {
            if (_data.Length - Offset < 4)
            {
                value = 0;
                return false;
            }

            value = BinaryPrimitives.ReadUInt32LittleEndian(_data[Offset..]);
            Offset += 4;
            return true;
        }

        public bool U64(out ulong value)
        {
            if (_data.Length - Offset < 8)
            {
                value = 0;
                return false;
            }

            value = BinaryPrimitives.ReadUInt64LittleEndian(_data[Offset..]);
            Offset += 8;
            return true;
        }

        public bool Skip(ulong count)
        {
            if ((ulong)(_data.Length - Offset) < count)
            {
                return false;
            }

            Offset += (int)count;
            return true;
        }
    }
}
