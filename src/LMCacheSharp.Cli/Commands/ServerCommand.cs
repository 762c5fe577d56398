using System.CommandLine;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Protocol;
using LMCacheSharp.Server;

namespace LMCacheSharp.Cli.Commands;

/// <summary>
/// <c>lmcache server</c>: the standalone cache server that many inference processes share (<c>remote_url: lm://host:port</c>).
/// Settings come from LMCACHE_SERVER_* environment variables, then the command line. With <c>--disk DIR</c> values are also
/// written to a disk directory (behind a bounded queue) and a restarted server serves them again.
/// </summary>
internal static class ServerCommand
{
    public static Command Create()
    {
        var host = new Option<string?>("--host") { Description = "Address to bind (LMCACHE_SERVER_HOST). Default 127.0.0.1; 0.0.0.0 exposes it to the network." };
        var port = new Option<int?>("--port") { Description = "Protocol port (LMCACHE_SERVER_PORT). Default 65432; 0 picks a free one." };
        var capacity = new Option<string?>("--capacity") { Description = "Bytes of values kept before LRU eviction, e.g. 8GB (LMCACHE_SERVER_CAPACITY). Default 1GB." };
        var token = new Option<string?>("--auth-token") { Description = "Token clients must AUTH with (LMCACHE_SERVER_AUTH_TOKEN; the variable keeps it out of ps)." };
        var metricsPort = new Option<int?>("--metrics-port") { Description = "Serve Prometheus metrics at http://HOST:PORT/metrics (LMCACHE_SERVER_METRICS_PORT). Default off." };
        var maxConnections = new Option<int?>("--max-connections") { Description = "Connections served at once (LMCACHE_SERVER_MAX_CONNECTIONS). Default 1024." };
        var frameTimeout = new Option<int?>("--frame-timeout") { Description = "Seconds a connection may stall inside a frame before it is closed (LMCACHE_SERVER_FRAME_TIMEOUT). Default 30; 0: no limit." };
        var maxValue = new Option<string?>("--max-value-size") { Description = "Largest value accepted, e.g. 256MB (LMCACHE_SERVER_MAX_VALUE_SIZE). Default 256MB." };
        var disk = new Option<string?>("--disk") { Description = "Also keep values in this directory, so a restarted server serves them again (LMCACHE_SERVER_DISK). Default off." };
        var diskCapacity = new Option<string?>("--disk-capacity") { Description = "Bytes of files kept in --disk before LRU eviction, e.g. 100GB (LMCACHE_SERVER_DISK_CAPACITY). Default 10GB." };
        var diskQueue = new Option<string?>("--disk-write-queue") { Description = "Bytes of values waiting for the disk writer before disk writes are dropped (LMCACHE_SERVER_DISK_WRITE_QUEUE). Default 256MB." };
        var diskFsync = new Option<bool?>("--disk-fsync") { Description = "fsync every file written to --disk (LMCACHE_SERVER_DISK_FSYNC). Default false." };
        var command = new Command("server", "Run the cache server: a shared KV store for several lmcache serve instances (remote_url: lm://host:port).")
        {
            host, port, capacity, token, metricsPort, maxConnections, frameTimeout, maxValue, disk, diskCapacity, diskQueue, diskFsync,
        };
        command.SetAction(async (r, ct) =>
        {
            CacheServerOptions options;
            try
            {
                static string? Env(string name) => Environment.GetEnvironmentVariable("LMCACHE_SERVER_" + name) is { Length: > 0 } v ? v : null;
                static int? EnvInt(string name) => Env(name) is { } v
                    ? int.TryParse(v, System.Globalization.CultureInfo.InvariantCulture, out var n) ? n : throw new ArgumentException($"LMCACHE_SERVER_{name}: not an integer: '{v}'")
                    : null;
                var valueText = r.GetValue(maxValue) ?? Env("MAX_VALUE_SIZE");
                var valueBytes = valueText is null ? 256L << 20 : ByteSize.Parse(valueText);
                if (valueBytes is < 1 or > ProtocolLimits.ValueBytesCeiling)
                {
                    throw new ArgumentException($"--max-value-size: must be in 1..{ProtocolLimits.ValueBytesCeiling} bytes, got {valueBytes}");
                }

                static bool? EnvBool(string name)
                {
                    try
                    {
                        return Env(name) is { } v ? LMCacheConfigLoader.ParseBool(v) : null;
                    }
                    catch (FormatException e)
                    {
                        throw new ArgumentException($"LMCACHE_SERVER_{name}: {e.Message}", e);
                    }
                }

                var diskDirectory = r.GetValue(disk) ?? Env("DISK");
                var diskCapacityText = r.GetValue(diskCapacity) ?? Env("DISK_CAPACITY");
                var diskQueueText = r.GetValue(diskQueue) ?? Env("DISK_WRITE_QUEUE");
                var fsync = r.GetValue(diskFsync) ?? EnvBool("DISK_FSYNC");
                if (diskDirectory is null && (diskCapacityText is not null || diskQueueText is not null || fsync is not null))
                {
                    throw new ArgumentException("--disk-capacity, --disk-write-queue and --disk-fsync need --disk DIR");
                }

                options = new CacheServerOptions
                {
                    Host = r.GetValue(host) ?? Env("HOST") ?? "127.0.0.1",
                    Port = r.GetValue(port) ?? EnvInt("PORT") ?? 65432,
                    CapacityBytes = ByteSize.Parse(r.GetValue(capacity) ?? Env("CAPACITY") ?? "1GB"),
                    AuthToken = r.GetValue(token) ?? Env("AUTH_TOKEN"),
                    MetricsPort = r.GetValue(metricsPort) ?? EnvInt("METRICS_PORT"),
                    MaxConnections = r.GetValue(maxConnections) ?? EnvInt("MAX_CONNECTIONS") ?? 1024,
                    FrameTimeout = (r.GetValue(frameTimeout) ?? EnvInt("FRAME_TIMEOUT") ?? 30) is var seconds and not 0
                        ? TimeSpan.FromSeconds(seconds) : Timeout.InfiniteTimeSpan,
                    Limits = new ProtocolLimits { MaxValueBytes = (int)valueBytes, MaxFrameBytes = (int)Math.Min(valueBytes + (1 << 20), ProtocolLimits.FrameBytesCeiling) },
                    Disk = diskDirectory is null ? null : new DiskStoreOptions
                    {
                        Directory = Core.Storage.DiskTierOptions.ParseDirectory(diskDirectory),
                        CapacityBytes = ByteSize.Parse(diskCapacityText ?? "10GB"),
                        WriteQueueBytes = ByteSize.Parse(diskQueueText ?? "256MB"),
                        Fsync = fsync ?? false,
                    },
                };
            }
            catch (Exception e) when (e is ArgumentException or FormatException or OverflowException or LMCacheConfigurationException)
            {
                await Console.Error.WriteLineAsync("lmcache server: " + e.Message);
                return 2;
            }

            var errors = options.GetErrors();
            if (errors.Count > 0)
            {
                errors.ToList().ForEach(e => Console.Error.WriteLine("lmcache server: " + e));
                return 2;
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
}
