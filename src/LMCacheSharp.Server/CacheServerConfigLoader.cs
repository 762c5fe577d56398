using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Protocol;

namespace LMCacheSharp.Server;

/// <summary>
/// Builds <see cref="CacheServerOptions"/> for <c>lmcache server</c> through the <see cref="ConfigLoader{TOptions}"/> every
/// host uses, later wins: defaults, a YAML or JSON file (path given, or <c>LMCACHE_SERVER_CONFIG_FILE</c>),
/// <c>LMCACHE_SERVER_*</c> environment variables, then the command line. A key is the flag without its dashes, with
/// underscores (<c>--max-value-size</c>: <c>max_value_size</c>, <c>LMCACHE_SERVER_MAX_VALUE_SIZE</c>). Every problem is
/// thrown at once as <see cref="LMCacheConfigurationException"/>, each as <c>key (source): message</c>. docs/cache-server.md.
/// </summary>
public static class CacheServerConfigLoader
{
    /// <summary>Prefix of the environment variables.</summary>
    public const string EnvironmentPrefix = "LMCACHE_SERVER_";

    /// <summary>The variable naming a configuration file.</summary>
    public const string FileVariable = EnvironmentPrefix + "CONFIG_FILE";

    // The disk store's keys: each needs `disk` (the directory) set too.
    private static readonly string[] DiskKeys = ["disk_capacity", "disk_write_queue", "disk_write_queue_records", "disk_shutdown_flush_timeout", "disk_fsync"];

    private static readonly ConfigLoader<Settings> Loader = new ConfigLoader<Settings>(EnvironmentPrefix, FileVariable)
        .Add("host", (s, v) => s.Server.Host = v)
        .Add("port", (s, v) => s.Server.Port = ConfigParsers.ParseInt(v))
        .Add("capacity", (s, v) => s.Server.CapacityBytes = ConfigParsers.ParseSize(v))
        .Add("auth_token", (s, v) => s.Server.AuthToken = v, "auth token")
        .Add("metrics_port", (s, v) => s.Server.MetricsPort = ConfigParsers.ParseInt(v), "metrics port")
        .Add("max_connections", (s, v) => s.Server.MaxConnections = ConfigParsers.ParseInt(v), "max connections")
        .Add("frame_timeout", (s, v) => s.Server.FrameTimeout = ConfigParsers.ParseSeconds(v) is var t && t == TimeSpan.Zero ? Timeout.InfiniteTimeSpan : t, "frame timeout")
        .Add("max_value_size", (s, v) => s.Server.Limits = ValueLimits(ConfigParsers.ParseSize(v)), "max value bytes")
        .Add("max_inflight_put", (s, v) => s.Server.MaxInFlightPutBytes = ConfigParsers.ParseSize(v), "max in-flight put bytes")
        .Add("min_data_rate", (s, v) => s.Server.MinDataRateBytesPerSecond = ConfigParsers.ParseSize(v), "min data rate")
        .Add("max_auth_failures", (s, v) => s.Server.MaxAuthFailures = ConfigParsers.ParseInt(v), "max auth failures")
        .Add("max_children", (s, v) => s.Server.MaxChildren = ConfigParsers.ParseInt(v), "max children")
        .Add("max_child_tokens", (s, v) => s.Server.MaxChildTokens = ConfigParsers.ParseInt(v), "max child tokens")
        .Add("max_pinned", (s, v) => s.Server.MaxPinnedBytes = ConfigParsers.ParseSize(v), "max pinned")
        .Add("salt_quota", (s, v) => ParseSaltQuotas(v, s.Server.SaltQuotas), "salt quota")
        .Add("default_salt_quota", (s, v) => s.Server.DefaultSaltQuotaBytes = ConfigParsers.ParseSize(v), "default salt quota")
        .Add("disk", (s, v) => s.Disk.Directory = ParseDirectory(v))
        .Add("disk_capacity", (s, v) => s.Disk.CapacityBytes = ConfigParsers.ParseSize(v), "disk capacity")
        .Add("disk_write_queue", (s, v) => s.Disk.WriteQueueBytes = ConfigParsers.ParseSize(v), "disk write queue")
        .Add("disk_write_queue_records", (s, v) => s.Disk.WriteQueueRecords = ConfigParsers.ParseInt(v), "disk write queue records")
        .Add("disk_shutdown_flush_timeout", (s, v) => s.Disk.ShutdownFlushTimeout = ConfigParsers.ParseSeconds(v), "disk shutdown flush timeout")
        .Add("disk_fsync", (s, v) => s.Disk.Fsync = ConfigParsers.ParseBool(v), "disk fsync");

