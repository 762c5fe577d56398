using LMCacheSharp.Core.Codecs;
using LMCacheSharp.Core.Configuration;

namespace LMCacheSharp.Core.Storage;

/// <summary>Settings of a <see cref="DiskTier"/>.</summary>
public sealed class DiskTierOptions
{
    /// <summary>The cache directory (created when absent). One process at a time may use it. Required.</summary>
    public string Directory { get; set; } = "";

    /// <summary>Capacity in bytes of the files the tier keeps (each file counted in whole 4 KiB blocks). Default 10 GiB; range 1 MiB..2^62.</summary>
    public long CapacityBytes { get; set; } = 10L << 30;

    /// <summary>How payloads are encoded on disk. Default <see cref="RawCodec"/> (LMCache's "naive").</summary>
    public IKvCodec Codec { get; set; } = RawCodec.Instance;

    /// <summary>
    /// Read and write with O_DIRECT (Linux, x64 and arm64), bypassing the page cache. When the filesystem refuses it (tmpfs,
    /// some overlay filesystems) the tier falls back to buffered I/O and reports it through <see cref="DiskTier.DirectIo"/>.
    /// Default false.
    /// </summary>
    public bool DirectIo { get; set; }

    /// <summary>
    /// fsync each file before it is renamed into place and its directory after, so that a chunk the tier reported stored
    /// survives a power loss. Off by default: without it a process crash still loses nothing that was renamed (the page
    /// cache keeps it), and a file torn by a power loss fails its header or checksum check, becomes a miss and is deleted.
    /// Default false.
    /// </summary>
    public bool Fsync { get; set; }

    /// <summary>
    /// Dedicated threads that run the tier's async reads, writes and deletes (blocking file I/O never runs on the caller's
    /// thread or the thread pool). Default 2; range 1..64.
    /// </summary>
    public int IoThreads { get; set; } = 2;

    /// <summary>
    /// Where the start-up scan of the directory reports how far it has come (once before the first subdirectory, then
    /// after each of them, on the thread that opens the tier), or null for none. For a host's progress line. Default null.
    /// </summary>
    public IProgress<DiskTierScanProgress>? ScanProgress { get; set; }

    /// <summary>Decides whether O_DIRECT works in a directory (tests replace it to simulate a filesystem that refuses it).</summary>
    internal Func<string, bool> DirectIoProbe { get; set; } = DiskFile.ProbeDirectIo;

    /// <summary>The options of the disk tier that <paramref name="options"/> configures (<c>local_disk</c> and friends).</summary>
    public static DiskTierOptions FromLMCacheOptions(LMCacheOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (string.IsNullOrEmpty(options.LocalDisk))
        {
            throw new ArgumentException("local_disk is not set.", nameof(options));
        }

        return new DiskTierOptions
        {
            Directory = ParseDirectory(options.LocalDisk),
            CapacityBytes = options.MaxLocalDiskSizeBytes,
            Codec = KvCodecs.Find(options.LocalDiskSerde)
                ?? throw new LMCacheConfigurationException($"local_disk_serde: must be one of {KvCodecs.Names}, got '{options.LocalDiskSerde}'"),
            DirectIo = options.LocalDiskODirect,
            Fsync = options.LocalDiskFsync,
        };
    }

    /// <summary>A directory from LMCache's <c>local_disk</c> value: <c>file:///path</c>, <c>file://path</c> or a plain path.</summary>
    public static string ParseDirectory(string localDisk)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(localDisk);
        var value = localDisk.Trim();
        if (value.StartsWith("file://", StringComparison.OrdinalIgnoreCase))
        {
            value = value["file://".Length..];
            if (value.Length == 0)
            {
                throw new LMCacheConfigurationException($"local_disk: '{localDisk}' names no directory");
            }
        }

        return Path.GetFullPath(value);
    }

    internal void Validate()
    {
        if (string.IsNullOrWhiteSpace(Directory))
        {
            throw new ArgumentException("DiskTierOptions.Directory is required.");
        }

        if (IoThreads is < 1 or > 64)
        {
            throw new ArgumentException($"DiskTierOptions.IoThreads must be 1..64, got {IoThreads}.");
        }

        if (CapacityBytes is < 1L << 20 or > 1L << 62)
        {
            throw new ArgumentOutOfRangeException(nameof(CapacityBytes), CapacityBytes, "disk tier capacity must be 1 MiB..2^62 bytes");
        }

        ArgumentNullException.ThrowIfNull(Codec);
    }
}
