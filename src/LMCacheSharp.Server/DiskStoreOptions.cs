namespace LMCacheSharp.Server;

/// <summary>Settings of the cache server's disk persistence (<see cref="DiskBackedCacheStore"/>).</summary>
public sealed class DiskStoreOptions
{
    /// <summary>The cache directory (created when absent; one process at a time, it is locked). Required.</summary>
    public string Directory { get; set; } = "";

    /// <summary>Bytes of files kept on disk (each file counted in whole 4 KiB blocks), least recently used evicted. Default 10 GiB; range 1 MiB..2^62.</summary>
    public long CapacityBytes { get; set; } = 10L << 30;

    /// <summary>
    /// Bytes of values waiting for the background disk writer; a PUT that finds the queue fuller than this is kept in memory
    /// only (counted in <c>disk_writes_dropped</c>). A value larger than this is still queued when the queue is empty.
    /// Default 256 MiB; range 1 MiB..64 GiB.
    /// </summary>
    public long WriteQueueBytes { get; set; } = 256L << 20;

    /// <summary>
    /// PUT records waiting for the background disk writer (each holds a memory buffer reference); a PUT that finds this many
    /// is kept in memory only (counted in <c>disk_writes_dropped</c>). A later PUT or DELETE of a key replaces its waiting
    /// record, so a key never has more than one waiting. Default 65536; range 16..16777216.
    /// </summary>
    public int WriteQueueRecords { get; set; } = 65536;

    /// <summary>
    /// How long a shutdown writes the queued values to disk before it drops the rest (logged, with counts). Default 30 s;
    /// range 0..10 min.
    /// </summary>
    public TimeSpan ShutdownFlushTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>fsync each file and its directory, so a value the writer stored survives a power loss. Default false.</summary>
    public bool Fsync { get; set; }

    /// <summary>
    /// Where the start-up scan of the directory reports how far it has come (<see cref="Core.Storage.DiskTierOptions.ScanProgress"/>),
    /// e.g. a host's progress line. Default null (none).
    /// </summary>
    public IProgress<Core.Storage.DiskTierScanProgress>? ScanProgress { get; set; }

    /// <summary>Every problem with the current values; empty when valid.</summary>
    public IReadOnlyList<string> GetErrors()
    {
        var errors = new List<string>();
        if (string.IsNullOrWhiteSpace(Directory))
        {
            errors.Add("disk: a directory is required");
        }

        if (CapacityBytes is < 1L << 20 or > 1L << 62)
        {
            errors.Add($"disk capacity: must be in 1MB..2^62 bytes, got {CapacityBytes} bytes");
        }

        if (WriteQueueBytes is < 1L << 20 or > 64L << 30)
        {
            errors.Add($"disk write queue: must be in 1MB..64GB, got {WriteQueueBytes} bytes");
        }

        if (WriteQueueRecords is < 16 or > 1 << 24)
        {
            errors.Add($"disk write queue records: must be in 16..16777216, got {WriteQueueRecords}");
        }

        if (ShutdownFlushTimeout < TimeSpan.Zero || ShutdownFlushTimeout > TimeSpan.FromMinutes(10))
        {
            errors.Add($"disk shutdown flush timeout: must be in 0..10 min, got {ShutdownFlushTimeout}");
        }

        return errors;
    }
}
