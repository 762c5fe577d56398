using System.Diagnostics;
using System.Runtime.CompilerServices;
using LMCacheSharp.Core.Codecs;
using LMCacheSharp.Core.Events;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Metrics;

namespace LMCacheSharp.Core.Storage;

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
/// <remarks>
/// Composed of the file format (<see cref="DiskChunkFile"/>: layout, names, verified reads, temp-file writes), the
/// in-memory index (<see cref="DiskChunkIndex"/>: LRU, capacity, reservations, keys being written or deleted) and the
/// start-up scan (<see cref="DiskTierRecovery"/>). This type holds the lock, runs the file operations outside it in the
/// order that keeps the directory and the index consistent, and puts the async API on its own I/O threads.
/// </remarks>
public sealed class DiskTier : IStorageTier
{
    /// <summary>Size of the header block at the start of every file.</summary>
    public const int HeaderBlockSize = DiskChunkFile.HeaderBlockSize;

    /// <summary>Extension of chunk files.</summary>
    public const string ChunkFileExtension = DiskChunkFile.Extension;

    private const string LockFileName = ".lmcache-disk.lock";

    private readonly Lock _lock = new();
    private readonly DiskChunkIndex _index;
    private readonly KvBufferPool _pool;
    private readonly CacheMetrics? _metrics;
    private readonly IKvCodec _codec;
    private readonly bool _fsync;
    private readonly FileStream _lockFile;
    private readonly BlockingIoPool _io;
    private long _tempCounter;
    private bool _disposed;

