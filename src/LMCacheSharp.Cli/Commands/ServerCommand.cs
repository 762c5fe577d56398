using System.CommandLine;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Server;

namespace LMCacheSharp.Cli.Commands;

/// <summary>
/// <c>lmcache server</c>: the standalone cache server that many inference processes share (<c>remote_url: lm://host:port</c>).
/// Settings come from a YAML or JSON file (<c>--config</c>), then LMCACHE_SERVER_* environment variables, then the command
/// line, through <see cref="CacheServerConfigLoader"/>. With <c>--disk DIR</c> values are also written to a disk directory
/// (behind a bounded queue) and a restarted server serves them again.
/// </summary>
internal static class ServerCommand
{
    public static Command Create()
    {
        var flags = new ConfigFlags("YAML or JSON file of these settings, keyed as the flags without dashes (max_value_size: 256MB) " +
            "(LMCACHE_SERVER_CONFIG_FILE); LMCACHE_SERVER_* variables win over it, and flags over both.");
        flags.Add("host", "Address to bind (LMCACHE_SERVER_HOST). Default 127.0.0.1; 0.0.0.0 exposes it to the network.");
        flags.Add("port", "Protocol port (LMCACHE_SERVER_PORT). Default 65432; 0 picks a free one.");
        flags.Add("capacity", "Bytes of values kept before LRU eviction, e.g. 8GB (LMCACHE_SERVER_CAPACITY). Default 1GB; 1MB..16TB.");
        flags.Add("auth_token", "Token clients must AUTH with (LMCACHE_SERVER_AUTH_TOKEN; the variable keeps it out of ps).");
        flags.Add("metrics_port", "Serve Prometheus metrics at http://HOST:PORT/metrics (LMCACHE_SERVER_METRICS_PORT). Default off.");
        flags.Add("max_connections", "Connections served at once (LMCACHE_SERVER_MAX_CONNECTIONS). Default 1024; 1..100000.");
        flags.Add("frame_timeout", "Seconds a connection may stall inside a frame before it is closed (LMCACHE_SERVER_FRAME_TIMEOUT). Default 30; 0: no limit, else 1..3600.");
        flags.Add("max_value_size", "Largest value accepted, e.g. 256MB (LMCACHE_SERVER_MAX_VALUE_SIZE). Default 256MB.");
        flags.Add("max_inflight_put", "Bytes of PUT values being received at once, all connections together, e.g. 512MB (LMCACHE_SERVER_MAX_INFLIGHT_PUT). Default a quarter of --capacity, 64MB..1GB; 1MB..1TB.");
        flags.Add("min_data_rate", "Bytes per second a client must average inside a frame after a 5 s grace, e.g. 64KB (LMCACHE_SERVER_MIN_DATA_RATE). Default 64KB; 0: off, at most 1GB.");
        flags.Add("max_auth_failures", "Failed AUTH attempts on one connection before it is closed (LMCACHE_SERVER_MAX_AUTH_FAILURES). Default 3; 1..1000.");
        flags.Add("max_children", "Chunk children remembered for token-exact lookups by other instances (LINK/CHILDREN; LMCACHE_SERVER_MAX_CHILDREN). Default 65536; 1..16777216.");
        flags.Add("max_child_tokens", "Tokens those children may hold in all, 4 bytes each (LMCACHE_SERVER_MAX_CHILD_TOKENS). Default 16777216; 1..2147483647.");
        flags.Add("max_pinned", "Bytes of values PIN may hold exempt from eviction at once, e.g. 512MB (LMCACHE_SERVER_MAX_PINNED). Default half of --capacity; 0 (no pins)..--capacity.");
        flags.Add("salt_quota", "Per-tenant quotas SALT=SIZE[,SALT=SIZE...] (cache_salt; LMCACHE_SERVER_SALT_QUOTA): a tenant over its quota evicts its own least recently used values first. Default none; 4KB..--capacity each.");
        flags.Add("default_salt_quota", "Quota of every other salted tenant, each on its own, e.g. 1GB (LMCACHE_SERVER_DEFAULT_SALT_QUOTA). Default none; 4KB..--capacity.");
        flags.Add("disk", "Also keep values in this directory, so a restarted server serves them again (LMCACHE_SERVER_DISK). Default off.");
        flags.Add("disk_capacity", "Bytes of files kept in --disk before LRU eviction, e.g. 100GB (LMCACHE_SERVER_DISK_CAPACITY). Default 10GB.");
        flags.Add("disk_write_queue", "Bytes of values waiting for the disk writer before disk writes are dropped (LMCACHE_SERVER_DISK_WRITE_QUEUE). Default 256MB; 1MB..64GB.");
        flags.Add("disk_write_queue_records", "PUTs waiting for the disk writer before disk writes are dropped (LMCACHE_SERVER_DISK_WRITE_QUEUE_RECORDS). Default 65536; 16..16777216.");
        flags.Add("disk_shutdown_flush_timeout", "Seconds a shutdown writes queued values to --disk before dropping the rest (LMCACHE_SERVER_DISK_SHUTDOWN_FLUSH_TIMEOUT). Default 30; 0..600.");
        flags.Add("disk_fsync", "fsync every file written to --disk (LMCACHE_SERVER_DISK_FSYNC). Default false; true/false, 1/0, yes/no, on/off.", valueOptional: true);
        var command = new Command("server", "Run the cache server: a shared KV store for several lmcache serve instances (remote_url: lm://host:port).");
        flags.AddTo(command, CacheServerConfigLoader.Keys);
        command.SetAction(async (r, ct) =>
        {
            // Every problem of the file, the environment and the flags is reported at once, each naming its source.
            CacheServerOptions options;
            try
            {
                options = CacheServerConfigLoader.Load(r.GetValue(flags.Config), null, flags.Values(r));
            }
            catch (LMCacheConfigurationException e)
            {
                return await ConfigFlags.FailAsync("lmcache server", e.Errors);
            }

            if (options.Disk is { } disk)
            {
                var line = ProgressLine.ForStderr(); // quiet when stderr is not a terminal
                disk.ScanProgress = new ScanProgressLine(line);
            }

            try
            {
                await using var server = CacheServer.Create(options);
                await server.StartAsync(ct);
                Console.WriteLine($"lmcache server: {server.Url} (capacity {ByteSize.Format(options.CapacityBytes)}, auth {(string.IsNullOrEmpty(options.AuthToken) ? "off" : "on")}" +
                    $"{(server.MetricsUrl is { } m ? $", metrics {m}" : "")}); Ctrl+C to stop");
                if (server.Store is DiskBackedCacheStore persistent)
                {
                    var scan = persistent.Disk.StartupScan;
                    Console.WriteLine($"lmcache server: disk {persistent.Disk.Root} (capacity {ByteSize.Format(persistent.Disk.CapacityBytes)}): " +
                        $"{scan.Recovered} values recovered ({ByteSize.Format(persistent.Disk.UsedBytes)}), {scan.Discarded} corrupt files deleted, " +
                        $"{scan.EvictedOverCapacity} evicted over capacity, in {scan.Elapsed.TotalSeconds:0.00} s");
                }
                await server.WaitForShutdownAsync(ct);
                return 0;
            }
            catch (IOException e)
            {
                await Console.Error.WriteLineAsync("lmcache server: " + e.Message);
                return 1;
            }
        });
        return command;
    }

    /// <summary>The disk scan's reports drawn as a progress line, at once on the scanning thread (not <see cref="Progress{T}"/>, which posts them elsewhere).</summary>
    private sealed class ScanProgressLine(ProgressLine line) : IProgress<LMCacheSharp.Core.Storage.DiskTierScanProgress>
    {
        public void Report(LMCacheSharp.Core.Storage.DiskTierScanProgress value) =>
            line.Report("scanning the disk cache", value.Fraction, $"{value.ChunkFilesRead} files");
    }
}
