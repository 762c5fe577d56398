using LMCacheSharp.Core.Configuration;

namespace LMCacheSharp.Controller.Tests;

public sealed class ControllerConfigLoaderTests
{
    private static ConfigValue Flag(string key, string value) => new(key, value, "--" + key.Replace('_', '-'));

    [Fact]
    public void The_file_then_the_environment_then_the_flags_each_win_over_the_one_before()
    {
        var path = Path.GetTempFileName();
        try
        {
            File.WriteAllText(path, "port: 9400\nheartbeat_interval: 1\nheartbeat_timeout: 5\nmax_body_size: 1MB\n");
            var environment = new Dictionary<string, string?> { ["LMCACHE_CONTROLLER_HEARTBEAT_TIMEOUT"] = "6", ["LMCACHE_CONTROLLER_MAX_BODY_SIZE"] = "2MB" };
            var options = ControllerConfigLoader.Load(path, environment, [Flag("max_body_size", "3MB")]);
            Assert.Equal(9400, options.Port);
            Assert.Equal(TimeSpan.FromSeconds(1), options.HeartbeatInterval);
            Assert.Equal(TimeSpan.FromSeconds(6), options.HeartbeatTimeout);
            Assert.Equal(3L << 20, options.MaxBodyBytes);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void Every_problem_is_reported_at_once_naming_key_and_source()
    {
        var environment = new Dictionary<string, string?> { ["LMCACHE_CONTROLLER_PORT"] = "nine" };
        var e = Assert.Throws<LMCacheConfigurationException>(() => ControllerConfigLoader.Load(null, environment,
            [Flag("heartbeat_interval", "20"), Flag("heartbeat_timeout", "10"), Flag("max_body_size", "8XB"), new("hearbeat_timeout", "1", "--hearbeat-timeout")]));
        Assert.Equal(4, e.Errors.Count);
        Assert.Equal("port (LMCACHE_CONTROLLER_PORT): 'nine' is not an integer", e.Errors[0]);
        Assert.StartsWith("max_body_size (--max-body-size): '8XB' is not a size", e.Errors[1], StringComparison.Ordinal);
        Assert.StartsWith("hearbeat_timeout (--hearbeat-timeout): unknown key; did you mean 'heartbeat_timeout'?", e.Errors[2], StringComparison.Ordinal);
        Assert.Equal("heartbeat_interval (--heartbeat-interval): must be below the heartbeat timeout (10 s), got 20 s", e.Errors[3]);
    }

    [Fact]
    public void The_defaults_load_without_any_source()
    {
        var options = ControllerConfigLoader.Load(null, new Dictionary<string, string?>());
        Assert.Equal(9300, options.Port);
        Assert.Null(options.AuthToken);
        Assert.Equal("LMCACHE_CONTROLLER_AUTH_TOKEN", ControllerConfigLoader.VariableOf("auth_token"));
    }
}
