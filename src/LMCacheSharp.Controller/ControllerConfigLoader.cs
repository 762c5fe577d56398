using LMCacheSharp.Core.Configuration;

namespace LMCacheSharp.Controller;

/// <summary>
/// Builds <see cref="ControllerOptions"/> for <c>lmcache controller</c> through the <see cref="ConfigLoader{TOptions}"/> every
/// host uses, later wins: defaults, a YAML or JSON file (path given, or <c>LMCACHE_CONTROLLER_CONFIG_FILE</c>),
/// <c>LMCACHE_CONTROLLER_*</c> environment variables, then the command line. A key is the flag without its dashes, with
/// underscores (<c>--heartbeat-interval</c>: <c>heartbeat_interval</c>, <c>LMCACHE_CONTROLLER_HEARTBEAT_INTERVAL</c>).
/// Every problem is thrown at once as <see cref="LMCacheConfigurationException"/>, each as <c>key (source): message</c>.
/// </summary>
public static class ControllerConfigLoader
{
    /// <summary>Prefix of the environment variables.</summary>
    public const string EnvironmentPrefix = "LMCACHE_CONTROLLER_";

    /// <summary>The variable naming a configuration file.</summary>
    public const string FileVariable = EnvironmentPrefix + "CONFIG_FILE";

    private static readonly ConfigLoader<ControllerOptions> Loader = new ConfigLoader<ControllerOptions>(EnvironmentPrefix, FileVariable)
        .Add("host", (o, v) => o.Host = v)
        .Add("port", (o, v) => o.Port = ConfigParsers.ParseInt(v))
        .Add("auth_token", (o, v) => o.AuthToken = v.Length == 0 ? null : v)
        .Add("heartbeat_interval", (o, v) => o.HeartbeatInterval = ConfigParsers.ParseSeconds(v), "heartbeat interval")
        .Add("heartbeat_timeout", (o, v) => o.HeartbeatTimeout = ConfigParsers.ParseSeconds(v), "heartbeat timeout")
        .Add("max_body_size", (o, v) => o.MaxBodyBytes = ConfigParsers.ParseSize(v), "max body size");

    /// <summary>The keys, in the order of <c>lmcache controller --help</c>.</summary>
    public static IReadOnlyCollection<string> Keys => Loader.Keys;

    /// <summary>The environment variable of <paramref name="key"/> (<c>LMCACHE_CONTROLLER_PORT</c>).</summary>
    public static string VariableOf(string key) => Loader.VariableOf(key);

    /// <summary>Loads and validates the options; throws <see cref="LMCacheConfigurationException"/> listing every problem.</summary>
    /// <param name="path">A YAML or JSON file of keys; null means <c>LMCACHE_CONTROLLER_CONFIG_FILE</c> if set, else none.</param>
    /// <param name="environment">Environment variables; null means the process environment.</param>
    /// <param name="values">Values from the command line, each naming its flag.</param>
    public static ControllerOptions Load(string? path = null, IDictionary<string, string?>? environment = null, IEnumerable<ConfigValue>? values = null) =>
        Loader.Load(new ControllerOptions(), path, environment, values, null, (options, _) => options.GetErrors());
}
