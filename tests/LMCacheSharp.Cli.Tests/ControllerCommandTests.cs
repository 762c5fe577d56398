namespace LMCacheSharp.Cli.Tests;

public sealed class ControllerCommandTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task Help_lists_the_flags()
    {
        var (code, stdout, _) = await LmcacheProcess.RunAsync(Bound, "controller", "--help");
        Assert.Equal(0, code);
        foreach (var key in new[] { "port", "host", "auth_token", "heartbeat_interval", "heartbeat_timeout", "max_body_size" })
        {
            Assert.Contains("--" + key.Replace('_', '-') + " ", stdout, StringComparison.Ordinal);
            Assert.Contains("LMCACHE_CONTROLLER_" + key.ToUpperInvariant(), stdout, StringComparison.Ordinal);
        }

        Assert.Contains("--config", stdout, StringComparison.Ordinal);
        Assert.Contains("LMCACHE_CONTROLLER_CONFIG_FILE", stdout, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("--port", "70000", "port (--port): must be 0..65535, got 70000")]
    [InlineData("--port", "nine", "port (--port): 'nine' is not an integer")]
    [InlineData("--heartbeat-timeout", "soon", "heartbeat_timeout (--heartbeat-timeout): 'soon' is not a number of seconds")]
    [InlineData("--max-body-size", "8XB", "max_body_size (--max-body-size): '8XB' is not a size")]
    public async Task A_bad_flag_exits_2_naming_the_problem(string flag, string value, string problem)
    {
        var (code, stdout, stderr) = await LmcacheProcess.RunAsync(Bound, "controller", flag, value);
        Assert.Equal(2, code);
        Assert.Contains("lmcache controller: invalid configuration:", stderr, StringComparison.Ordinal);
        Assert.Contains(problem, stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", stderr, StringComparison.Ordinal);
        Assert.Empty(stdout);
    }

    [Fact]
    public async Task An_interval_not_below_the_timeout_and_a_busy_port_are_refused()
    {
        var (code, _, stderr) = await LmcacheProcess.RunAsync(Bound, "controller", "--heartbeat-interval", "20", "--heartbeat-timeout", "10");
        Assert.Equal(2, code);
        Assert.Contains("heartbeat_interval (--heartbeat-interval): must be below the heartbeat timeout", stderr, StringComparison.Ordinal);

        using var busy = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        busy.Start();
        var port = ((System.Net.IPEndPoint)busy.LocalEndpoint).Port;
        (code, _, stderr) = await LmcacheProcess.RunAsync(Bound, "controller", "--port", port.ToString(System.Globalization.CultureInfo.InvariantCulture));
        Assert.Equal(2, code);
        Assert.Contains($"port {port} is in use", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task An_unknown_flag_exits_nonzero_naming_it()
    {
        var (code, _, stderr) = await LmcacheProcess.RunAsync(Bound, "controller", "--prot", "9300");
        Assert.NotEqual(0, code);
        Assert.Contains("--prot", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_file_then_the_environment_then_the_flags_win_and_every_problem_is_reported_at_once()
    {
        var file = Path.Combine(LmcacheProcess.Home, "controller-precedence.yaml");
        Directory.CreateDirectory(LmcacheProcess.Home);
        await File.WriteAllTextAsync(file, "port: 70000\nheartbeat_timeout: 0\nmax_body_size: 1B\nheartbeat_intervall: 1\n");
        var environment = new Dictionary<string, string> { ["LMCACHE_CONTROLLER_HEARTBEAT_TIMEOUT"] = "4000", ["LMCACHE_CONTROLLER_MAX_BODY_SIZE"] = "512MB" };
        var (code, stdout, stderr) = await LmcacheProcess.RunAsync(Bound, environment, "controller", "--config", file, "--max-body-size", "300MB");
        Assert.Equal(2, code);
        Assert.Contains($"heartbeat_intervall ({file} line 4): unknown key; did you mean 'heartbeat_interval'?", stderr, StringComparison.Ordinal);
        Assert.Contains($"port ({file} line 1): must be 0..65535, got 70000", stderr, StringComparison.Ordinal);
        Assert.Contains("heartbeat_timeout (LMCACHE_CONTROLLER_HEARTBEAT_TIMEOUT): must be 0.2..3600 s, got 4000 s", stderr, StringComparison.Ordinal);
        Assert.Contains("max_body_size (--max-body-size): must be 1KB..256MB, got 314572800 bytes", stderr, StringComparison.Ordinal);
        Assert.Equal(5, stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length); // the heading and four problems
        Assert.Empty(stdout);
    }
}
