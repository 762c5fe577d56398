using System.Collections;
using System.Globalization;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace LMCacheSharp.Core.Configuration;

/// <summary>
/// Builds <see cref="LMCacheOptions"/> from, in order of precedence (later wins): defaults, a YAML file with LMCache's keys
/// (path given, or <c>LMCACHE_CONFIG_FILE</c>), <c>LMCACHE_*</c> environment variables, and explicit overrides (command
/// line). Unknown keys are errors (with a suggestion); LMCache keys for features this port does not have are reported as
/// warnings and ignored. Every error names its key, its source and the allowed values.
/// </summary>
public static class LMCacheConfigLoader
{
    /// <summary>Prefix of environment variables.</summary>
    public const string EnvironmentPrefix = "LMCACHE_";

    private static readonly Dictionary<string, Action<LMCacheOptions, string>> Setters = new(StringComparer.Ordinal)
    {
        ["chunk_size"] = (o, v) => o.ChunkSize = ParseInt(v),
        ["local_cpu"] = (o, v) => o.LocalCpu = ParseBool(v),
        ["max_local_cpu_size"] = (o, v) => o.MaxLocalCpuSize = ParseGiB(v),
        ["save_unfull_chunk"] = (o, v) => o.SaveUnfullChunk = ParseBool(v),
        ["local_disk"] = (o, v) => o.LocalDisk = NullIfEmpty(v),
        ["max_local_disk_size"] = (o, v) => o.MaxLocalDiskSize = ParseGiB(v),
        ["local_disk_serde"] = (o, v) => o.LocalDiskSerde = v,
        ["local_disk_o_direct"] = (o, v) => o.LocalDiskODirect = ParseBool(v),
        ["local_disk_fsync"] = (o, v) => o.LocalDiskFsync = ParseBool(v),
        ["remote_url"] = (o, v) => o.RemoteUrl = NullIfEmpty(v),
        ["remote_serde"] = (o, v) => o.RemoteSerde = v,
        ["remote_timeout_ms"] = (o, v) => o.RemoteTimeoutMs = ParseInt(v),
        ["write_queue_chunks"] = (o, v) => o.WriteQueueChunks = ParseInt(v),
        ["verify_memory_checksums"] = (o, v) => o.VerifyMemoryChecksums = ParseBool(v),
        ["pool_retained_size"] = (o, v) => o.PoolRetainedBytes = ByteSize.Parse(v),
        ["max_pinned_size"] = (o, v) => o.MaxPinnedBytes = string.IsNullOrEmpty(v) ? null : ByteSize.Parse(v),
        ["cache_policy"] = (o, v) => o.CachePolicy = v,
        ["token_exact_reuse"] = (o, v) => o.TokenExactReuse = ParseBool(v),
        ["save_decode_cache"] = (o, v) => o.SaveDecodeCache = ParseBool(v),
        ["kv_events_endpoint"] = (o, v) => o.KvEventsEndpoint = NullIfEmpty(v),
        ["kv_events_replay_endpoint"] = (o, v) => o.KvEventsReplayEndpoint = NullIfEmpty(v),
        ["kv_events_topic"] = (o, v) => o.KvEventsTopic = v,
        ["kv_events_buffer_steps"] = (o, v) => o.KvEventsBufferSteps = ParseInt(v),
        ["kv_events_max_queue_size"] = (o, v) => o.KvEventsMaxQueueSize = ParseInt(v),
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

    /// <summary>The keys this loader understands.</summary>
    public static IReadOnlyCollection<string> Keys => Setters.Keys;

    /// <summary>
    /// Loads options. <paramref name="yamlPath"/> null means <c>LMCACHE_CONFIG_FILE</c> if set, else none;
    /// <paramref name="environment"/> null means the process environment. Throws <see cref="LMCacheConfigurationException"/>.
    /// </summary>
    /// <param name="yamlPath">A YAML file with LMCache keys.</param>
    /// <param name="environment">Environment variables to read <c>LMCACHE_*</c> from.</param>
    /// <param name="overrides">Key/value pairs applied last (command-line options).</param>
    /// <param name="warnings">Receives warnings (ignored LMCache keys).</param>
    public static LMCacheOptions Load(string? yamlPath = null, IDictionary<string, string?>? environment = null,
        IEnumerable<KeyValuePair<string, string>>? overrides = null, ICollection<string>? warnings = null)
    {
        environment ??= ReadProcessEnvironment();
        var options = new LMCacheOptions();
        var errors = new List<string>();
        yamlPath ??= environment.TryGetValue(EnvironmentPrefix + "CONFIG_FILE", out var envPath) ? NullIfEmpty(envPath) : null;
        if (yamlPath is not null)
        {
            string text;
            try
            {
                text = File.ReadAllText(yamlPath);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new LMCacheConfigurationException($"config file '{yamlPath}': cannot be read: {e.Message}");
            }

            ApplyYaml(options, text, yamlPath, errors, warnings);
        }

        foreach (var (name, value) in environment)
        {
            if (!name.StartsWith(EnvironmentPrefix, StringComparison.Ordinal) || name == EnvironmentPrefix + "CONFIG_FILE" || value is null)
            {
                continue;
            }

            var key = name[EnvironmentPrefix.Length..].ToLowerInvariant();
            if (Setters.ContainsKey(key))
            {
                Apply(options, key, value, $"environment variable {name}", errors, warnings);
            }
            else if (IgnoredLMCacheKeys.Contains(key))
            {
                warnings?.Add($"{name}: LMCache setting not used by LMCacheSharp; ignored");
            }

            // Other LMCACHE_* variables (LMCACHE_LOG_LEVEL, LMCACHE_USE_EXPERIMENTAL...) belong to other tools: not ours to reject.
        }

        if (overrides is not null)
        {
            foreach (var (key, value) in overrides)
            {
                Apply(options, key, value, "command line", errors, warnings);
            }
        }

        // Range checks see the final values: each problem names where its key was last set.
        errors.AddRange(options.GetErrors().Select(e => WithSource(e, options)));
        return errors.Count > 0 ? throw new LMCacheConfigurationException(errors) : options;
    }

    private static string WithSource(string error, LMCacheOptions options)
    {
        var colon = error.IndexOf(':', StringComparison.Ordinal);
        return colon > 0 && options.Sources.TryGetValue(error[..colon], out var where) ? $"{error[..colon]} ({where}){error[colon..]}" : error;
    }

    /// <summary>Loads options from YAML text alone (no environment), for tests and tools.</summary>
    public static LMCacheOptions LoadYaml(string yaml, ICollection<string>? warnings = null)
    {
        var options = new LMCacheOptions();
        var errors = new List<string>();
        ApplyYaml(options, yaml, "yaml", errors, warnings);
        errors.AddRange(options.GetErrors().Select(e => WithSource(e, options)));
        return errors.Count > 0 ? throw new LMCacheConfigurationException(errors) : options;
    }

    private static void ApplyYaml(LMCacheOptions options, string text, string source, List<string> errors, ICollection<string>? warnings)
    {
        var stream = new YamlStream();
        try
        {
            stream.Load(new StringReader(text));
        }
        catch (YamlException e)
        {
            errors.Add($"{source}: not valid YAML at line {e.Start.Line}, column {e.Start.Column}: {e.Message}");
            return;
        }

        if (stream.Documents.Count == 0 || stream.Documents[0].RootNode is YamlScalarNode { Value: null or "" })
        {
            return;
        }

        if (stream.Documents[0].RootNode is not YamlMappingNode root)
        {
            errors.Add($"{source}: the top level must be a mapping of keys to values");
            return;
        }

        foreach (var (keyNode, valueNode) in root.Children)
        {
            var key = (keyNode as YamlScalarNode)?.Value ?? "";
            var where = $"{source} line {keyNode.Start.Line}";
            if (IgnoredLMCacheKeys.Contains(key))
            {
                warnings?.Add($"{key} ({where}): LMCache setting not used by LMCacheSharp; ignored");
                continue;
            }

            if (valueNode is not YamlScalarNode scalar)
            {
                errors.Add(Setters.ContainsKey(key) ? $"{key} ({where}): must be a single value, not a list or mapping" : Unknown(key, where));
                continue;
            }

            var value = scalar.Value ?? "";
            if (scalar.Style == YamlDotNet.Core.ScalarStyle.Plain && value is "~" or "null" or "Null" or "NULL")
            {
                value = "";
            }

            Apply(options, key, value, where, errors, warnings);
        }
    }

    private static void Apply(LMCacheOptions options, string key, string value, string where, List<string> errors, ICollection<string>? warnings)
    {
        if (!Setters.TryGetValue(key, out var setter))
        {
            if (IgnoredLMCacheKeys.Contains(key))
            {
                warnings?.Add($"{key} ({where}): LMCache setting not used by LMCacheSharp; ignored");
                return;
            }

            errors.Add(Unknown(key, where));
            return;
        }

        try
        {
            setter(options, value.Trim());
            options.Sources[key] = where;
        }
        catch (FormatException e)
        {
            errors.Add($"{key} ({where}): {e.Message}");
        }
    }

    private static string Unknown(string key, string where)
    {
        var best = Setters.Keys.OrderBy(k => Distance(k, key)).First();
        var hint = Distance(best, key) <= 3 ? $"; did you mean '{best}'?" : "";
        return $"{key} ({where}): unknown key{hint} Known keys: {string.Join(", ", Setters.Keys)}";
    }

    private static int ParseInt(string v) =>
        int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out var i) ? i : throw new FormatException($"'{v}' is not an integer");

