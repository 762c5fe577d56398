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
    private const string EnvironmentPrefix = "LMCACHE_SERVER_";

    public static Command Create()
    {
        var host = Flag("--host", "Address to bind (LMCACHE_SERVER_HOST). Default 127.0.0.1; 0.0.0.0 exposes it to the network.");
        var port = Flag("--port", "Protocol port (LMCACHE_SERVER_PORT). Default 65432; 0 picks a free one.");
        var capacity = Flag("--capacity", "Bytes of values kept before LRU eviction, e.g. 8GB (LMCACHE_SERVER_CAPACITY). Default 1GB; 1MB..16TB.");
        var token = Flag("--auth-token", "Token clients must AUTH with (LMCACHE_SERVER_AUTH_TOKEN; the variable keeps it out of ps).");
        var metricsPort = Flag("--metrics-port", "Serve Prometheus metrics at http://HOST:PORT/metrics (LMCACHE_SERVER_METRICS_PORT). Default off.");
        var maxConnections = Flag("--max-connections", "Connections served at once (LMCACHE_SERVER_MAX_CONNECTIONS). Default 1024; 1..100000.");
        var frameTimeout = Flag("--frame-timeout", "Seconds a connection may stall inside a frame before it is closed (LMCACHE_SERVER_FRAME_TIMEOUT). Default 30; 0: no limit, else 1..3600.");
        var maxValue = Flag("--max-value-size", "Largest value accepted, e.g. 256MB (LMCACHE_SERVER_MAX_VALUE_SIZE). Default 256MB.");
        var maxInFlightPut = Flag("--max-inflight-put", "Bytes of PUT values being received at once, all connections together, e.g. 512MB (LMCACHE_SERVER_MAX_INFLIGHT_PUT). Default a quarter of --capacity, 64MB..1GB; 1MB..1TB.");
        var minDataRate = Flag("--min-data-rate", "Bytes per second a client must average inside a frame after a 5 s grace, e.g. 64KB (LMCACHE_SERVER_MIN_DATA_RATE). Default 64KB; 0: off, at most 1GB.");
        var maxAuthFailures = Flag("--max-auth-failures", "Failed AUTH attempts on one connection before it is closed (LMCACHE_SERVER_MAX_AUTH_FAILURES). Default 3; 1..1000.");
        var maxChildren = Flag("--max-children", "Chunk children remembered for token-exact lookups by other instances (LINK/CHILDREN; LMCACHE_SERVER_MAX_CHILDREN). Default 65536; 1..16777216.");
        var maxChildTokens = Flag("--max-child-tokens", "Tokens those children may hold in all, 4 bytes each (LMCACHE_SERVER_MAX_CHILD_TOKENS). Default 16777216; 1..2147483647.");
        var disk = Flag("--disk", "Also keep values in this directory, so a restarted server serves them again (LMCACHE_SERVER_DISK). Default off.");
        var diskCapacity = Flag("--disk-capacity", "Bytes of files kept in --disk before LRU eviction, e.g. 100GB (LMCACHE_SERVER_DISK_CAPACITY). Default 10GB.");
        var diskQueue = Flag("--disk-write-queue", "Bytes of values waiting for the disk writer before disk writes are dropped (LMCACHE_SERVER_DISK_WRITE_QUEUE). Default 256MB; 1MB..64GB.");
        var diskQueueRecords = Flag("--disk-write-queue-records", "PUTs waiting for the disk writer before disk writes are dropped (LMCACHE_SERVER_DISK_WRITE_QUEUE_RECORDS). Default 65536; 16..16777216.");
        var diskFlushTimeout = Flag("--disk-shutdown-flush-timeout", "Seconds a shutdown writes queued values to --disk before dropping the rest (LMCACHE_SERVER_DISK_SHUTDOWN_FLUSH_TIMEOUT). Default 30; 0..600.");
        var diskFsync = new Option<string?>("--disk-fsync")
        {
            Description = "fsync every file written to --disk (LMCACHE_SERVER_DISK_FSYNC). Default false; true/false, 1/0, yes/no, on/off.",
            Arity = ArgumentArity.ZeroOrOne,
        };
        var command = new Command("server", "Run the cache server: a shared KV store for several lmcache serve instances (remote_url: lm://host:port).")
        {
            host, port, capacity, token, metricsPort, maxConnections, frameTimeout, maxValue, maxInFlightPut, minDataRate, maxAuthFailures,
            maxChildren, maxChildTokens, disk, diskCapacity, diskQueue, diskQueueRecords, diskFlushTimeout, diskFsync,
        };
        command.SetAction(async (r, ct) =>
        {
            // Every problem of the environment and the flags is reported at once, each naming its source.
            var settings = new Settings(r, name => Environment.GetEnvironmentVariable(EnvironmentPrefix + name));
            var options = new CacheServerOptions();
            settings.Text(host, "HOST", "host", v => options.Host = v);
            settings.Int(port, "PORT", "port", v => options.Port = v);
            settings.Size(capacity, "CAPACITY", "capacity", v => options.CapacityBytes = v);
            settings.Text(token, "AUTH_TOKEN", "auth token", v => options.AuthToken = v);
            settings.Int(metricsPort, "METRICS_PORT", "metrics port", v => options.MetricsPort = v);
            settings.Int(maxConnections, "MAX_CONNECTIONS", "max connections", v => options.MaxConnections = v);
            settings.Seconds(frameTimeout, "FRAME_TIMEOUT", "frame timeout", v => options.FrameTimeout = v == TimeSpan.Zero ? Timeout.InfiniteTimeSpan : v);
            settings.Size(maxValue, "MAX_VALUE_SIZE", "max value size", v =>
            {
                if (v is < 1 or > ProtocolLimits.ValueBytesCeiling)
                {
                    settings.Problem("max value size", $"must be in 1..{ProtocolLimits.ValueBytesCeiling} bytes, got {v}");
                    return;
                }

                options.Limits = new ProtocolLimits { MaxValueBytes = (int)v, MaxFrameBytes = (int)Math.Min(v + (1 << 20), ProtocolLimits.FrameBytesCeiling) };
            });
            settings.Size(maxInFlightPut, "MAX_INFLIGHT_PUT", "max in-flight put bytes", v => options.MaxInFlightPutBytes = v);
            settings.Size(minDataRate, "MIN_DATA_RATE", "min data rate", v => options.MinDataRateBytesPerSecond = v);
            settings.Int(maxAuthFailures, "MAX_AUTH_FAILURES", "max auth failures", v => options.MaxAuthFailures = v);
            settings.Int(maxChildren, "MAX_CHILDREN", "max children", v => options.MaxChildren = v);
            settings.Int(maxChildTokens, "MAX_CHILD_TOKENS", "max child tokens", v => options.MaxChildTokens = v);

            var store = new DiskStoreOptions();
            var diskOnly = new List<string>();
            void DiskOnly(string? source)
            {
                if (source is not null)
                {
                    diskOnly.Add(source);
                }
            }

            DiskOnly(settings.Size(diskCapacity, "DISK_CAPACITY", "disk capacity", v => store.CapacityBytes = v));
            DiskOnly(settings.Size(diskQueue, "DISK_WRITE_QUEUE", "disk write queue", v => store.WriteQueueBytes = v));
            DiskOnly(settings.Int(diskQueueRecords, "DISK_WRITE_QUEUE_RECORDS", "disk write queue records", v => store.WriteQueueRecords = v));
            DiskOnly(settings.Seconds(diskFlushTimeout, "DISK_SHUTDOWN_FLUSH_TIMEOUT", "disk shutdown flush timeout", v => store.ShutdownFlushTimeout = v));
            DiskOnly(settings.Bool(diskFsync, "DISK_FSYNC", "disk fsync", v => store.Fsync = v));
            var diskSource = settings.Text(disk, "DISK", "disk", v =>
            {
                try
                {
                    store.Directory = Core.Storage.DiskTierOptions.ParseDirectory(v);
                    options.Disk = store;
                }
                catch (Exception e) when (e is ArgumentException or LMCacheConfigurationException)
                {
                    settings.Problem("disk", e.Message);
                }
            });
            if (diskSource is null)
            {
                diskOnly.ForEach(source => settings.Problem(null, $"{source} needs --disk DIR (or LMCACHE_SERVER_DISK)"));
            }

            foreach (var error in options.GetErrors())
            {
                settings.Problem(error);
            }

            if (settings.Problems.Count > 0)
            {
                await Console.Error.WriteLineAsync("lmcache server: invalid configuration:" + Environment.NewLine +
                    string.Join(Environment.NewLine, settings.Problems.Select(p => "  " + p)));
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

    private static Option<string?> Flag(string name, string description) => new(name) { Description = description };

    /// <summary>
    /// Binds settings from the command line, else LMCACHE_SERVER_* variables, and collects every problem with its source
    /// ("--port", "LMCACHE_SERVER_PORT"). Each binder calls its setter only for a value that parsed, and returns the source
    /// of the value it found, or null when neither gave one (the option's default stays).
    /// </summary>
    private sealed class Settings(ParseResult result, Func<string, string?> environment)
    {
        private readonly Dictionary<string, string> _sources = []; // the options' error key -> where its value came from

        public List<string> Problems { get; } = [];

        public string? Text(Option<string?> option, string variable, string key, Action<string> set) =>
            Bind(option, variable, key, (text, _) => set(text));

        public string? Int(Option<string?> option, string variable, string key, Action<int> set) =>
            Bind(option, variable, key, (text, _) =>
            {
                if (int.TryParse(text, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out var value))
                {
                    set(value);
                }
                else
                {
                    Problem(key, $"not an integer: '{text}'");
                }
            });

        public string? Size(Option<string?> option, string variable, string key, Action<long> set) =>
            Bind(option, variable, key, (text, _) =>
            {
                if (ByteSize.TryParse(text, out var bytes))
                {
                    set(bytes);
                }
                else
                {
                    Problem(key, $"'{text}' is not a size: use a number with an optional unit B, KB, MB, GB or TB (binary), e.g. 4GB");
                }
            });

        public string? Seconds(Option<string?> option, string variable, string key, Action<TimeSpan> set) =>
            Bind(option, variable, key, (text, _) =>
            {
                if (double.TryParse(text, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var seconds) &&
                    seconds is >= 0 and <= 86400)
                {
                    set(TimeSpan.FromSeconds(seconds));
                }
                else
                {
                    Problem(key, $"not a number of seconds (0..86400): '{text}'");
                }
            });

        public string? Bool(Option<string?> option, string variable, string key, Action<bool> set) =>
            Bind(option, variable, key, (text, _) =>
            {
                try
                {
                    set(LMCacheConfigLoader.ParseBool(text));
                }
                catch (FormatException e)
                {
                    Problem(key, e.Message);
                }
            });

        /// <summary>Adds a problem under <paramref name="key"/>, naming the source of that setting when there is one.</summary>
        public void Problem(string? key, string message) =>
            Problems.Add(key is null ? message : _sources.TryGetValue(key, out var source) ? $"{key} ({source}): {message}" : $"{key}: {message}");

        /// <summary>Adds one of the options' own errors ("key: message"), naming the source of its key.</summary>
        public void Problem(string error)
        {
            var colon = error.IndexOf(':', StringComparison.Ordinal);
            Problem(colon > 0 ? error[..colon] : null, colon > 0 ? error[(colon + 1)..].TrimStart() : error);
        }

        private string? Bind(Option<string?> option, string variable, string key, Action<string, string> apply)
        {
            string? text;
            string source;
            if (result.GetResult(option) is { Implicit: false } given)
            {
                // A flag of arity zero-or-one given without a value (--disk-fsync) means true.
                text = given.Tokens.Count == 0 ? "true" : result.GetValue(option) ?? "";
                source = option.Name;
            }
            else if (environment(variable) is { Length: > 0 } value)
            {
                text = value;
                source = EnvironmentPrefix + variable;
            }
            else
            {
                return null;
            }

            _sources[key] = source;
            apply(text.Trim(), source);
            return source;
        }
    }
}
