using System.Globalization;

namespace LMCacheSharp.Core.Configuration;

/// <summary>
/// Builds <see cref="LMCacheOptions"/> from, in order of precedence (later wins): defaults, a YAML file with LMCache's keys
/// (path given, or <c>LMCACHE_CONFIG_FILE</c>), <c>LMCACHE_*</c> environment variables, and explicit overrides (command
/// line), through the <see cref="ConfigLoader{TOptions}"/> every host uses. Unknown keys are errors (with a suggestion);
/// LMCache keys for features this port does not have are reported as warnings and ignored. Every error names its key,
/// its source and the allowed values.
/// </summary>
public static class LMCacheConfigLoader
{
    /// <summary>Prefix of environment variables.</summary>
    public const string EnvironmentPrefix = "LMCACHE_";

    private static readonly Dictionary<string, Action<LMCacheOptions, string>> Setters = new(StringComparer.Ordinal)
    {
        ["chunk_size"] = (o, v) => o.ChunkSize = ConfigParsers.ParseInt(v),
        ["local_cpu"] = (o, v) => o.LocalCpu = ConfigParsers.ParseBool(v),
        ["max_local_cpu_size"] = (o, v) => o.MaxLocalCpuSize = ParseGiB(v),
        ["save_unfull_chunk"] = (o, v) => o.SaveUnfullChunk = ConfigParsers.ParseBool(v),
        ["local_disk"] = (o, v) => o.LocalDisk = NullIfEmpty(v),
        ["max_local_disk_size"] = (o, v) => o.MaxLocalDiskSize = ParseGiB(v),
        ["local_disk_serde"] = (o, v) => o.LocalDiskSerde = v,
        ["local_disk_o_direct"] = (o, v) => o.LocalDiskODirect = ConfigParsers.ParseBool(v),
        ["local_disk_fsync"] = (o, v) => o.LocalDiskFsync = ConfigParsers.ParseBool(v),
        ["remote_url"] = (o, v) => o.RemoteUrl = NullIfEmpty(v),
        ["remote_serde"] = (o, v) => o.RemoteSerde = v,
        ["remote_timeout_ms"] = (o, v) => o.RemoteTimeoutMs = ConfigParsers.ParseInt(v),
        ["write_queue_chunks"] = (o, v) => o.WriteQueueChunks = ConfigParsers.ParseInt(v),
        ["verify_memory_checksums"] = (o, v) => o.VerifyMemoryChecksums = ConfigParsers.ParseBool(v),
        ["pool_retained_size"] = (o, v) => o.PoolRetainedBytes = ByteSize.Parse(v),
        ["max_pinned_size"] = (o, v) => o.MaxPinnedBytes = string.IsNullOrEmpty(v) ? null : ByteSize.Parse(v),
        ["cache_policy"] = (o, v) => o.CachePolicy = v,
        ["token_exact_reuse"] = (o, v) => o.TokenExactReuse = ConfigParsers.ParseBool(v),
        ["save_decode_cache"] = (o, v) => o.SaveDecodeCache = ConfigParsers.ParseBool(v),
        ["kv_events_endpoint"] = (o, v) => o.KvEventsEndpoint = NullIfEmpty(v),
        ["kv_events_replay_endpoint"] = (o, v) => o.KvEventsReplayEndpoint = NullIfEmpty(v),
        ["kv_events_topic"] = (o, v) => o.KvEventsTopic = v,
        ["kv_events_buffer_steps"] = (o, v) => o.KvEventsBufferSteps = ConfigParsers.ParseInt(v),
        ["kv_events_max_queue_size"] = (o, v) => o.KvEventsMaxQueueSize = ConfigParsers.ParseInt(v),
    };

    // LMCache keys for features of its vLLM integration that have no meaning here: accepted, ignored, reported.
    private static readonly HashSet<string> IgnoredLMCacheKeys = new(StringComparer.Ordinal)
    {
        "enable_blending", "blend_recompute_ratio", "blend_min_tokens", "blend_special_str", "blend_check_layers",
        "blend_recompute_ratios", "blend_thresholds", "use_layerwise", "enable_p2p", "lookup_url", "distributed_url",
        "enable_controller", "lmcache_instance_id", "controller_url", "lmcache_worker_port", "lmcache_worker_ports",
        "enable_nixl", "enable_pd", "pd_role", "pd_buffer_size", "pd_buffer_device", "pd_peer_host", "pd_peer_init_port",
        "pd_peer_alloc_port", "pd_proxy_host", "pd_proxy_port", "transfer_channel", "nixl_role", "nixl_receiver_host",
        "nixl_receiver_port", "nixl_buffer_size", "nixl_buffer_device", "nixl_enable_gc", "gds_path", "cufile_buffer_size",
        "external_lookup_client", "min_retrieve_tokens", "internal_api_server_enabled",
        "internal_api_server_port_start", "internal_api_server_include_index_list", "priority_limit", "numa_mode",
        "extra_config", "error_handling", "py_enable_gc", "cache_engine_type", "lmcache_instance_id",
        "local_device", "weka_path", "audit_actual_remove", "blocking_timeout_secs", "storage_plugins",
        "enable_async_loading", "enable_xpyd",
    };

    private static readonly ConfigLoader<LMCacheOptions> Loader = CreateLoader();

    /// <summary>The keys this loader understands.</summary>
    public static IReadOnlyCollection<string> Keys => Loader.Keys;

    /// <summary>
    /// Loads options. <paramref name="yamlPath"/> null means <c>LMCACHE_CONFIG_FILE</c> if set, else none;
    /// <paramref name="environment"/> null means the process environment. Throws <see cref="LMCacheConfigurationException"/>.
    /// </summary>
    /// <param name="yamlPath">A YAML file with LMCache keys.</param>
    /// <param name="environment">Environment variables to read <c>LMCACHE_*</c> from.</param>
    /// <param name="overrides">Key/value pairs applied last (command-line options), named "command line" in errors.</param>
    /// <param name="warnings">Receives warnings (ignored LMCache keys).</param>
    public static LMCacheOptions Load(string? yamlPath = null, IDictionary<string, string?>? environment = null,
        IEnumerable<KeyValuePair<string, string>>? overrides = null, ICollection<string>? warnings = null) =>
        Loader.Load(new LMCacheOptions(), yamlPath, environment, overrides?.Select(o => new ConfigValue(o.Key, o.Value, "command line")), warnings,
            (options, _) => options.GetErrors());

    /// <summary>Loads options from YAML text alone (no environment), for tests and tools.</summary>
    public static LMCacheOptions LoadYaml(string yaml, ICollection<string>? warnings = null) =>
        Loader.LoadText(new LMCacheOptions(), yaml, "yaml", warnings, (options, _) => options.GetErrors());

    private static ConfigLoader<LMCacheOptions> CreateLoader()
    {
        var loader = new ConfigLoader<LMCacheOptions>(EnvironmentPrefix, EnvironmentPrefix + "CONFIG_FILE", IgnoredLMCacheKeys);
        foreach (var (key, set) in Setters)
        {
            loader.Add(key, set);
        }

        return loader;
    }

    // LMCache gives sizes in GB as numbers; a size string ("512MB") is accepted too.
    private static double ParseGiB(string v)
    {
        if (double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out var gib))
        {
            return gib;
        }

        return ByteSize.TryParse(v, out var bytes)
            ? (double)bytes / (1L << 30)
            : throw new FormatException($"'{v}' is not a number of GiB or a size such as 512MB");
    }

    private static string? NullIfEmpty(string? v) => string.IsNullOrWhiteSpace(v) ? null : v;
}