    /// <summary>A boolean as configuration writes it: true/false, 1/0, yes/no, on/off (any case).</summary>
    /// <exception cref="FormatException">Anything else.</exception>
    public static bool ParseBool(string v) => (v ?? throw new ArgumentNullException(nameof(v))).ToLowerInvariant() switch
    {
        "true" or "1" or "yes" or "on" => true,
        "false" or "0" or "no" or "off" => false,
        _ => throw new FormatException($"'{v}' is not a boolean (true/false)"),
    };

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

    private static Dictionary<string, string?> ReadProcessEnvironment()
    {
        var result = new Dictionary<string, string?>(StringComparer.Ordinal);
        foreach (DictionaryEntry entry in Environment.GetEnvironmentVariables())
        {
            result[(string)entry.Key] = entry.Value as string;
        }

        return result;
    }

    private static int Distance(string a, string b)
    {
        var d = new int[a.Length + 1, b.Length + 1];
        for (var i = 0; i <= a.Length; i++)
        {
            d[i, 0] = i;
        }

        for (var j = 0; j <= b.Length; j++)
        {
            d[0, j] = j;
        }

        for (var i = 1; i <= a.Length; i++)
        {
            for (var j = 1; j <= b.Length; j++)
            {
                d[i, j] = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1), d[i - 1, j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1));
            }
        }

        return d[a.Length, b.Length];
    }
}
