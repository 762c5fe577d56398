using LMCacheSharp.Core.Configuration;

namespace LMCacheSharp.Core.Tests;

public class LMCacheConfigLoaderTests
{
    private static readonly Dictionary<string, string?> NoEnvironment = [];

    [Fact]
    public void Reads_lmcache_yaml_keys()
    {
        var options = LMCacheConfigLoader.LoadYaml("""
            chunk_size: 128
            local_cpu: true
            max_local_cpu_size: 2.5
            save_unfull_chunk: True
            remote_url: "lm://127.0.0.1:65432"
            remote_serde: naive
            """);
        Assert.Equal(128, options.ChunkSize);
        Assert.Equal(2.5 * (1L << 30), options.MaxLocalCpuSizeBytes);
        Assert.True(options.SaveUnfullChunk);
        Assert.Equal("lm://127.0.0.1:65432", options.RemoteUrl);
    }

    [Fact]
    public void Max_pinned_size_is_a_size_within_the_memory_tier_and_defaults_to_none_set()
    {
        Assert.Null(LMCacheConfigLoader.LoadYaml("chunk_size: 16").MaxPinnedBytes);
        var options = LMCacheConfigLoader.LoadYaml("max_local_cpu_size: 1\nmax_pinned_size: 256MB");
        Assert.Equal(256L << 20, options.MaxPinnedBytes);
        Assert.Empty(options.GetErrors());
        var e = Assert.Throws<LMCacheConfigurationException>(() => LMCacheConfigLoader.LoadYaml("max_local_cpu_size: 1\nmax_pinned_size: 2GB"));
        Assert.Contains("max_pinned_size", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Environment_overrides_the_file_and_the_command_line_overrides_both()
    {
        var path = Path.GetTempFileName();
        try
        {
            File.WriteAllText(path, "chunk_size: 128\nmax_local_cpu_size: 1\n");
            var env = new Dictionary<string, string?> { ["LMCACHE_CHUNK_SIZE"] = "64", ["LMCACHE_MAX_LOCAL_CPU_SIZE"] = "512MB", ["PATH"] = "/bin" };
            var options = LMCacheConfigLoader.Load(path, env);
            Assert.Equal(64, options.ChunkSize);
            Assert.Equal(512L << 20, options.MaxLocalCpuSizeBytes);

            var overridden = LMCacheConfigLoader.Load(path, env, [new("chunk_size", "32")]);
            Assert.Equal(32, overridden.ChunkSize);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void Config_file_can_come_from_LMCACHE_CONFIG_FILE()
    {
        var path = Path.GetTempFileName();
        try
        {
            File.WriteAllText(path, "chunk_size: 512\n");
            var options = LMCacheConfigLoader.Load(null, new Dictionary<string, string?> { ["LMCACHE_CONFIG_FILE"] = path });
            Assert.Equal(512, options.ChunkSize);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Theory]
    [InlineData("chunk_size: 0", "chunk_size", "1..65536")]
    [InlineData("chunk_size: many", "chunk_size", "not an integer")]
    [InlineData("max_local_cpu_size: -1", "max_local_cpu_size", "(0, 4096]")]
    [InlineData("max_local_cpu_size: lots", "max_local_cpu_size", "GiB")]
    [InlineData("local_cpu: maybe", "local_cpu", "boolean")]
    [InlineData("remote_serde: gzip", "remote_serde", "must be one of")]
    [InlineData("remote_url: 'not a url'", "remote_url", "absolute URL")]
    [InlineData("local_disk: /tmp/x", "max_local_disk_size", "> 0")]
    [InlineData("cache_policy: RANDOM", "cache_policy", "LRU, LFU, FIFO or MRU")]
    [InlineData("chunk_sise: 256", "chunk_sise", "did you mean 'chunk_size'")]
    [InlineData("chunk_size: [1, 2]", "chunk_size", "single value")]
    [InlineData("chunk_size: 1\n  bad: [", "yaml", "not valid YAML")]
    [InlineData("- a\n- b", "yaml", "mapping")]
    [InlineData("kv_events_endpoint: 127.0.0.1:5557", "kv_events_endpoint", "tcp://HOST:PORT")]
    [InlineData("kv_events_replay_endpoint: tcp://*:5558", "kv_events_replay_endpoint", "kv_events_endpoint is not")]
    [InlineData("kv_events_endpoint: tcp://*:5557\nkv_events_replay_endpoint: tcp://*:5557", "kv_events_replay_endpoint", "another port")]
    [InlineData("kv_events_buffer_steps: 0", "kv_events_buffer_steps", "1..1000000")]
    [InlineData("kv_events_max_queue_size: 0", "kv_events_max_queue_size", "1..10000000")]
    public void Bad_values_fail_with_a_message_naming_the_key_and_range(string yaml, string key, string expected)
    {
        var e = Assert.Throws<LMCacheConfigurationException>(() => LMCacheConfigLoader.LoadYaml(yaml));
        Assert.Contains(key, e.Message, StringComparison.Ordinal);
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void KV_event_keys_come_from_the_file_the_environment_and_the_command_line()
    {
        var env = new Dictionary<string, string?> { ["LMCACHE_KV_EVENTS_ENDPOINT"] = "tcp://*:5557", ["LMCACHE_KV_EVENTS_TOPIC"] = "kv@a" };
        var options = LMCacheConfigLoader.Load(null, env, [new("kv_events_replay_endpoint", "tcp://127.0.0.1:5558")]);
        Assert.Equal("tcp://*:5557", options.KvEventsEndpoint);
        Assert.Equal("tcp://127.0.0.1:5558", options.KvEventsReplayEndpoint);
        Assert.Equal("kv@a", options.KvEventsTopic);
        Assert.Equal(10_000, options.KvEventsBufferSteps);
        Assert.Null(new LMCacheOptions().KvEventsEndpoint); // off unless asked for
    }

    [Theory]
    [InlineData("LRU", Storage.EvictionPolicy.Lru)]
    [InlineData("lfu", Storage.EvictionPolicy.Lfu)]
    [InlineData("FIFO", Storage.EvictionPolicy.Fifo)]
    [InlineData("MRU", Storage.EvictionPolicy.Mru)]
    public void LMCache_cache_policies_are_accepted(string value, Storage.EvictionPolicy expected) =>
        Assert.Equal(expected, LMCacheConfigLoader.LoadYaml("cache_policy: " + value).EvictionPolicy);

    [Fact]
    public void Bad_environment_value_names_the_variable()
    {
        var e = Assert.Throws<LMCacheConfigurationException>(() =>
            LMCacheConfigLoader.Load(null, new Dictionary<string, string?> { ["LMCACHE_CHUNK_SIZE"] = "-5" }));
        Assert.Contains("chunk_size", e.Message, StringComparison.Ordinal);
        var parse = Assert.Throws<LMCacheConfigurationException>(() =>
            LMCacheConfigLoader.Load(null, new Dictionary<string, string?> { ["LMCACHE_LOCAL_CPU"] = "perhaps" }));
        Assert.Contains("LMCACHE_LOCAL_CPU", parse.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void LMCache_keys_for_absent_features_are_warnings_not_errors()
    {
        var warnings = new List<string>();
        var options = LMCacheConfigLoader.LoadYaml("chunk_size: 256\nenable_blending: true\nextra_config:\n  a: 1\n", warnings);
        Assert.Equal(256, options.ChunkSize);
        Assert.Equal(2, warnings.Count);
        Assert.Contains(warnings, w => w.Contains("enable_blending", StringComparison.Ordinal));
    }

    [Fact]
    public void All_errors_are_reported_at_once()
    {
        var e = Assert.Throws<LMCacheConfigurationException>(() => LMCacheConfigLoader.LoadYaml("chunk_size: 0\nmax_local_cpu_size: 0\n"));
        Assert.Equal(2, e.Errors.Count);
    }

    [Fact]
    public void Empty_file_and_no_environment_give_the_defaults()
    {
        var options = LMCacheConfigLoader.Load(null, NoEnvironment);
        Assert.Equal(256, options.ChunkSize);
        Assert.True(options.LocalCpu);
        Assert.Equal(5L << 30, options.MaxLocalCpuSizeBytes);
        Assert.False(options.SaveUnfullChunk);
        Assert.Equal(256, LMCacheConfigLoader.LoadYaml("").ChunkSize);
    }

    [Theory]
    [InlineData("4GB", 4L << 30)]
    [InlineData("512 MiB", 512L << 20)]
    [InlineData("1.5g", 3L << 29)]
    [InlineData("4096", 4096)]
    [InlineData("10kb", 10240)]
    public void ByteSize_parses_human_sizes(string text, long bytes) => Assert.Equal(bytes, ByteSize.Parse(text));

    [Theory]
    [InlineData("")]
    [InlineData("-1GB")]
    [InlineData("4XB")]
    [InlineData("GB")]
    public void ByteSize_rejects_garbage(string text) => Assert.False(ByteSize.TryParse(text, out _));
}
