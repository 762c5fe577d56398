using System.Diagnostics;
using System.IO.Hashing;
using System.Runtime.CompilerServices;
using LMCacheSharp.Core.Codecs;
using LMCacheSharp.Core.Events;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Metrics;
using Microsoft.Win32.SafeHandles;

namespace LMCacheSharp.Core.Storage;

/// <summary>What a <see cref="DiskTier"/> found in its directory when it opened.</summary>
/// <param name="Recovered">Chunk files whose header checked out, now in the index.</param>
/// <param name="Discarded">Chunk files deleted because their header, name or length was wrong (each counted as a corrupt chunk).</param>
/// <param name="TempFilesRemoved">Partial files left by a writer that did not finish (a killed process), deleted.</param>
/// <param name="EvictedOverCapacity">Recovered chunks evicted because the directory held more than the capacity.</param>
/// <param name="Elapsed">Time the scan took.</param>
public readonly record struct DiskTierScan(int Recovered, int Discarded, int TempFilesRemoved, int EvictedOverCapacity, TimeSpan Elapsed);

/// <summary>
/// The local disk tier: one file per chunk, so eviction is an unlink and no compaction is ever needed (chunks are large,
/// 0.1-10 MiB, so the per-file cost is small). A file is <c>DIR/xx/&lt;64-hex key&gt;.kv</c> (xx: the key's first byte,
/// keeping directories small, created on first use): a 4 KiB block holding the 128-byte <see cref="ChunkEnvelope"/> header (zero-padded), then
/// the payload as the tier's codec encoded it. The payload starts 4 KiB into the file so that O_DIRECT reads land straight in
/// a pooled chunk buffer, with no copy. Writes go to a temporary name in the same directory and are renamed into place, so a
/// reader never sees a partial file; temporary files left by a killed writer are deleted when the tier opens. When it opens,
/// the tier reads every file's header to rebuild its index (least recently used first, by file time), so a restarted
/// process finds its cache warm. Capacity is in bytes (4 KiB blocks), least recently used chunks are evicted; a hit
/// refreshes the file's time so the order survives restarts. Every hit is verified (header, key, lengths, checksum of the
/// stored bytes, decoding): a corrupt, truncated, foreign or old-version file is a miss, is deleted and is counted in
/// <c>lmcache.num_corrupt_chunks</c>; I/O errors are misses too. Never an exception for bad data, never wrong KV.
/// Reads allocate no managed memory of payload size: payloads go into buffers rented from the <see cref="KvBufferPool"/>.
/// One process at a time owns a directory (a lock file). Thread-safe; <see cref="StorageManager"/> writes it in the
/// background through its bounded queue. The server can store opaque serialized envelopes through
/// <see cref="PutEnvelope"/> and <see cref="GetEnvelope"/>.
/// </summary>
public sealed class DiskTier : IStorageTier
{
    /// <summary>Size of the header block at the start of every file.</summary>
    public const int HeaderBlockSize = 4096;

    /// <summary>Extension of chunk files.</summary>
    public const string ChunkFileExtension = ".kv";

    private const string TempFileExtension = ".tmp";
    private const string LockFileName = ".lmcache-disk.lock";

    private readonly Lock _lock = new();
    private readonly Dictionary<ChunkHash, Entry> _entries = [];
    private readonly HashSet<ChunkHash> _writing = [];
    private readonly HashSet<ChunkHash> _deleting = []; // forgotten by the index, file not yet unlinked: writes refused
    private readonly KvBufferPool _pool;
    private readonly CacheMetrics? _metrics;
    private readonly IKvCodec _codec;
    private readonly bool _fsync;
    private readonly FileStream _lockFile;
    private readonly LruList<Entry> _lru = new(); // head: most recently used; tail: the next victim
    private readonly BlockingIoPool _io;
    private long _usedBytes;
    private long _tempCounter;
    private bool _disposed;

