using System.IO.Hashing;
using LMCacheSharp.Core.Codecs;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using Microsoft.Win32.SafeHandles;

namespace LMCacheSharp.Core.Storage;

/// <summary>
/// What the disk tier's index records of a chunk file: enough to tell, on every read, that the file is still the one
/// indexed, and to count its blocks.
/// </summary>
/// <param name="Key">The chunk key (the file's name and its header's key).</param>
/// <param name="Codec">The codec the payload was written with.</param>
/// <param name="FileLength">Bytes in the file: the header block and the encoded payload.</param>
/// <param name="RawLength">Bytes of the decoded payload.</param>
/// <param name="EncodedChecksum">XxHash3 of the encoded payload: with the codec and length, tells whether an envelope is this file's.</param>
internal readonly record struct DiskChunkRecord(ChunkHash Key, KvCodecId Codec, long FileLength, int RawLength, ulong EncodedChecksum)
{
    /// <summary>Bytes the file takes, in whole 4 KiB blocks (what the capacity counts).</summary>
    public long BlockBytes => DiskChunkFile.BlockRound(FileLength);

    /// <summary>The record of the file that holds the envelope <paramref name="header"/> describes.</summary>
    public static DiskChunkRecord Of(in ChunkEnvelopeHeader header) =>
        new(header.Key, header.Codec, DiskChunkFile.HeaderBlockSize + (long)header.EncodedLength, header.RawLength, header.EncodedChecksum);

    /// <summary>Whether <paramref name="other"/> describes the same stored bytes (codec, length and payload checksum).</summary>
    public bool SameFileAs(in DiskChunkRecord other) =>
        Codec == other.Codec && EncodedChecksum == other.EncodedChecksum && FileLength == other.FileLength;
}

/// <summary>
/// The disk tier's file format (version 1, the envelope's): one file per chunk, <c>DIR/xx/&lt;64-hex key&gt;.kv</c> (xx: the
/// key's first byte in lower-case hex, so directories stay small; created on first use). A file is a 4 KiB header block,
/// then the payload as the codec encoded it:
/// <code>
///   0     the 128-byte ChunkEnvelope header (magic, version, codec, format, lengths, checksums, key, header checksum)
///   128   the chunk's ChunkLineage when it has one (parent key, token ids, their own XxHash3), else zeros
///   ...   zeros up to 4096
///   4096  the encoded payload (EncodedLength bytes; the file ends there)
/// </code>
/// The payload starts 4 KiB into the file so that O_DIRECT reads land straight in a pooled chunk buffer, with no copy.
/// Files are written under a temporary name in the same directory (<c>&lt;name&gt;.&lt;pid&gt;.&lt;n&gt;.tmp</c>) and renamed into place,
/// so a reader never sees a partial file. A file's time is its recency: a hit refreshes it, and the start-up scan orders
/// the index by it. Every read is verified (header, key, lengths against the index's record, payload checksum,
/// decoding): anything else is a <see cref="ChunkReadStatus"/> other than <c>Ok</c>, never an exception and never wrong
/// KV. I/O errors are thrown (<see cref="IOException"/>, <see cref="UnauthorizedAccessException"/>) for the tier to count.
/// </summary>
internal static class DiskChunkFile
{
    /// <summary>Size of the header block at the start of every file.</summary>
    public const int HeaderBlockSize = 4096;

    /// <summary>Extension of chunk files.</summary>
    public const string Extension = ".kv";

    /// <summary>Extension of files being written (left behind only by a writer that did not finish).</summary>
    public const string TempExtension = ".tmp";

    private const int KeyHexLength = 2 * ChunkHash.Size;

    /// <summary>The path of the file that holds (or would hold) <paramref name="key"/> under <paramref name="root"/>.</summary>
    public static string PathOf(string root, ChunkHash key)
    {
        var hex = key.ToString();
        return Path.Join(root, hex.AsSpan(0, 2), hex + Extension);
    }

    /// <summary>A temporary name next to <paramref name="path"/>, unique in this process by <paramref name="sequence"/>.</summary>
    public static string TempPathOf(string path, long sequence) => $"{path}.{Environment.ProcessId}.{sequence}{TempExtension}";

