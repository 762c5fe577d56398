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
        Assert.Contains("port (LMCACHE_SERVER_PORT): not an integer: 'not-a-port'", stderr, StringComparison.Ordinal);
        Assert.Contains("min data rate (LMCACHE_SERVER_MIN_DATA_RATE): must be in 0..1GB/s", stderr, StringComparison.Ordinal);
        Assert.Contains("capacity (--capacity): '8XB' is not a size", stderr, StringComparison.Ordinal);
        Assert.Contains("max in-flight put bytes (--max-inflight-put): must be in 1MB..1TB, got 10 bytes", stderr, StringComparison.Ordinal);
        Assert.Contains("max auth failures (--max-auth-failures): must be in 1..1000, got 0", stderr, StringComparison.Ordinal);
        Assert.Contains("frame timeout (--frame-timeout): not a number of seconds", stderr, StringComparison.Ordinal);
        Assert.Contains("max children (--max-children): must be in 1..16777216, got 0", stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("max connections", stderr, StringComparison.Ordinal);
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
        Assert.Contains("max auth failures (--max-auth-failures): must be in 1..1000, got 2000", stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("LMCACHE_SERVER_MAX_AUTH_FAILURES", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Disk_settings_are_checked_with_their_sources_and_need_a_disk()
    {
        var environment = new Dictionary<string, string> { ["LMCACHE_SERVER_DISK_SHUTDOWN_FLUSH_TIMEOUT"] = "601" };
        var (code, _, stderr) = await LmcacheProcess.RunAsync(Bound, environment, "server", "--disk-write-queue-records", "5", "--disk-fsync");
        Assert.Equal(2, code);
        Assert.Contains("--disk-write-queue-records needs --disk DIR", stderr, StringComparison.Ordinal);
        Assert.Contains("--disk-fsync needs --disk DIR", stderr, StringComparison.Ordinal);
        Assert.Contains("LMCACHE_SERVER_DISK_SHUTDOWN_FLUSH_TIMEOUT needs --disk DIR", stderr, StringComparison.Ordinal);

        var dir = Directory.CreateTempSubdirectory("lmcache-cli-server-");
        try
        {
            (code, _, stderr) = await LmcacheProcess.RunAsync(Bound, environment, "server", "--port", "0", "--disk", dir.FullName,
                "--disk-write-queue-records", "5", "--disk-fsync", "maybe", "--disk-capacity", "lots");
            Assert.Equal(2, code);
            Assert.Contains("disk write queue records (--disk-write-queue-records): must be in 16..16777216, got 5", stderr, StringComparison.Ordinal);
            Assert.Contains("disk shutdown flush timeout (LMCACHE_SERVER_DISK_SHUTDOWN_FLUSH_TIMEOUT): must be in 0..10 min", stderr, StringComparison.Ordinal);
            Assert.Contains("disk fsync (--disk-fsync): 'maybe' is not a boolean", stderr, StringComparison.Ordinal);
            Assert.Contains("disk capacity (--disk-capacity): 'lots' is not a size", stderr, StringComparison.Ordinal);
            Assert.DoesNotContain("needs --disk", stderr, StringComparison.Ordinal);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public async Task Help_lists_every_limit_with_its_variable()
    {
        var (code, stdout, _) = await LmcacheProcess.RunAsync(Bound, "server", "--help");
        Assert.Equal(0, code);
        foreach (var (flag, variable) in new[]
        {
            ("--max-inflight-put", "LMCACHE_SERVER_MAX_INFLIGHT_PUT"),
            ("--min-data-rate", "LMCACHE_SERVER_MIN_DATA_RATE"),
            ("--max-auth-failures", "LMCACHE_SERVER_MAX_AUTH_FAILURES"),
            ("--disk-write-queue-records", "LMCACHE_SERVER_DISK_WRITE_QUEUE_RECORDS"),
            ("--disk-shutdown-flush-timeout", "LMCACHE_SERVER_DISK_SHUTDOWN_FLUSH_TIMEOUT"),
        })
        {
            Assert.Contains(flag, stdout, StringComparison.Ordinal);
            Assert.Contains(variable, stdout, StringComparison.Ordinal);
        }
    }
}
