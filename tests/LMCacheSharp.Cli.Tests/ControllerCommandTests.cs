namespace LMCacheSharp.Cli.Tests;

public sealed class ControllerCommandTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task Help_lists_the_flags()
    {
        var (code, stdout, _) = await LmcacheProcess.RunAsync(Bound, "controller", "--help");
        Assert.Equal(0, code);
        foreach (var flag in new[] { "--port", "--host", "--auth-token", "--heartbeat-interval", "--heartbeat-timeout", "--max-body-size" })
        {
            Assert.Contains(flag, stdout, StringComparison.Ordinal);
        }
    }

    [Theory]
    [InlineData("--port", "70000", "--port: must be an integer 0..65535, got '70000'")]
    [InlineData("--port", "nine", "--port: must be an integer 0..65535, got 'nine'")]
    [InlineData("--heartbeat-timeout", "soon", "--heartbeat-timeout: not a number of seconds: 'soon'")]
    [InlineData("--max-body-size", "8XB", "--max-body-size: '8XB' is not a size")]
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
        Assert.Contains("--heartbeat-interval: must be below the heartbeat timeout", stderr, StringComparison.Ordinal);

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
}
