using LMCacheSharp.Core.Configuration;

namespace LMCacheSharp.Server.Tests;

public sealed class CacheServerConfigLoaderTests : IDisposable
{
    private static readonly Dictionary<string, string?> NoEnvironment = [];
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("lmcache-server-config-");

    public void Dispose() => _dir.Delete(recursive: true);

    private string File(string name, string text)
    {
        var path = Path.Combine(_dir.FullName, name);
        System.IO.File.WriteAllText(path, text);
        return path;
    }

    private static ConfigValue Flag(string key, string value) => new(key, value, "--" + key.Replace('_', '-'));

    [Fact]
    public void The_file_then_the_environment_then_the_flags_each_win_over_the_one_before()
    {
        var path = File("server.yaml", "port: 1001\ncapacity: 64MB\nmax_connections: 10\nmax_auth_failures: 5\n");
        var environment = new Dictionary<string, string?>
        {
            ["LMCACHE_SERVER_CAPACITY"] = "128MB",
            ["LMCACHE_SERVER_MAX_CONNECTIONS"] = "20",
            ["LMCACHE_SERVER_MAX_AUTH_FAILURES"] = "6",
        };
        var options = CacheServerConfigLoader.Load(path, environment, [Flag("max_auth_failures", "7")]);
        Assert.Equal(1001, options.Port); // the file alone
        Assert.Equal(128L << 20, options.CapacityBytes); // the environment over the file
        Assert.Equal(20, options.MaxConnections);
        Assert.Equal(7, options.MaxAuthFailures); // the flag over both
        Assert.Equal("127.0.0.1", options.Host); // the default
    }

    [Fact]
    public void A_json_file_works_as_well_and_can_come_from_LMCACHE_SERVER_CONFIG_FILE()
    {
        var path = File("server.json", """{ "port": 0, "capacity": "2GB", "disk": "cache", "disk_fsync": true, "frame_timeout": 0 }""");
        var options = CacheServerConfigLoader.Load(null, new Dictionary<string, string?> { ["LMCACHE_SERVER_CONFIG_FILE"] = path });
        Assert.Equal(0, options.Port);
        Assert.Equal(2L << 30, options.CapacityBytes);
        Assert.Equal(Path.GetFullPath("cache"), options.Disk?.Directory);
        Assert.True(options.Disk?.Fsync);
        Assert.Equal(Timeout.InfiniteTimeSpan, options.FrameTimeout); // 0: no limit
    }

    [Fact]
    public void Every_problem_of_every_source_is_reported_at_once_naming_key_and_source()
    {
        var path = File("server.yaml", "port: 70000\ncapacty: 1GB\nmax_children: [1, 2]\n");
        var environment = new Dictionary<string, string?>
        {
            ["LMCACHE_SERVER_MIN_DATA_RATE"] = "2GB",
            ["LMCACHE_SERVER_FRAME_TIMEOUT"] = "soon",
            ["LMCACHE_SERVER_MAX_CONNECTIONS"] = "7", // valid: no problem
        };
        var e = Assert.Throws<LMCacheConfigurationException>(() => CacheServerConfigLoader.Load(path, environment,
            [Flag("capacity", "8XB"), Flag("max_inflight_put", "10"), Flag("max_value_size", "0")]));
        Assert.Equal(
        [
            $"capacty ({path} line 2): unknown key; did you mean 'capacity'? Known keys: {string.Join(", ", CacheServerConfigLoader.Keys)}",
            $"max_children ({path} line 3): must be a single value, not a list or mapping",
            "frame_timeout (LMCACHE_SERVER_FRAME_TIMEOUT): 'soon' is not a number of seconds (0..1000000)",
            "capacity (--capacity): '8XB' is not a size: use a number with an optional unit B, KB, MB, GB or TB (binary), e.g. 4GB",
            $"max_value_size (--max-value-size): must be in 1..{Protocol.ProtocolLimits.ValueBytesCeiling} bytes, got 0",
            $"port ({path} line 1): must be in 0..65535, got 70000",
            "max_inflight_put (--max-inflight-put): must be in 1MB..1TB, got 10 bytes",
            "min_data_rate (LMCACHE_SERVER_MIN_DATA_RATE): must be in 0..1GB/s, got 2147483648 bytes/s",
        ], e.Errors);
    }

    [Fact]
    public void An_unknown_key_on_the_command_line_is_an_error_and_an_unknown_variable_is_left_alone()
    {
        var environment = new Dictionary<string, string?> { ["LMCACHE_SERVER_URL"] = "lm://elsewhere:1", ["LMCACHE_CHUNK_SIZE"] = "x" };
        Assert.Equal(65432, CacheServerConfigLoader.Load(null, environment).Port);
        var e = Assert.Throws<LMCacheConfigurationException>(() => CacheServerConfigLoader.Load(null, environment, [new("prot", "1", "--prot")]));
        Assert.StartsWith("prot (--prot): unknown key; did you mean 'port'?", Assert.Single(e.Errors), StringComparison.Ordinal);
    }

    [Fact]
    public void An_empty_variable_is_an_unset_one()
    {
        var options = CacheServerConfigLoader.Load(null, new Dictionary<string, string?> { ["LMCACHE_SERVER_PORT"] = "", ["LMCACHE_SERVER_AUTH_TOKEN"] = " " });
        Assert.Equal(65432, options.Port);
        Assert.Null(options.AuthToken);
    }