    /// <summary>Whether <paramref name="name"/> is a directory name this format uses (two lower-case hex digits).</summary>
    public static bool IsShardDirectoryName(string name) => name.Length == 2 && IsLowerHex(name);

    /// <summary>Whether <paramref name="name"/> is a temporary file's name.</summary>
    public static bool IsTempFileName(string name) => name.EndsWith(TempExtension, StringComparison.Ordinal);

    /// <summary>
    /// The key of a chunk file named <paramref name="name"/> in the directory <paramref name="shard"/>; false for any name
    /// this format does not write (not ours to judge or delete).
    /// </summary>
    public static bool TryParseFileName(string shard, string name, out ChunkHash key)
    {
        key = default;
        return name.EndsWith(Extension, StringComparison.Ordinal) && name.Length == KeyHexLength + Extension.Length &&
            TryParseKey(name.AsSpan(0, KeyHexLength), out key) && name.StartsWith(shard, StringComparison.Ordinal);
    }

    /// <summary><paramref name="length"/> rounded up to whole header-block-sized (4 KiB) blocks.</summary>
    public static long BlockRound(long length) => (length + HeaderBlockSize - 1) / HeaderBlockSize * HeaderBlockSize;

    /// <summary>The largest file <paramref name="chunk"/> can make with <paramref name="codec"/>.</summary>
    public static long MaxFileLength(KvChunk chunk, IKvCodec codec) =>
        HeaderBlockSize + (codec.Id == KvCodecId.Raw ? chunk.Length : codec.MaxEncodedLength(chunk.Length, chunk.Format));

    /// <summary>
    /// Encodes <paramref name="chunk"/> and writes its file at <paramref name="temp"/> (a new file; its directory is
    /// created when absent), fsynced when asked. False, with nothing written, when the codec cannot encode it (a lossy codec
    /// on already-quantized KV). The chunk's lineage goes into the header block when it has one for its token count.
    /// </summary>
    /// <param name="temp">The temporary path (<see cref="TempPathOf"/>) to write.</param>
    /// <param name="chunk">The chunk; its length must fit <see cref="ChunkEnvelope.MaxPayloadLength"/>.</param>
    /// <param name="codec">How the payload is encoded.</param>
    /// <param name="pool">Where the scratch buffer for the header block and encoding comes from.</param>
    /// <param name="direct">O_DIRECT: the chunk's buffer is written whole blocks at a time, then the file cut to length.</param>
    /// <param name="fsync">fsync the file once written.</param>
    /// <param name="record">What the index records of the written file.</param>
    /// <param name="lineage">The lineage written, or null.</param>
    public static bool TryWrite(string temp, KvChunk chunk, IKvCodec codec, KvBufferPool pool, bool direct, bool fsync,
        out DiskChunkRecord record, out ChunkLineage? lineage)
    {
        record = default;
        lineage = null;
        var raw = codec.Id == KvCodecId.Raw;
        var maxFileLength = MaxFileLength(chunk, codec);
        Directory.CreateDirectory(Path.GetDirectoryName(temp)!);
        var scratch = pool.Rent((int)(raw ? HeaderBlockSize : maxFileLength));
        try
        {
            var buffer = FullSpan(scratch);
            int encodedLength;
            ulong encodedChecksum;
            if (raw)
            {
                encodedLength = chunk.Length;
                encodedChecksum = chunk.Checksum;
            }
            else
            {
                try
                {
                    encodedLength = codec.Encode(chunk.Span, chunk.Format, buffer[HeaderBlockSize..]);
                }
                catch (NotSupportedException)
                {
                    return false;
                }

                encodedChecksum = XxHash3.HashToUInt64(buffer.Slice(HeaderBlockSize, encodedLength));
            }

            buffer[..HeaderBlockSize].Clear();
            ChunkEnvelope.WriteHeader(new ChunkEnvelopeHeader(codec.Id, chunk.Format, chunk.TokenCount, chunk.Length, encodedLength,
                chunk.Checksum, encodedChecksum, chunk.Key), buffer);
            // The chunk's place in its prompt goes into the rest of the header block (token-exact reuse after a restart).
            lineage = chunk.Lineage is { } l && l.Tokens.Length == chunk.TokenCount && l.TryWrite(buffer[ChunkEnvelope.HeaderSize..HeaderBlockSize]) ? l : null;
            var fileLength = HeaderBlockSize + (long)encodedLength;
            using (var handle = DiskFile.CreateNew(temp, direct))
            {
                if (raw)
                {
                    DiskFile.WriteFully(handle, buffer[..HeaderBlockSize], 0);
                    var payload = direct ? FullSpan(chunk)[..(int)BlockRound(chunk.Length)] : chunk.Span;
                    DiskFile.WriteFully(handle, payload, HeaderBlockSize);
                }
                else
                {
                    DiskFile.WriteFully(handle, buffer[..(int)(direct ? BlockRound(fileLength) : fileLength)], 0);
                }

                if (direct && BlockRound(fileLength) != fileLength)
                {
                    RandomAccess.SetLength(handle, fileLength);
                }

                if (fsync)
                {
                    DiskFile.Sync(handle);
                }
            }

            record = new DiskChunkRecord(chunk.Key, codec.Id, fileLength, chunk.Length, encodedChecksum);
            return true;
        }
        finally
        {
            scratch.Release();
        }
    }