    /// <summary>Opens (or creates) the cache directory, takes its lock and rebuilds the index from the files there.</summary>
    /// <param name="options">Directory, capacity, codec, O_DIRECT and fsync.</param>
    /// <param name="pool">Where chunk buffers for reads come from.</param>
    /// <param name="metrics">Where corrupt chunks, evictions and errors are counted, or null.</param>
    /// <exception cref="IOException">The directory cannot be created, or another process (or tier) is using it.</exception>
    public DiskTier(DiskTierOptions options, KvBufferPool pool, CacheMetrics? metrics = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(pool);
        options.Validate();
        Root = Path.GetFullPath(options.Directory);
        CapacityBytes = options.CapacityBytes;
        _codec = options.Codec;
        _fsync = options.Fsync;
        _pool = pool;
        _metrics = metrics;
        System.IO.Directory.CreateDirectory(Root);
        try
        {
            // FileShare.None takes an exclusive flock on Unix: a second tier over the same directory fails here.
            _lockFile = new FileStream(Path.Join(Root, LockFileName), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        }
        catch (IOException e)
        {
            throw new IOException($"The disk cache directory '{Root}' is in use by another process or tier ({e.Message}).", e);
        }

        try
        {
            DirectIo = options.DirectIo && options.DirectIoProbe(Root);
            StartupScan = Scan();
        }
        catch
        {
            _lockFile.Dispose();
            throw;
        }

        _io = new BlockingIoPool("lmcache-disk-io", options.IoThreads);
    }

    /// <summary>Opens the disk tier that <paramref name="options"/> configures (<c>local_disk</c> and friends).</summary>
    public static DiskTier Create(Configuration.LMCacheOptions options, KvBufferPool pool, CacheMetrics? metrics = null) =>
        new(DiskTierOptions.FromLMCacheOptions(options), pool, metrics);

    /// <inheritdoc />
    public string Name => "disk";

    /// <inheritdoc />
    public StorageTierKind Kind => StorageTierKind.Disk;

    /// <summary>The cache directory (full path).</summary>
    public string Root { get; }

    /// <summary>Capacity in bytes.</summary>
    public long CapacityBytes { get; }

    /// <summary>The codec payloads are written with (files written with another registered codec are still read).</summary>
    public IKvCodec Codec => _codec;

    /// <summary>Whether O_DIRECT is in use (asked for, and accepted by the filesystem).</summary>
    public bool DirectIo { get; }

    /// <summary>What the tier found when it opened.</summary>
    public DiskTierScan StartupScan { get; }

    /// <summary>Bytes held (file sizes rounded up to 4 KiB blocks, including writes in progress).</summary>
    public long UsedBytes
    {
        get
        {
            lock (_lock)
            {
                return _usedBytes;
            }
        }
    }

    /// <summary>Chunks held.</summary>
    public int Count
    {
        get
        {
            lock (_lock)
            {
                return _entries.Count;
            }
        }
    }

    /// <summary>Whether <paramref name="key"/> is held (does not refresh it).</summary>
    public bool Contains(ChunkHash key)
    {
        lock (_lock)
        {
            return _entries.ContainsKey(key);
        }
    }

    /// <summary>The path of the file that holds (or would hold) <paramref name="key"/>.</summary>
    public string PathOf(ChunkHash key)
    {
        var hex = key.ToString();
        return Path.Join(Root, hex.AsSpan(0, 2), hex + ChunkFileExtension);
    }

    /// <summary>Synchronous <see cref="CountPrefixAsync"/>.</summary>
    public int CountPrefix(ReadOnlySpan<ChunkHash> keys)
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var n = 0;
            while (n < keys.Length && _entries.ContainsKey(keys[n]))
            {
                n++;
            }

            return n;
        }
    }

    /// <summary>Synchronous <see cref="GetAsync"/>: the verified, decoded chunk with one reference for the caller, or null.</summary>
    public KvChunk? TryGet(ChunkHash key)
    {
        Entry? entry;
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (!_entries.TryGetValue(key, out entry))
            {
                return null;
            }

            _lru.MoveToHead(entry);
        }

        var path = PathOf(key);
        KvChunk? chunk = null;
        var status = ChunkReadStatus.Truncated;
        var ioFailed = false;
        try
        {
            using var handle = DiskFile.OpenRead(path, DirectIo);
            status = entry.Codec == KvCodecId.Raw && entry.FileLength - HeaderBlockSize == entry.RawLength
                ? ReadRaw(handle, key, entry, out chunk)
                : ReadEncoded(handle, key, entry, out chunk);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            ioFailed = true; // missing (deleted behind our back) or unreadable
        }

        if (status == ChunkReadStatus.Ok)
        {
            Touch(path);
            if (entry.Lineage is { } lineage && !chunk!.IsSealed)
            {
                chunk.Lineage = lineage; // its place in its prompt travels on: a promotion into memory reports it
            }

            return chunk;
        }

        chunk?.Release();
        lock (_lock)
        {
            if (!_disposed && (!_entries.TryGetValue(key, out var current) || current != entry))
            {
                return null; // evicted, removed or replaced while we read: a plain miss, nothing is wrong with the disk
            }
        }

        if (ioFailed)
        {
            _metrics?.TierError(Name);
        }
        else
        {
            _metrics?.CorruptChunk(Name);
        }

        Discard(key, entry); // the file is dropped like a corrupt one
        return null;
    }

    /// <summary>
    /// Synchronous <see cref="PutAsync"/>: encodes and writes <paramref name="chunk"/> (temporary file, then rename), evicting
    /// least recently used chunks to make room. False when the chunk is larger than the capacity, the codec cannot encode
    /// it (a lossy codec on already-quantized KV), the key's file is being deleted at that moment, or the write failed
    /// (counted in <c>lmcache.num_tier_errors</c>). File deletes and renames run outside the tier's lock.
    /// </summary>
    public bool Put(KvChunk chunk)
    {
        ArgumentNullException.ThrowIfNull(chunk);
        var key = chunk.Key;
        var raw = _codec.Id == KvCodecId.Raw;
        long maxFileLength = HeaderBlockSize + (raw ? chunk.Length : _codec.MaxEncodedLength(chunk.Length, chunk.Format));
        if (maxFileLength - HeaderBlockSize > ChunkEnvelope.MaxPayloadLength)
        {
            return false;
        }

        // Reserve the largest size the file can have, so the directory never exceeds the capacity; corrected after encoding.
        var reserved = BlockRound(maxFileLength);
        if (!TryBeginWrite(key, reserved, out var refreshed))
        {
            return refreshed;
        }

        var committed = false;
        var temp = "";
        KvChunk? scratch = null;
        try
        {
            var path = PathOf(key);
            temp = $"{path}.{Environment.ProcessId}.{Interlocked.Increment(ref _tempCounter)}{TempFileExtension}";
            System.IO.Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            scratch = _pool.Rent((int)(raw ? HeaderBlockSize : maxFileLength));
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
                    encodedLength = _codec.Encode(chunk.Span, chunk.Format, buffer[HeaderBlockSize..]);
                }
                catch (NotSupportedException)
                {
                    return false;
                }

                encodedChecksum = XxHash3.HashToUInt64(buffer.Slice(HeaderBlockSize, encodedLength));
            }

            buffer[..HeaderBlockSize].Clear();
            ChunkEnvelope.WriteHeader(new ChunkEnvelopeHeader(_codec.Id, chunk.Format, chunk.TokenCount, chunk.Length, encodedLength,
                chunk.Checksum, encodedChecksum, key), buffer);
            // The chunk's place in its prompt goes into the rest of the header block (token-exact reuse after a restart).
            var lineage = chunk.Lineage is { } l && l.Tokens.Length == chunk.TokenCount && l.TryWrite(buffer[ChunkEnvelope.HeaderSize..HeaderBlockSize]) ? l : null;
            var fileLength = HeaderBlockSize + (long)encodedLength;
            using (var handle = DiskFile.CreateNew(temp, DirectIo))
            {
                if (raw)
                {
                    DiskFile.WriteFully(handle, buffer[..HeaderBlockSize], 0);
                    var payload = DirectIo ? FullSpan(chunk)[..(int)BlockRound(chunk.Length)] : chunk.Span;
                    DiskFile.WriteFully(handle, payload, HeaderBlockSize);
                }
                else
                {
                    DiskFile.WriteFully(handle, buffer[..(int)(DirectIo ? BlockRound(fileLength) : fileLength)], 0);
                }

                if (DirectIo && BlockRound(fileLength) != fileLength)
                {
                    RandomAccess.SetLength(handle, fileLength);
                }

                if (_fsync)
                {
                    DiskFile.Sync(handle);
                }
            }

            committed = CommitWrite(key, temp, path, new Entry(key, _codec.Id, fileLength, chunk.Length, encodedChecksum) { Lineage = lineage }, reserved);
            return committed;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            _metrics?.TierError(Name);
            return false;
        }
        finally
        {
            scratch?.Release();
            if (!committed)
            {
                AbortWrite(key, reserved, temp);
            }
        }
    }

    /// <summary>
    /// Stores a serialized envelope (<see cref="ChunkEnvelope"/> header and encoded payload, as the remote tier sends it) as
    /// it is, without decoding it: the header and the payload checksum are verified first. For the cache server's
    /// persistence. False when the bytes are not a valid envelope for <paramref name="key"/>, too large, or the write failed.
    /// </summary>
    /// <param name="key">The chunk key (the envelope's header must name it).</param>
    /// <param name="envelope">Header and encoded payload.</param>
    /// <param name="replace">False (the tier's rule: a key names one chunk): when the key is stored, it is only marked as
    /// used. True (a store's PUT semantics): a different envelope stored under the key (another codec or payload) is
    /// replaced; the same envelope is only marked as used, not rewritten.</param>
    internal bool PutEnvelope(ChunkHash key, ReadOnlySpan<byte> envelope, bool replace = false)
    {
        if (ChunkEnvelope.TryReadHeader(envelope, out var header) != ChunkReadStatus.Ok || header.Key != key ||
            envelope.Length != ChunkEnvelope.HeaderSize + (long)header.EncodedLength ||
            XxHash3.HashToUInt64(envelope[ChunkEnvelope.HeaderSize..]) != header.EncodedChecksum)
        {
            return false;
        }

        var fileLength = HeaderBlockSize + (long)header.EncodedLength;
        var reserved = BlockRound(fileLength);
        if (!TryBeginWrite(key, reserved, out var refreshed, replace ? header : null))
        {
            return refreshed;
        }

        var committed = false;
        var temp = "";
        try
        {
            var path = PathOf(key);
            temp = $"{path}.{Environment.ProcessId}.{Interlocked.Increment(ref _tempCounter)}{TempFileExtension}";
            System.IO.Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            Span<byte> block = stackalloc byte[HeaderBlockSize];
            block.Clear();
            envelope[..ChunkEnvelope.HeaderSize].CopyTo(block);
            using (var handle = DiskFile.CreateNew(temp, direct: false))
            {
                DiskFile.WriteFully(handle, block, 0);
                DiskFile.WriteFully(handle, envelope[ChunkEnvelope.HeaderSize..], HeaderBlockSize);
                if (_fsync)
                {
                    DiskFile.Sync(handle);
                }
            }

            committed = CommitWrite(key, temp, path, new Entry(key, header.Codec, fileLength, header.RawLength, header.EncodedChecksum), reserved);
            return committed;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            _metrics?.TierError(Name);
            return false;
        }
        finally
        {
            if (!committed)
            {
                AbortWrite(key, reserved, temp);
            }
        }
    }

    /// <summary>
    /// The serialized envelope stored under <paramref name="key"/> (header then encoded payload, not decoded), in a buffer
    /// rented from the pool with one reference for the caller (its <see cref="KvChunk.Key"/> set, its checksum field not), or
    /// null. Header and payload checksum are verified; a bad file is a miss, deleted and counted. For the cache server's
    /// persistence.
    /// </summary>
    internal KvChunk? GetEnvelope(ChunkHash key)
    {
        Entry? entry;
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (!_entries.TryGetValue(key, out entry))
            {
                return null;
            }

            _lru.MoveToHead(entry);
        }

        var path = PathOf(key);
        KvChunk? result = null;
        var ok = false;
        try
        {
            using var handle = DiskFile.OpenRead(path, direct: false);
            Span<byte> header = stackalloc byte[ChunkEnvelope.HeaderSize];
            var encodedLength = entry.FileLength - HeaderBlockSize;
            if (DiskFile.ReadFully(handle, header, 0) == header.Length && encodedLength <= ChunkEnvelope.MaxPayloadLength &&
                CheckHeader(header, key, entry, out var parsed))
            {
                result = _pool.Rent(ChunkEnvelope.HeaderSize + (int)encodedLength);
                header.CopyTo(result.Span);
                var payload = result.Span[ChunkEnvelope.HeaderSize..];
                ok = DiskFile.ReadFully(handle, payload, HeaderBlockSize) == payload.Length &&
                     RandomAccess.GetLength(handle) == entry.FileLength &&
                     XxHash3.HashToUInt64(payload) == parsed.EncodedChecksum;
                result.Key = key;
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            _metrics?.TierError(Name);
        }

        if (ok)
        {
            Touch(path);
            return result;
        }

        result?.Release();
        _metrics?.CorruptChunk(Name);
        Discard(key, entry);
        return null;
    }

    /// <summary>Synchronous <see cref="RemoveAsync"/>.</summary>
    public bool Remove(ChunkHash key)
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (!_entries.TryGetValue(key, out var entry))
            {
                return false;
            }

            ForgetLocked(entry);
        }

        Unlink(key);
        return true;
    }

    /// <summary>Synchronous <see cref="ClearAsync"/>: deletes every chunk file the tier holds.</summary>
    public void Clear()
    {
        var keys = new List<ChunkHash>();
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            while (_lru.Tail is { } tail)
            {
                keys.Add(tail.Key);
                ForgetLocked(tail);
            }
        }

        Unlink(keys);
    }

    /// <summary>Keys from most to least recently used (diagnostics and tests).</summary>
    public IReadOnlyList<ChunkHash> KeysByRecency()
    {
        lock (_lock)
        {
            var keys = new List<ChunkHash>(_entries.Count);
            for (var e = _lru.Head; e is not null; e = e.Next)
            {
                keys.Add(e.Key);
            }

            return keys;
        }
    }

    /// <inheritdoc />
    public ValueTask<int> CountPrefixAsync(ReadOnlyMemory<ChunkHash> keys, CancellationToken cancellationToken = default) =>
        ValueTask.FromResult(CountPrefix(keys.Span));

    /// <inheritdoc />
    /// <remarks>The read runs on the tier's own I/O threads (<see cref="DiskTierOptions.IoThreads"/>), never on the caller's.</remarks>
    public ValueTask<KvChunk?> GetAsync(ChunkHash key, CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        lock (_lock)
        {
            if (!_disposed && !_entries.ContainsKey(key))
            {
                return ValueTask.FromResult<KvChunk?>(null); // a miss needs no I/O
            }
        }

        return new ValueTask<KvChunk?>(_io.RunAsync(() => TryGet(key), cancellationToken));
    }

    /// <inheritdoc />
    /// <remarks>The write runs on the tier's own I/O threads.</remarks>
    public async ValueTask<bool> PutAsync(KvChunk chunk, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(chunk);
        chunk.AddRef(); // the caller's reference may go before an I/O thread runs the write
        var started = new StrongBox<bool>();
        try
        {
            return await _io.RunAsync(() =>
            {
                started.Value = true;
                try
                {
                    return Put(chunk);
                }
                finally
                {
                    chunk.Release();
                }
            }, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            if (!started.Value)
            {
                chunk.Release(); // cancelled or refused before it ran
            }
        }
    }

    /// <inheritdoc />
    /// <remarks>The delete runs on the tier's own I/O threads.</remarks>
    public ValueTask<bool> RemoveAsync(ChunkHash key, CancellationToken cancellationToken = default) =>
        new(_io.RunAsync(() => Remove(key), cancellationToken));

    /// <inheritdoc />
    public ValueTask ClearAsync(CancellationToken cancellationToken = default)
    {
        Clear();
        return ValueTask.CompletedTask;
    }

    /// <summary>The chunks whose files hold their lineage (parent and token ids): the tail index is rebuilt from these at start.</summary>
    public IReadOnlyList<(ChunkHash Key, ChunkLineage Lineage)> GetLineages()
    {
        lock (_lock)
        {
            return [.. _entries.Values.Where(e => e.Lineage is not null).Select(e => (e.Key, e.Lineage!))];
        }
    }

    /// <inheritdoc />
    public StorageTierStats GetStats()
    {
        lock (_lock)
        {
            return new StorageTierStats(_entries.Count, _usedBytes, CapacityBytes);
        }
    }

    /// <summary>Releases the directory lock. Files stay for the next process; a write still in progress is abandoned.</summary>
    public ValueTask DisposeAsync()
    {
        lock (_lock)
        {
            if (_disposed)
            {
                return ValueTask.CompletedTask;
            }

            _disposed = true;
            _entries.Clear();
            _lru.Clear();
        }

        _io.Dispose();
        _lockFile.Dispose();
        return ValueTask.CompletedTask;
    }

    /// <summary>File changes <see cref="FileSystemHook"/> sees.</summary>
    internal enum FileSystemChange
    {
        Delete,
        Rename,
    }

    /// <summary>
    /// Where stores and removals are reported (set by the <see cref="StorageManager"/> that owns the tier), or null. Raised
    /// under the tier's lock when the index changes. Chunks recovered by the startup scan are not reported.
    /// </summary>
    internal KvEventRelay? Events { get; set; }

    /// <summary>Tests: called just before a chunk file is deleted or a temp file renamed into place (never under the lock).</summary>
    internal Action<FileSystemChange, ChunkHash>? FileSystemHook { get; set; }

    private static long BlockRound(long length) => (length + HeaderBlockSize - 1) / HeaderBlockSize * HeaderBlockSize;

    private static unsafe Span<byte> FullSpan(KvChunk chunk) => new((void*)chunk.Pointer, chunk.Capacity);

    private static void Touch(string path)
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

    // The raw codec: the payload is read straight into the chunk that is handed out, no copy, then hashed. With O_DIRECT,
    // header block and payload come in one vectored read (one device request). (Reading buffered in 1 MiB pieces hashed
    // while still in the CPU cache measured slower than one read and one hash pass.)
    private ChunkReadStatus ReadRaw(SafeFileHandle handle, ChunkHash key, Entry entry, out KvChunk? chunk)
    {
        chunk = null;
        var block = _pool.Rent(HeaderBlockSize);
        var result = _pool.Rent(entry.RawLength);
        try
        {
            ulong checksum;
            ChunkEnvelopeHeader header;
            if (DirectIo)
            {
                var payload = FullSpan(result)[..(int)BlockRound(entry.RawLength)];
                var read = DiskFile.ReadFully(handle, FullSpan(block), payload, 0);
                if (read != entry.FileLength)
                {
                    return ChunkReadStatus.Truncated;
                }

                if (!CheckHeader(block.Span[..ChunkEnvelope.HeaderSize], key, entry, out header) || header.Codec != KvCodecId.Raw ||
                    header.RawLength != entry.RawLength)
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

                if (!CheckHeader(headerSpan, key, entry, out header) || header.Codec != KvCodecId.Raw || header.RawLength != entry.RawLength)
                {
                    return ChunkReadStatus.HeaderCorrupt;
                }

                if (DiskFile.ReadFully(handle, result.Span, HeaderBlockSize) != entry.RawLength)
                {
                    return ChunkReadStatus.Truncated;
                }

                checksum = XxHash3.HashToUInt64(result.Span);
            }

            if (RandomAccess.GetLength(handle) != entry.FileLength)
            {
                return ChunkReadStatus.LengthMismatch;
            }

            if (checksum != header.EncodedChecksum)
            {
                return ChunkReadStatus.ChecksumMismatch;
            }

            result.Key = key;
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
    private ChunkReadStatus ReadEncoded(SafeFileHandle handle, ChunkHash key, Entry entry, out KvChunk? chunk)
    {
        chunk = null;
        if (entry.FileLength - HeaderBlockSize > ChunkEnvelope.MaxPayloadLength)
        {
            return ChunkReadStatus.LengthMismatch;
        }

        var fileLength = (int)entry.FileLength;
        var scratch = _pool.Rent(fileLength);
        try
        {
            var target = DirectIo ? FullSpan(scratch)[..(int)BlockRound(fileLength)] : scratch.Span;
            var read = DiskFile.ReadFully(handle, target, 0);
            if (read != fileLength || RandomAccess.GetLength(handle) != fileLength)
            {
                return ChunkReadStatus.Truncated;
            }

            var bytes = scratch.Span;
            var start = HeaderBlockSize - ChunkEnvelope.HeaderSize;
            bytes[..ChunkEnvelope.HeaderSize].CopyTo(bytes[start..]);
            return ChunkEnvelope.TryDeserialize(bytes[start..], key, null, _pool, out chunk);
        }
        finally
        {
            scratch.Release();
        }
    }

    private static bool CheckHeader(ReadOnlySpan<byte> bytes, ChunkHash key, Entry entry, out ChunkEnvelopeHeader header) =>
        ChunkEnvelope.TryReadHeader(bytes, out header) == ChunkReadStatus.Ok && header.Key == key &&
        HeaderBlockSize + (long)header.EncodedLength == entry.FileLength && KvCodecs.Find(header.Codec) is not null;

    // Reserves room for a write of key; false (with refreshed = true) when the key is stored or being written already.
    /// <summary>
    /// Reserves room for a new file of <paramref name="key"/>. False with <paramref name="refreshed"/> set when the key is
    /// already stored (marked as used instead) or being written; when <paramref name="replacing"/> is given, a stored file
    /// whose codec, length or payload checksum differ from that header is dropped and the write goes ahead.
    /// </summary>
    private bool TryBeginWrite(ChunkHash key, long reserved, out bool refreshed, ChunkEnvelopeHeader? replacing = null)
    {
        refreshed = false;
        if (reserved > CapacityBytes)
        {
            return false;
        }

        List<ChunkHash>? evicted = null;
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_entries.TryGetValue(key, out var existing))
            {
                if (replacing is not { } h || (existing.Codec == h.Codec && existing.EncodedChecksum == h.EncodedChecksum &&
                    existing.FileLength == HeaderBlockSize + (long)h.EncodedLength))
                {
                    _lru.MoveToHead(existing);
                    refreshed = true;
                    return false;
                }

                // Replaced: the new file is renamed over the old one (AbortWrite deletes the old one if the write fails).
                UnindexLocked(existing);
            }

            if (_deleting.Contains(key))
            {
                return false; // its file is being unlinked: a file renamed in now could be the one unlinked
            }

            if (!_writing.Add(key))
            {
                refreshed = true;
                return false;
            }

            while (_usedBytes + reserved > CapacityBytes && _lru.Tail is { } victim)
            {
                (evicted ??= []).Add(victim.Key);
                ForgetLocked(victim);
            }

            _usedBytes += reserved;
        }

        if (evicted is not null)
        {
            Unlink(evicted);
            _metrics?.Evicted(Name, evicted.Count);
        }

        return true;
    }

    // The rename runs outside the lock: the key is in _writing, so no other write, delete or index entry touches its path.
    private bool CommitWrite(ChunkHash key, string temp, string path, Entry entry, long reserved)
    {
        FileSystemHook?.Invoke(FileSystemChange.Rename, key);
        File.Move(temp, path, overwrite: true);
        lock (_lock)
        {
            if (_disposed)
            {
                return true; // the file is in place for the next process
            }

            _writing.Remove(key);
            _usedBytes += entry.BlockBytes - reserved;
            _entries[key] = entry;
            _lru.LinkAtHead(entry);
            Events?.Stored(KvMedium.Disk, key, entry.Lineage);
        }

        if (_fsync)
        {
            DiskFile.SyncDirectory(Path.GetDirectoryName(path)!);
        }

        return true;
    }

    // Still holding the key in _writing: deletes the temp file and whatever file is under the key's name (a replaced
    // file that is no longer indexed, which must not come back at the next start), then releases the reservation.
    private void AbortWrite(ChunkHash key, long reserved, string temp)
    {
        if (temp.Length > 0)
        {
            TryDelete(temp);
        }

        FileSystemHook?.Invoke(FileSystemChange.Delete, key);
        TryDelete(PathOf(key));

        lock (_lock)
        {
            _writing.Remove(key);
            _usedBytes -= reserved;
        }
    }

    // Drops a bad entry, unless it was replaced (a fresh write of the same key) in the meantime.
    private void Discard(ChunkHash key, Entry entry)
    {
        lock (_lock)
        {
            if (_disposed || !_entries.TryGetValue(key, out var current) || !ReferenceEquals(current, entry))
            {
                return;
            }

            ForgetLocked(entry);
        }

        Unlink(key);
    }

    private void UnindexLocked(Entry entry)
    {
        _entries.Remove(entry.Key);
        _lru.Unlink(entry);
        _usedBytes -= entry.BlockBytes;
        Events?.Removed(KvMedium.Disk, entry.Key);
    }

    // Under the lock: forgets the entry and marks its key as being deleted until Unlink has removed the file, so that a
    // write of the same key cannot rename a fresh file in between and have it unlinked. Unlink runs outside the lock.
    // Meanwhile the directory may hold the file on top of the bytes the index counts.
    private void ForgetLocked(Entry entry)
    {
        UnindexLocked(entry);
        _deleting.Add(entry.Key);
    }

    private void Unlink(ChunkHash key)
    {
        UnlinkFile(key);
        lock (_lock)
        {
            _deleting.Remove(key);
        }
    }

    private void Unlink(List<ChunkHash> keys)
    {
        foreach (var key in keys)
        {
            UnlinkFile(key);
        }

        lock (_lock)
        {
            foreach (var key in keys)
            {
                _deleting.Remove(key);
            }
        }
    }

    private void UnlinkFile(ChunkHash key)
    {
        try
        {
            FileSystemHook?.Invoke(FileSystemChange.Delete, key);
            File.Delete(PathOf(key));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            _metrics?.TierError(Name);
        }
    }

    private DiskTierScan Scan()
    {
        var start = Stopwatch.GetTimestamp();
        var found = new List<(Entry Entry, DateTime Time)>();
        int discarded = 0, temps = 0;
        var header = new byte[HeaderBlockSize]; // the envelope header and the lineage after it
        foreach (var dir in new DirectoryInfo(Root).EnumerateDirectories())
        {
            if (dir.Name.Length != 2 || !IsLowerHex(dir.Name))
            {
                continue;
            }

            foreach (var file in dir.EnumerateFiles())
            {
                var name = file.Name;
                if (name.EndsWith(TempFileExtension, StringComparison.Ordinal))
                {
                    temps += TryDelete(file.FullName) ? 1 : 0;
                    continue;
                }

                if (!name.EndsWith(ChunkFileExtension, StringComparison.Ordinal) || name.Length != 64 + ChunkFileExtension.Length ||
                    !TryParseKey(name.AsSpan(0, 64), out var key) || !name.StartsWith(dir.Name, StringComparison.Ordinal))
                {
                    continue; // not a name this tier writes: not ours to judge or delete
                }

                Entry? entry = null;
                try
                {
                    using var handle = File.OpenHandle(file.FullName, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
                    var length = RandomAccess.GetLength(handle);
                    if (DiskFile.ReadFully(handle, header, 0) == header.Length &&
                        ChunkEnvelope.TryReadHeader(header.AsSpan(0, ChunkEnvelope.HeaderSize), out var h) == ChunkReadStatus.Ok && h.Key == key &&
                        length == HeaderBlockSize + (long)h.EncodedLength && KvCodecs.Find(h.Codec) is not null)
                    {
                        // A lineage that fails its own checks is only a lost tail candidate: the chunk itself is fine.
                        entry = new Entry(key, h.Codec, length, h.RawLength, h.EncodedChecksum)
                        {
                            Lineage = ChunkLineage.TryRead(header.AsSpan(ChunkEnvelope.HeaderSize), h.TokenCount),
                        };
                    }
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                }

                if (entry is null)
                {
                    _metrics?.CorruptChunk(Name);
                    discarded++;
                    TryDelete(file.FullName);
                    continue;
                }

                found.Add((entry, file.LastWriteTimeUtc));
            }
        }

        // Oldest first, so the most recently written or hit file ends at the head.
        found.Sort((a, b) => a.Time.CompareTo(b.Time));
        var evicted = new List<ChunkHash>();
        lock (_lock)
        {
            foreach (var (entry, _) in found)
            {
                _entries[entry.Key] = entry;
                _lru.LinkAtHead(entry);
                _usedBytes += entry.BlockBytes;
            }

            while (_usedBytes > CapacityBytes && _lru.Tail is { } victim)
            {
                evicted.Add(victim.Key);
                ForgetLocked(victim);
            }
        }

        Unlink(evicted);
        if (evicted.Count > 0)
        {
            _metrics?.Evicted(Name, evicted.Count);
        }

        return new DiskTierScan(found.Count - evicted.Count, discarded, temps, evicted.Count, Stopwatch.GetElapsedTime(start));
    }

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

    private static bool TryDelete(string path)
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

    private sealed class Entry(ChunkHash key, KvCodecId codec, long fileLength, int rawLength, ulong encodedChecksum) : LruNode<Entry>
    {
        public ChunkHash Key { get; } = key;

        public KvCodecId Codec { get; } = codec;

        public long FileLength { get; } = fileLength;

        public int RawLength { get; } = rawLength;

        /// <summary>XxHash3 of the encoded payload: with the codec and length, tells whether an envelope is this file's.</summary>
        public ulong EncodedChecksum { get; } = encodedChecksum;

        /// <summary>The chunk's parent and token ids, when the file holds them.</summary>
        public ChunkLineage? Lineage { get; init; }

        public long BlockBytes => BlockRound(FileLength);
    }
}