    /// <summary>Opens (or creates) the cache directory, takes its lock and rebuilds the index from the files there.</summary>
    /// <param name="options">Directory, capacity, codec, O_DIRECT, fsync and where the start-up scan reports progress.</param>
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
        _index = new DiskChunkIndex(CapacityBytes) { Removed = key => Events?.Removed(KvMedium.Disk, key) };
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
            StartupScan = Recover(options.ScanProgress);
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
                return _index.UsedBytes;
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
                return _index.Count;
            }
        }
    }

    /// <summary>Whether <paramref name="key"/> is held (does not refresh it).</summary>
    public bool Contains(ChunkHash key)
    {
        lock (_lock)
        {
            return _index.Contains(key);
        }
    }

    /// <summary>The path of the file that holds (or would hold) <paramref name="key"/>.</summary>
    public string PathOf(ChunkHash key) => DiskChunkFile.PathOf(Root, key);

    /// <summary>Synchronous <see cref="CountPrefixAsync"/>.</summary>
    public int CountPrefix(ReadOnlySpan<ChunkHash> keys)
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return _index.CountPrefix(keys);
        }
    }

    /// <summary>Synchronous <see cref="GetAsync"/>: the verified, decoded chunk with one reference for the caller, or null.</summary>
    public KvChunk? TryGet(ChunkHash key)
    {
        DiskChunkIndex.Entry? entry;
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (!_index.TryTouch(key, out entry))
            {
                return null;
            }
        }

        var path = PathOf(key);
        KvChunk? chunk = null;
        var status = ChunkReadStatus.Truncated;
        var ioFailed = false;
        try
        {
            status = DiskChunkFile.Read(path, entry.Record, _pool, DirectIo, out chunk);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            ioFailed = true; // missing (deleted behind our back) or unreadable
        }

        if (status == ChunkReadStatus.Ok)
        {
            DiskChunkFile.Touch(path);
            if (entry.Lineage is { } lineage && !chunk!.IsSealed)
            {
                chunk.Lineage = lineage; // its place in its prompt travels on: a promotion into memory reports it
            }

            return chunk;
        }

        chunk?.Release();
        ReadFailed(entry, ioFailed);
        return null;
    }

    // A read of entry's file failed. Evicted, removed or replaced while it was read: a plain miss, nothing is wrong with
    // the disk. Else the failure is counted (an I/O error, or a corrupt file) and the file dropped like a corrupt one.
    private void ReadFailed(DiskChunkIndex.Entry entry, bool ioFailed)
    {
        lock (_lock)
        {
            if (!_disposed && !_index.IsCurrent(entry))
            {
                return;
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

        Discard(entry);
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
        var maxFileLength = DiskChunkFile.MaxFileLength(chunk, _codec);
        if (maxFileLength - HeaderBlockSize > ChunkEnvelope.MaxPayloadLength)
        {
            return false;
        }

        // Reserve the largest size the file can have, so the directory never exceeds the capacity; corrected after encoding.
        var reserved = DiskChunkFile.BlockRound(maxFileLength);
        if (!TryBeginWrite(key, reserved, replacing: null, out var refreshed))
        {
            return refreshed;
        }

        var committed = false;
        var temp = "";
        try
        {
            var path = PathOf(key);
            temp = DiskChunkFile.TempPathOf(path, Interlocked.Increment(ref _tempCounter));
            if (!DiskChunkFile.TryWrite(temp, chunk, _codec, _pool, DirectIo, _fsync, out var record, out var lineage))
            {
                return false;
            }

            committed = CommitWrite(temp, path, new DiskChunkIndex.Entry(record, lineage), reserved);
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
        if (!DiskChunkFile.TryCheckEnvelope(envelope, key, out var header))
        {
            return false;
        }

        var record = DiskChunkRecord.Of(header);
        var reserved = record.BlockBytes;
        if (!TryBeginWrite(key, reserved, replace ? record : null, out var refreshed))
        {
            return refreshed;
        }

        var committed = false;
        var temp = "";
        try
        {
            var path = PathOf(key);
            temp = DiskChunkFile.TempPathOf(path, Interlocked.Increment(ref _tempCounter));
            DiskChunkFile.WriteEnvelope(temp, envelope, _fsync);
            committed = CommitWrite(temp, path, new DiskChunkIndex.Entry(record), reserved);
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
        DiskChunkIndex.Entry? entry;
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (!_index.TryTouch(key, out entry))
            {
                return null;
            }
        }

        var path = PathOf(key);
        KvChunk? result = null;
        var ioFailed = false;
        try
        {
            result = DiskChunkFile.ReadEnvelope(path, entry.Record, _pool);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            ioFailed = true; // missing (deleted behind our back) or unreadable
        }

        if (result is not null)
        {
            DiskChunkFile.Touch(path);
            return result;
        }

        ReadFailed(entry, ioFailed);
        return null;
    }

    /// <summary>Synchronous <see cref="RemoveAsync"/>.</summary>
    public bool Remove(ChunkHash key)
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (!_index.TryForget(key))
            {
                return false;
            }
        }

        Unlink(key);
        return true;
    }

    /// <summary>Synchronous <see cref="ClearAsync"/>: deletes every chunk file the tier holds.</summary>
    public void Clear()
    {
        List<ChunkHash> keys;
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            keys = _index.ForgetAll();
        }

        Unlink(keys);
    }

    /// <summary>Keys from most to least recently used (diagnostics and tests).</summary>
    public IReadOnlyList<ChunkHash> KeysByRecency()
    {
        lock (_lock)
        {
            return _index.KeysByRecency();
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
            if (!_disposed && !_index.Contains(key))
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
            return _index.Lineages();
        }
    }

    /// <inheritdoc />
    public StorageTierStats GetStats()
    {
        lock (_lock)
        {
            return new StorageTierStats(_index.Count, _index.UsedBytes, CapacityBytes);
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
            _index.Reset();
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

    // Runs in the constructor, before the tier is shared: the index needs no lock yet.
    private DiskTierScan Recover(IProgress<DiskTierScanProgress>? progress)
    {
        var start = Stopwatch.GetTimestamp();
        var scan = DiskTierRecovery.Run(Root, _index, _metrics, Name, progress, out var evicted);
        Unlink(evicted);
        if (evicted.Count > 0)
        {
            _metrics?.Evicted(Name, evicted.Count);
        }

        return scan with { Elapsed = Stopwatch.GetElapsedTime(start) };
    }

    /// <summary>
    /// Reserves room for a new file of <paramref name="key"/>. False with <paramref name="refreshed"/> set when the key is
    /// already stored (marked as used instead) or being written; when <paramref name="replacing"/> is given, a stored file
    /// that is not that one is dropped and the write goes ahead. Evicted files are unlinked here, outside the lock.
    /// </summary>
    private bool TryBeginWrite(ChunkHash key, long reserved, DiskChunkRecord? replacing, out bool refreshed)
    {
        refreshed = false;
        if (reserved > CapacityBytes)
        {
            return false;
        }

        List<ChunkHash>? evicted = null;
        DiskWriteReservation answer;
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            answer = _index.TryReserve(key, reserved, replacing, ref evicted);
        }

        if (evicted is not null)
        {
            Unlink(evicted);
            _metrics?.Evicted(Name, evicted.Count);
        }

        refreshed = answer is DiskWriteReservation.AlreadyStored or DiskWriteReservation.BeingWritten;
        return answer == DiskWriteReservation.Reserved;
    }

    // The rename runs outside the lock: the key is being written, so no other write, delete or index entry touches its path.
    private bool CommitWrite(string temp, string path, DiskChunkIndex.Entry entry, long reserved)
    {
        FileSystemHook?.Invoke(FileSystemChange.Rename, entry.Key);
        DiskChunkFile.Publish(temp, path);
        lock (_lock)
        {
            if (_disposed)
            {
                return true; // the file is in place for the next process
            }

            _index.Commit(entry, reserved);
            Events?.Stored(KvMedium.Disk, entry.Key, entry.Lineage);
        }

        if (_fsync)
        {
            DiskChunkFile.SyncDirectoryOf(path);
        }

        return true;
    }

    // Still holding the key as being written: deletes the temp file and whatever file is under the key's name (a replaced
    // file that is no longer indexed, which must not come back at the next start), then releases the reservation.
    private void AbortWrite(ChunkHash key, long reserved, string temp)
    {
        if (temp.Length > 0)
        {
            DiskChunkFile.TryDelete(temp);
        }

        FileSystemHook?.Invoke(FileSystemChange.Delete, key);
        DiskChunkFile.TryDelete(PathOf(key));

        lock (_lock)
        {
            _index.Abort(key, reserved);
        }
    }

    // Drops a bad entry, unless it was replaced (a fresh write of the same key) in the meantime.
    private void Discard(DiskChunkIndex.Entry entry)
    {
        lock (_lock)
        {
            if (_disposed || !_index.TryForget(entry.Key, only: entry))
            {
                return;
            }
        }

        Unlink(entry.Key);
    }

    // The index forgot these keys and holds them as being deleted until their files are gone (see DiskChunkIndex.TryForget).
    private void Unlink(ChunkHash key)
    {
        UnlinkFile(key);
        lock (_lock)
        {
            _index.FileDeleted(key);
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
            _index.FileDeleted(keys);
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
}