    /// <summary>
    /// Whether <paramref name="envelope"/> is a whole, valid serialized envelope of <paramref name="key"/> (header, length,
    /// payload checksum), as the cache server stores it without decoding.
    /// </summary>
    public static bool TryCheckEnvelope(ReadOnlySpan<byte> envelope, ChunkHash key, out ChunkEnvelopeHeader header) =>
        ChunkEnvelope.TryReadHeader(envelope, out header) == ChunkReadStatus.Ok && header.Key == key &&
        envelope.Length == ChunkEnvelope.HeaderSize + (long)header.EncodedLength &&
        XxHash3.HashToUInt64(envelope[ChunkEnvelope.HeaderSize..]) == header.EncodedChecksum;

    /// <summary>
    /// Writes the file of a checked envelope (<see cref="TryCheckEnvelope"/>) at <paramref name="temp"/>, buffered: its
    /// header in the header block (no lineage), its payload after. The directory is created when absent.
    /// </summary>
    public static void WriteEnvelope(string temp, ReadOnlySpan<byte> envelope, bool fsync)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(temp)!);
        Span<byte> block = stackalloc byte[HeaderBlockSize];
        block.Clear();
        envelope[..ChunkEnvelope.HeaderSize].CopyTo(block);
        using var handle = DiskFile.CreateNew(temp, direct: false);
        DiskFile.WriteFully(handle, block, 0);
        DiskFile.WriteFully(handle, envelope[ChunkEnvelope.HeaderSize..], HeaderBlockSize);
        if (fsync)
        {
            DiskFile.Sync(handle);
        }
    }

    /// <summary>Renames a written temporary file into place, replacing what is there (atomic within the directory).</summary>
    public static void Publish(string temp, string path) => File.Move(temp, path, overwrite: true);

    /// <summary>fsync of the directory <paramref name="path"/> is in, so a rename in it is durable. Best effort.</summary>
    public static void SyncDirectoryOf(string path) => DiskFile.SyncDirectory(Path.GetDirectoryName(path)!);

    /// <summary>
    /// Reads, verifies and decodes the file at <paramref name="path"/> against what the index recorded of it. Ok with the
    /// chunk (rented from <paramref name="pool"/>, one reference for the caller), or why not with null. The raw codec's
    /// payload is read straight into the chunk handed out; others are decoded into a fresh pooled chunk.
    /// </summary>
    /// <exception cref="IOException">The file is missing or unreadable.</exception>
    public static ChunkReadStatus Read(string path, in DiskChunkRecord expected, KvBufferPool pool, bool direct, out KvChunk? chunk)
    {
        using var handle = DiskFile.OpenRead(path, direct);
        return expected.Codec == KvCodecId.Raw && expected.FileLength - HeaderBlockSize == expected.RawLength
            ? ReadRaw(handle, expected, pool, direct, out chunk)
            : ReadEncoded(handle, expected, pool, direct, out chunk);
    }

    /// <summary>
    /// The serialized envelope in the file at <paramref name="path"/> (header then encoded payload, not decoded), checked
    /// against the index's record and its payload checksum, in a buffer rented from <paramref name="pool"/> with one
    /// reference for the caller (its <see cref="KvChunk.Key"/> set, its checksum field not); null for a bad file. Buffered.
    /// </summary>
    /// <exception cref="IOException">The file is missing or unreadable.</exception>
    public static KvChunk? ReadEnvelope(string path, in DiskChunkRecord expected, KvBufferPool pool)
    {
        using var handle = DiskFile.OpenRead(path, direct: false);
        Span<byte> header = stackalloc byte[ChunkEnvelope.HeaderSize];
        var encodedLength = expected.FileLength - HeaderBlockSize;
        if (DiskFile.ReadFully(handle, header, 0) != header.Length || encodedLength > ChunkEnvelope.MaxPayloadLength ||
            !CheckHeader(header, expected, out var parsed))
        {
            return null;
        }

        KvChunk? result = pool.Rent(ChunkEnvelope.HeaderSize + (int)encodedLength);
        try
        {
            header.CopyTo(result.Span);
            var payload = result.Span[ChunkEnvelope.HeaderSize..];
            if (DiskFile.ReadFully(handle, payload, HeaderBlockSize) != payload.Length || RandomAccess.GetLength(handle) != expected.FileLength ||
                XxHash3.HashToUInt64(payload) != parsed.EncodedChecksum)
            {
                return null;
            }

            result.Key = expected.Key;
            var envelope = result;
            result = null;
            return envelope;
        }
        finally
        {
            result?.Release();
        }
    }

    /// <summary>
    /// Reads the header block of the file at <paramref name="path"/>, named for <paramref name="key"/>, into
    /// <paramref name="block"/> (<see cref="HeaderBlockSize"/> bytes): true with its record when the header checks out (its
    /// own checksum, the key, the file's length, a known codec). The payload is not read: a damaged payload is found by the
    /// first read. A lineage that fails its own checks is only a lost tail candidate (null): the chunk itself is fine.
    /// </summary>
    /// <exception cref="IOException">The file is missing or unreadable.</exception>
    public static bool TryReadHeaderBlock(string path, ChunkHash key, Span<byte> block, out DiskChunkRecord record, out ChunkLineage? lineage)
    {
        record = default;
        lineage = null;
        using var handle = DiskFile.OpenRead(path, direct: false);
        var length = RandomAccess.GetLength(handle);
        if (DiskFile.ReadFully(handle, block, 0) != block.Length ||
            ChunkEnvelope.TryReadHeader(block[..ChunkEnvelope.HeaderSize], out var h) != ChunkReadStatus.Ok || h.Key != key ||
            length != HeaderBlockSize + (long)h.EncodedLength || KvCodecs.Find(h.Codec) is null)
        {
            return false;
        }

        record = new DiskChunkRecord(key, h.Codec, length, h.RawLength, h.EncodedChecksum);
        lineage = ChunkLineage.TryRead(block[ChunkEnvelope.HeaderSize..], h.TokenCount);
        return true;
    }

    /// <summary>Marks the file as just used (its time is the recency order across restarts). Best effort.</summary>
    public static void Touch(string path)
    {
        try
        {
            File.SetLastWriteTimeUtc(path, DateTime.UtcNow);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Only the recency order across restarts is at stake.
        }
    }

    /// <summary>Deletes <paramref name="path"/>; false when that failed (a missing file is no failure).</summary>
    public static bool TryDelete(string path)
    {
        try
        {
            File.Delete(path);
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    // The raw codec: the payload is read straight into the chunk that is handed out, no copy, then hashed. With O_DIRECT,
    // header block and payload come in one vectored read (one device request). (Reading buffered in 1 MiB pieces hashed
    // while still in the CPU cache measured slower than one read and one hash pass.)
    private static ChunkReadStatus ReadRaw(SafeFileHandle handle, in DiskChunkRecord expected, KvBufferPool pool, bool direct, out KvChunk? chunk)
    {
        chunk = null;
        var block = pool.Rent(HeaderBlockSize);
        var result = pool.Rent(expected.RawLength);
        try
        {
            ulong checksum;
            ChunkEnvelopeHeader header;
            if (direct)
            {
                var payload = FullSpan(result)[..(int)BlockRound(expected.RawLength)];
                var read = DiskFile.ReadFully(handle, FullSpan(block), payload, 0);
                if (read != expected.FileLength)
                {
                    return ChunkReadStatus.Truncated;
                }

                if (!CheckHeader(block.Span[..ChunkEnvelope.HeaderSize], expected, out header) || header.Codec != KvCodecId.Raw ||
                    header.RawLength != expected.RawLength)
                {
                    return ChunkReadStatus.HeaderCorrupt;
                }

                checksum = XxHash3.HashToUInt64(result.Span);
            }
            else
            {
                var headerSpan = block.Span[..ChunkEnvelope.HeaderSize];
                if (DiskFile.ReadFully(handle, headerSpan, 0) < ChunkEnvelope.HeaderSize)
                {
                    return ChunkReadStatus.Truncated;
                }

                if (!CheckHeader(headerSpan, expected, out header) || header.Codec != KvCodecId.Raw || header.RawLength != expected.RawLength)
                {
                    return ChunkReadStatus.HeaderCorrupt;
                }

                if (DiskFile.ReadFully(handle, result.Span, HeaderBlockSize) != expected.RawLength)
                {
                    return ChunkReadStatus.Truncated;
                }

                checksum = XxHash3.HashToUInt64(result.Span);
            }

            if (RandomAccess.GetLength(handle) != expected.FileLength)
            {
                return ChunkReadStatus.LengthMismatch;
            }

            if (checksum != header.EncodedChecksum)
            {
                return ChunkReadStatus.ChecksumMismatch;
            }

            result.Key = expected.Key;
            result.TokenCount = header.TokenCount;
            result.Format = header.Format;
            result.Checksum = header.EncodedChecksum;
            chunk = result;
            result = null;
            return ChunkReadStatus.Ok;
        }
        finally
        {
            block.Release();
            result?.Release();
        }
    }

    // Other codecs: the whole file is read into a scratch buffer (one read, O_DIRECT-friendly), the header is moved next to
    // the payload and ChunkEnvelope does the checks and the decoding into a fresh pooled chunk.
    private static ChunkReadStatus ReadEncoded(SafeFileHandle handle, in DiskChunkRecord expected, KvBufferPool pool, bool direct, out KvChunk? chunk)
    {
        chunk = null;
        if (expected.FileLength - HeaderBlockSize > ChunkEnvelope.MaxPayloadLength)
        {
            return ChunkReadStatus.LengthMismatch;
        }

        var fileLength = (int)expected.FileLength;
        var scratch = pool.Rent(fileLength);
        try
        {
            var target = direct ? FullSpan(scratch)[..(int)BlockRound(fileLength)] : scratch.Span;
            var read = DiskFile.ReadFully(handle, target, 0);
            if (read != fileLength || RandomAccess.GetLength(handle) != fileLength)
            {
                return ChunkReadStatus.Truncated;
            }

            var bytes = scratch.Span;
            var start = HeaderBlockSize - ChunkEnvelope.HeaderSize;
            bytes[..ChunkEnvelope.HeaderSize].CopyTo(bytes[start..]);
            return ChunkEnvelope.TryDeserialize(bytes[start..], expected.Key, null, pool, out chunk);
        }
        finally
        {
            scratch.Release();
        }
    }

    private static bool CheckHeader(ReadOnlySpan<byte> bytes, in DiskChunkRecord expected, out ChunkEnvelopeHeader header) =>
        ChunkEnvelope.TryReadHeader(bytes, out header) == ChunkReadStatus.Ok && header.Key == expected.Key &&
        HeaderBlockSize + (long)header.EncodedLength == expected.FileLength && KvCodecs.Find(header.Codec) is not null;

    private static unsafe Span<byte> FullSpan(KvChunk chunk) => new((void*)chunk.Pointer, chunk.Capacity);

    private static bool TryParseKey(ReadOnlySpan<char> hex, out ChunkHash key)
    {
        key = default;
        Span<byte> bytes = stackalloc byte[ChunkHash.Size];
        if (!IsLowerHex(hex) || Convert.FromHexString(hex, bytes, out _, out var written) != System.Buffers.OperationStatus.Done || written != ChunkHash.Size)
        {
            return false;
        }

        key = new ChunkHash(bytes);
        return true;
    }

    private static bool IsLowerHex(ReadOnlySpan<char> text)
    {
        foreach (var c in text)
        {
            if (!char.IsAsciiDigit(c) && !char.IsAsciiHexDigitLower(c))
            {
                return false;
            }
        }

        return true;
    }
}
