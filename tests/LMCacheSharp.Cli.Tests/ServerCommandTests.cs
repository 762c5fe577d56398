namespace LMCacheSharp.Cli.Tests;

public sealed class ServerCommandTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task Every_problem_of_the_environment_and_the_flags_is_reported_at_once_with_its_source()
    {
        var environment = new Dictionary<string, string>
        {
            ["LMCACHE_SERVER_PORT"] = "not-a-port",
            ["LMCACHE_SERVER_MIN_DATA_RATE"] = "2GB",
            ["LMCACHE_SERVER_MAX_CONNECTIONS"] = "7", // valid: no problem reported for it
        };
        var (code, stdout, stderr) = await LmcacheProcess.RunAsync(Bound, environment, "server",
            "--capacity", "8XB", "--max-inflight-put", "10", "--max-auth-failures", "0", "--frame-timeout", "soon", "--max-children", "0");
        Assert.Equal(2, code);
        Assert.Contains("lmcache server: invalid configuration:", stderr, StringComparison.Ordinal);
        Assert.Contains("port (LMCACHE_SERVER_PORT): 'not-a-port' is not an integer", stderr, StringComparison.Ordinal);
        Assert.Contains("min_data_rate (LMCACHE_SERVER_MIN_DATA_RATE): must be in 0..1GB/s", stderr, StringComparison.Ordinal);
        Assert.Contains("capacity (--capacity): '8XB' is not a size", stderr, StringComparison.Ordinal);
        Assert.Contains("max_inflight_put (--max-inflight-put): must be in 1MB..1TB, got 10 bytes", stderr, StringComparison.Ordinal);
        Assert.Contains("max_auth_failures (--max-auth-failures): must be in 1..1000, got 0", stderr, StringComparison.Ordinal);
        Assert.Contains("frame_timeout (--frame-timeout): 'soon' is not a number of seconds", stderr, StringComparison.Ordinal);
        Assert.Contains("max_children (--max-children): must be in 1..16777216, got 0", stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("max_connections", stderr, StringComparison.Ordinal);
        Assert.Equal(8, stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length); // the heading and seven problems
        Assert.DoesNotContain("   at ", stderr, StringComparison.Ordinal); // no stack trace
        Assert.Empty(stdout);
    }

    [Fact]
    public async Task The_command_line_wins_over_the_environment_and_names_itself()
    {
        var environment = new Dictionary<string, string> { ["LMCACHE_SERVER_MAX_AUTH_FAILURES"] = "5000" };
        var (code, _, stderr) = await LmcacheProcess.RunAsync(Bound, environment, "server", "--max-auth-failures", "2000");
        Assert.Equal(2, code);
        Assert.Contains("max_auth_failures (--max-auth-failures): must be in 1..1000, got 2000", stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("LMCACHE_SERVER_MAX_AUTH_FAILURES", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Disk_settings_are_checked_with_their_sources_and_need_a_disk()
    {
        var environment = new Dictionary<string, string> { ["LMCACHE_SERVER_DISK_SHUTDOWN_FLUSH_TIMEOUT"] = "601" };
        var (code, _, stderr) = await LmcacheProcess.RunAsync(Bound, environment, "server", "--disk-write-queue-records", "5", "--disk-fsync");
        Assert.Equal(2, code);
        Assert.Contains("disk_write_queue_records (--disk-write-queue-records): needs disk, the directory (--disk DIR or LMCACHE_SERVER_DISK)", stderr, StringComparison.Ordinal);
        Assert.Contains("disk_fsync (--disk-fsync): needs disk", stderr, StringComparison.Ordinal);
        Assert.Contains("disk_shutdown_flush_timeout (LMCACHE_SERVER_DISK_SHUTDOWN_FLUSH_TIMEOUT): needs disk", stderr, StringComparison.Ordinal);

        var dir = Directory.CreateTempSubdirectory("lmcache-cli-server-");
        try
        {
            (code, _, stderr) = await LmcacheProcess.RunAsync(Bound, environment, "server", "--port", "0", "--disk", dir.FullName,
                "--disk-write-queue-records", "5", "--disk-fsync", "maybe", "--disk-capacity", "lots");
            Assert.Equal(2, code);
            Assert.Contains("disk_write_queue_records (--disk-write-queue-records): must be in 16..16777216, got 5", stderr, StringComparison.Ordinal);
            Assert.Contains("disk_shutdown_flush_timeout (LMCACHE_SERVER_DISK_SHUTDOWN_FLUSH_TIMEOUT): must be in 0..10 min", stderr, StringComparison.Ordinal);
            Assert.Contains("disk_fsync (--disk-fsync): 'maybe' is not a boolean", stderr, StringComparison.Ordinal);
            Assert.Contains("disk_capacity (--disk-capacity): 'lots' is not a size", stderr, StringComparison.Ordinal);
            Assert.DoesNotContain("needs disk", stderr, StringComparison.Ordinal);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    /// <summary>Every key of the server's configuration: its flag (the key with dashes) and its variable (LMCACHE_SERVER_ and the key).</summary>
    private static readonly string[] Keys =
    [
        "host", "port", "capacity", "auth_token", "metrics_port", "max_connections", "frame_timeout", "max_value_size", "max_inflight_put",
        "min_data_rate", "max_auth_failures", "max_children", "max_child_tokens", "disk", "disk_capacity", "disk_write_queue",
        "disk_write_queue_records", "disk_shutdown_flush_timeout", "disk_fsync",
    ];

    [Fact]
    public async Task Help_lists_every_flag_with_its_variable_and_the_config_file()
    {
        var (code, stdout, _) = await LmcacheProcess.RunAsync(Bound, "server", "--help");
        Assert.Equal(0, code);
        foreach (var key in Keys)
        {
            Assert.Contains("--" + key.Replace('_', '-') + " ", stdout, StringComparison.Ordinal);
            Assert.Contains("LMCACHE_SERVER_" + key.ToUpperInvariant(), stdout, StringComparison.Ordinal);
        }

        Assert.Contains("--config", stdout, StringComparison.Ordinal);
        Assert.Contains("LMCACHE_SERVER_CONFIG_FILE", stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_file_then_the_environment_then_the_flags_win_each_named_as_the_source()
    {
        // Out-of-range values in every source show which one was read: each problem names where its value came from.
        var file = Path.Combine(LmcacheProcess.Home, "server-precedence.yaml");
        Directory.CreateDirectory(LmcacheProcess.Home);
        await File.WriteAllTextAsync(file, "max_auth_failures: 1001\nmax_connections: 0\nmax_children: 0\n");
        var environment = new Dictionary<string, string>
        {
            ["LMCACHE_SERVER_MAX_CONNECTIONS"] = "100001",
            ["LMCACHE_SERVER_MAX_CHILDREN"] = "16777217",
        };
        var (code, stdout, stderr) = await LmcacheProcess.RunAsync(Bound, environment, "server", "--config", file, "--max-children", "-1");
        Assert.Equal(2, code);
        Assert.Contains($"max_auth_failures ({file} line 1): must be in 1..1000, got 1001", stderr, StringComparison.Ordinal); // the file alone
        Assert.Contains("max_connections (LMCACHE_SERVER_MAX_CONNECTIONS): must be in 1..100000, got 100001", stderr, StringComparison.Ordinal); // env over file
        Assert.Contains("max_children (--max-children): must be in 1..16777216, got -1", stderr, StringComparison.Ordinal); // flag over both
        Assert.Equal(4, stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length); // the heading and three problems
        Assert.Empty(stdout);
    }

    [Fact]
    public async Task A_config_file_from_the_variable_starts_the_server_with_its_settings()
    {
        var file = Path.Combine(LmcacheProcess.Home, "server-start.json");
        Directory.CreateDirectory(LmcacheProcess.Home);
        await File.WriteAllTextAsync(file, """{ "host": "127.0.0.1", "port": 65431, "capacity": "96MB" }""");
        var environment = new Dictionary<string, string> { ["LMCACHE_SERVER_CONFIG_FILE"] = file, ["LMCACHE_SERVER_CAPACITY"] = "80MB" };
        await using var server = await RunningLmcache.StartAsync(Bound, environment, "dotnet", LmcacheProcess.DllPath, "server", "--port", "0");
        Assert.StartsWith("lm://127.0.0.1:", server.Address, StringComparison.Ordinal);
        Assert.DoesNotContain(":65431", server.Address, StringComparison.Ordinal); // the flag's port 0 won over the file's
        Assert.Contains("capacity 80.0 MiB", server.Output, StringComparison.Ordinal); // the variable won over the file
    }

    [Theory]
    [InlineData("--prot", "1", "--prot")]
    [InlineData("--capacity", "lots", "capacity (--capacity): 'lots' is not a size")]
    [InlineData("--port", "many", "port (--port): 'many' is not an integer")]
    public async Task A_bad_flag_exits_nonzero_naming_it(string flag, string value, string problem)
    {
        var (code, stdout, stderr) = await LmcacheProcess.RunAsync(Bound, "server", flag, value);
        Assert.NotEqual(0, code);
        Assert.Contains(problem, stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("lmcache server: lm://", stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task An_unknown_key_in_the_file_is_an_error_with_a_suggestion()
    {
        var file = Path.Combine(LmcacheProcess.Home, "server-unknown.yaml");
        Directory.CreateDirectory(LmcacheProcess.Home);
        await File.WriteAllTextAsync(file, "capacty: 1GB\n");
        var (code, _, stderr) = await LmcacheProcess.RunAsync(Bound, "server", "--config", file);
        Assert.Equal(2, code);
        Assert.Contains($"capacty ({file} line 1): unknown key; did you mean 'capacity'?", stderr, StringComparison.Ordinal);
    }
}
