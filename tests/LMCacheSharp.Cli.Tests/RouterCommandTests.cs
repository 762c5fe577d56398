using System.Net;
using System.Net.Sockets;

namespace LMCacheSharp.Cli.Tests;

public sealed class RouterCommandTests
{
    [Fact]
    public async Task Help_lists_the_policies_and_flags()
    {
        var (code, stdout, _) = await LmcacheProcess.RunAsync(TimeSpan.FromSeconds(60), "router", "--help");
        Assert.Equal(0, code);
        foreach (var text in new[] { "--instances", "--controller", "--controller-token", "--controller-interval", "--policy", "kv-aware", "round-robin", "session", "least-loaded", "--lookup-timeout", "--kv-tie-tokens", "--kv-load-weight", "--max-body-size" })
        {
            Assert.Contains(text, stdout, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task A_bad_policy_is_exit_code_2_with_the_value_named()
    {
        var (code, _, stderr) = await LmcacheProcess.RunAsync(TimeSpan.FromSeconds(60), "router", "--port", "0", "--instances", "http://127.0.0.1:9", "--policy", "random");
        Assert.Equal(2, code);
        Assert.Contains("--policy: must be kv-aware, round-robin, session or least-loaded, got 'random'", stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Bad_instances_and_every_other_problem_are_reported_at_once()
    {
        var (code, _, stderr) = await LmcacheProcess.RunAsync(TimeSpan.FromSeconds(60), "router", "--port", "0",
            "--instances", "http://127.0.0.1:9,ftp://host:1,http://h:2/v1", "--lookup-timeout", "soon", "--kv-tie-tokens", "-5", "--max-body-size", "huge");
        Assert.Equal(2, code);
        Assert.Contains("--instances: 'ftp://host:1/' must be an http:// or https:// URL", stderr, StringComparison.Ordinal);
        Assert.Contains("--instances: 'http://h:2/v1' must be a base URL", stderr, StringComparison.Ordinal);
        Assert.Contains("--lookup-timeout: not a number of seconds: 'soon'", stderr, StringComparison.Ordinal);
        Assert.Contains("--kv-tie-tokens: must be 0..1048576", stderr, StringComparison.Ordinal);
        Assert.Contains("--max-body-size: 'huge' is not a size", stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Missing_instances_and_a_busy_port_are_exit_code_2()
    {
        var (missing, _, stderr) = await LmcacheProcess.RunAsync(TimeSpan.FromSeconds(60), "router", "--port", "0");
        Assert.Equal(2, missing);
        Assert.Contains("--instances or --controller: give one", stderr, StringComparison.Ordinal);

        using var taken = new TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        var port = ((IPEndPoint)taken.LocalEndpoint).Port.ToString(System.Globalization.CultureInfo.InvariantCulture);
        var (busy, _, busyError) = await LmcacheProcess.RunAsync(TimeSpan.FromSeconds(60), "router", "--port", port, "--instances", "http://127.0.0.1:9");
        Assert.Equal(2, busy);
        Assert.Equal($"port {port} is in use; pass --port", busyError.Trim());
    }

    [Fact]
    public async Task Bad_controller_values_are_exit_code_2_each_named_at_once()
    {
        var (code, _, stderr) = await LmcacheProcess.RunAsync(TimeSpan.FromSeconds(60), "router", "--port", "0",
            "--controller", "ftp://host:9300", "--controller-interval", "often");
        Assert.Equal(2, code);
        Assert.Contains("--controller: 'ftp://host:9300/' must be an http:// or https:// URL", stderr, StringComparison.Ordinal);
        Assert.Contains("--controller-interval: not a number of seconds: 'often'", stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("give one", stderr, StringComparison.Ordinal); // --controller was given, and named
        Assert.DoesNotContain("   at ", stderr, StringComparison.Ordinal);

        var (query, _, queryError) = await LmcacheProcess.RunAsync(TimeSpan.FromSeconds(60), "router", "--port", "0",
            "--controller", "http://127.0.0.1:9300/?x=1", "--controller-interval", "0");
        Assert.Equal(2, query);
        Assert.Contains("--controller: 'http://127.0.0.1:9300/?x=1' must have no query or fragment", queryError, StringComparison.Ordinal);
        Assert.Contains("--controller-interval: must be 0.05..3600 s, got 0", queryError, StringComparison.Ordinal);

        var (empty, _, emptyError) = await LmcacheProcess.RunAsync(TimeSpan.FromSeconds(60), "router", "--port", "0", "--controller", " ");
        Assert.Equal(2, empty);
        Assert.Contains("--controller: give the controller's URL", emptyError, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Controller_and_instances_together_or_a_token_without_a_controller_are_exit_code_2()
    {
        var (both, _, bothError) = await LmcacheProcess.RunAsync(TimeSpan.FromSeconds(60), "router", "--port", "0",
            "--instances", "http://127.0.0.1:9", "--controller", "http://127.0.0.1:9300");
        Assert.Equal(2, both);
        Assert.Contains("--instances and --controller: give one, not both", bothError, StringComparison.Ordinal);

        var (token, _, tokenError) = await LmcacheProcess.RunAsync(TimeSpan.FromSeconds(60), "router", "--port", "0",
            "--instances", "http://127.0.0.1:9", "--controller-token", "t");
        Assert.Equal(2, token);
        Assert.Contains("--controller-token: only with --controller", tokenError, StringComparison.Ordinal);
    }
}