    [Fact]
    public void Disk_settings_need_the_disk_and_are_checked_with_it()
    {
        var environment = new Dictionary<string, string?> { ["LMCACHE_SERVER_DISK_SHUTDOWN_FLUSH_TIMEOUT"] = "601" };
        var e = Assert.Throws<LMCacheConfigurationException>(() => CacheServerConfigLoader.Load(null, environment,
            [Flag("disk_write_queue_records", "5"), Flag("disk_fsync", "true")]));
        Assert.Equal(
        [
            "disk_write_queue_records (--disk-write-queue-records): needs disk, the directory (--disk DIR or LMCACHE_SERVER_DISK)",
            "disk_shutdown_flush_timeout (LMCACHE_SERVER_DISK_SHUTDOWN_FLUSH_TIMEOUT): needs disk, the directory (--disk DIR or LMCACHE_SERVER_DISK)",
            "disk_fsync (--disk-fsync): needs disk, the directory (--disk DIR or LMCACHE_SERVER_DISK)",
        ], e.Errors);

        e = Assert.Throws<LMCacheConfigurationException>(() => CacheServerConfigLoader.Load(null, environment,
            [Flag("disk", _dir.FullName), Flag("disk_write_queue_records", "5"), Flag("disk_fsync", "maybe"), Flag("disk_capacity", "lots")]));
        Assert.Contains("disk_write_queue_records (--disk-write-queue-records): must be in 16..16777216, got 5", e.Errors);
        Assert.Contains("disk_shutdown_flush_timeout (LMCACHE_SERVER_DISK_SHUTDOWN_FLUSH_TIMEOUT): must be in 0..10 min, got 00:10:01", e.Errors);
        Assert.Contains("disk_fsync (--disk-fsync): 'maybe' is not a boolean (true/false)", e.Errors);
        Assert.Contains(e.Errors, x => x.StartsWith("disk_capacity (--disk-capacity): 'lots' is not a size", StringComparison.Ordinal));
        Assert.Equal(4, e.Errors.Count);

        var bad = Assert.Throws<LMCacheConfigurationException>(() => CacheServerConfigLoader.Load(null, NoEnvironment, [Flag("disk", "file://")]));
        Assert.Equal("disk (--disk): 'file://' names no directory", Assert.Single(bad.Errors));
    }

    [Fact]
    public void Max_value_size_sets_the_protocol_limits()
    {
        var options = CacheServerConfigLoader.Load(null, NoEnvironment, [Flag("max_value_size", "16MB")]);
        Assert.Equal(16 << 20, options.Limits.MaxValueBytes);
        Assert.Equal((16 << 20) + (1 << 20), options.Limits.MaxFrameBytes);
        Assert.Empty(options.GetErrors());
    }

    [Fact]
    public void Pins_and_salt_quotas_load_from_flags_and_variables_and_bad_entries_never_repeat_the_salt()
    {
        var environment = new Dictionary<string, string?> { ["LMCACHE_SERVER_DEFAULT_SALT_QUOTA"] = "8MB" };
        var options = CacheServerConfigLoader.Load(null, environment,
            [Flag("capacity", "64MB"), Flag("max_pinned", "16MB"), Flag("salt_quota", "tenant-a=4MB, tenant-b = 2MB")]);
        Assert.Equal(16L << 20, options.MaxPinnedBytes);
        Assert.Equal(new Dictionary<string, long> { ["tenant-a"] = 4L << 20, ["tenant-b"] = 2L << 20 }, options.SaltQuotas);
        Assert.Equal(8L << 20, options.DefaultSaltQuotaBytes);

        var bad = Assert.Throws<LMCacheConfigurationException>(() => CacheServerConfigLoader.Load(null, NoEnvironment,
            [Flag("salt_quota", "secret-one=4MB,secret-one=1MB"), Flag("max_pinned", "2GB")]));
        Assert.Contains("salt_quota (--salt-quota): entry 2 names a salt given before", bad.Errors);
        Assert.Contains(bad.Errors, e => e.StartsWith("max_pinned (--max-pinned): must be in 0..the capac", StringComparison.Ordinal)); // over the 1GB default capacity
        Assert.DoesNotContain(bad.Errors, e => e.Contains("secret-one", StringComparison.Ordinal));
        var malformed = Assert.Throws<LMCacheConfigurationException>(() => CacheServerConfigLoader.Load(null, NoEnvironment, [Flag("salt_quota", "secret-two")]));
        Assert.Equal("salt_quota (--salt-quota): entry 1 is not SALT=SIZE (e.g. tenant-a=2GB)", Assert.Single(malformed.Errors));
    }

    [Fact]
    public void Every_key_has_its_variable()
    {
        Assert.Equal("LMCACHE_SERVER_MAX_INFLIGHT_PUT", CacheServerConfigLoader.VariableOf("max_inflight_put"));
        Assert.Equal(22, CacheServerConfigLoader.Keys.Count);
        Assert.Empty(new CacheServerOptions().GetErrors());
        Assert.Empty(CacheServerConfigLoader.Load(null, NoEnvironment).GetErrors()); // defaults load
    }
}