    /// <summary>The keys, in the order of <c>lmcache server --help</c>.</summary>
    public static IReadOnlyCollection<string> Keys => Loader.Keys;

    /// <summary>The environment variable of <paramref name="key"/> (<c>LMCACHE_SERVER_PORT</c>).</summary>
    public static string VariableOf(string key) => Loader.VariableOf(key);

    /// <summary>Loads and validates the options; throws <see cref="LMCacheConfigurationException"/> listing every problem.</summary>
    /// <param name="path">A YAML or JSON file of keys; null means <c>LMCACHE_SERVER_CONFIG_FILE</c> if set, else none.</param>
    /// <param name="environment">Environment variables; null means the process environment.</param>
    /// <param name="values">Values from the command line, each naming its flag.</param>
    public static CacheServerOptions Load(string? path = null, IDictionary<string, string?>? environment = null, IEnumerable<ConfigValue>? values = null)
    {
        var settings = Loader.Load(new Settings(), path, environment, values, null, Validate);
        return settings.Server;
    }

    private static IEnumerable<string> Validate(Settings settings, IReadOnlyDictionary<string, string> sources)
    {
        var errors = new List<string>();
        if (sources.ContainsKey("disk"))
        {
            // A directory that did not parse was reported: its store is not checked on top of that.
            settings.Server.Disk = settings.Disk.Directory.Length > 0 ? settings.Disk : null;
        }
        else
        {
            errors.AddRange(DiskKeys.Where(sources.ContainsKey).Select(key => $"{key} ({sources[key]}): needs disk, the directory (--disk DIR or {EnvironmentPrefix}DISK)"));
        }

        errors.AddRange(settings.Server.GetErrors());
        return errors;
    }

    private static ProtocolLimits ValueLimits(long bytes) => bytes is >= 1 and <= ProtocolLimits.ValueBytesCeiling
        ? new ProtocolLimits { MaxValueBytes = (int)bytes, MaxFrameBytes = (int)Math.Min(bytes + (1 << 20), ProtocolLimits.FrameBytesCeiling) }
        : throw new FormatException($"must be in 1..{ProtocolLimits.ValueBytesCeiling} bytes, got {bytes}");

    private static string ParseDirectory(string value)
    {
        if (string.IsNullOrWhiteSpace(value))
        {
            throw new FormatException("a directory is required");
        }

        try
        {
            return Core.Storage.DiskTierOptions.ParseDirectory(value);
        }
        catch (LMCacheConfigurationException)
        {
            throw new FormatException($"'{value}' names no directory");
        }
        catch (Exception e) when (e is ArgumentException or NotSupportedException or PathTooLongException)
        {
            throw new FormatException($"'{value}' is not a directory path: {e.Message}");
        }
    }

    /// <summary>What the keys set: the server's options and, used when <c>disk</c> is set, its disk store's.</summary>
    private sealed class Settings
    {
        public CacheServerOptions Server { get; } = new();

        public DiskStoreOptions Disk { get; } = new();
    }

    /// <summary>
    /// <c>SALT=SIZE[,SALT=SIZE...]</c> into <paramref name="quotas"/> (a salt may hold neither ',' nor '='; the message never
    /// repeats a salt, which is a tenant's secret).
    /// </summary>
    private static void ParseSaltQuotas(string value, IDictionary<string, long> quotas)
    {
        var entries = value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (entries.Length == 0)
        {
            throw new FormatException("takes SALT=SIZE, comma-separated (e.g. tenant-a=2GB,tenant-b=512MB)");
        }

        for (var i = 0; i < entries.Length; i++)
        {
            var eq = entries[i].LastIndexOf('=');
            if (eq <= 0 || eq == entries[i].Length - 1)
            {
                throw new FormatException($"entry {i + 1} is not SALT=SIZE (e.g. tenant-a=2GB)");
            }

            long bytes;
            try
            {
                bytes = ConfigParsers.ParseSize(entries[i][(eq + 1)..]);
            }
            catch (FormatException e)
            {
                throw new FormatException($"entry {i + 1}: {e.Message}", e);
            }

            if (!quotas.TryAdd(entries[i][..eq].Trim(), bytes))
            {
                throw new FormatException($"entry {i + 1} names a salt given before");
            }
        }
    }
}
