using System.Net;
using System.Text;
using LMCacheSharp.Core.Codecs;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Metrics;
using LMCacheSharp.Core.Storage;
using StackExchange.Redis;

namespace LMCacheSharp.Remote;

/// <summary>
/// Builds the remote tier that <c>remote_url</c> names:
/// <list type="bullet">
/// <item><c>lm://[:TOKEN@]host:port[?connections=N]</c>: the cache server (<c>lmcache server</c>).</item>
/// <item><c>redis://[[user]:password@]host:port[/db][?prefix=P]</c>, <c>rediss://</c> (TLS): Redis or Valkey, a single
/// node or a cluster (give any node: the client discovers the rest). <c>valkey://</c> and <c>valkeys://</c> are aliases.</item>
/// <item><c>blackhole://</c>: accepts and forgets.</item>
/// </list>
/// Values are chunk envelopes in the codec <c>remote_serde</c> names; every call is bounded by <c>remote_timeout_ms</c>.
/// Plug into the engine with <c>CacheEngine.Create(options, ns, metrics, RemoteTierFactory.LowerTiers(options))</c>.
/// </summary>
public static class RemoteTierFactory
{
    /// <summary>The URL schemes understood.</summary>
    public static IReadOnlyList<string> Schemes { get; } = ["lm", "redis", "rediss", "valkey", "valkeys", "blackhole"];

    /// <summary>The <c>lowerTiers</c> callback of <c>CacheEngine.Create</c> for <paramref name="options"/>, or null when no remote is configured.</summary>
    public static Func<KvBufferPool, CacheMetrics, IEnumerable<IStorageTier>>? LowerTiers(LMCacheOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (string.IsNullOrWhiteSpace(options.RemoteUrl))
        {
            return null;
        }

        Validate(options.RemoteUrl);
        return (pool, metrics) => [Create(options.RemoteUrl, options, pool, metrics)];
    }

    /// <summary>Creates the tier for <paramref name="url"/>. Nothing connects yet; a remote that is down is a miss later, not an error now.</summary>
    /// <exception cref="ArgumentException">The URL is malformed or its scheme unknown.</exception>
    public static IStorageTier Create(string url, LMCacheOptions options, KvBufferPool pool, CacheMetrics? metrics = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(pool);
        var uri = Validate(url);
        var codec = KvCodecs.Find(options.RemoteSerde) ?? throw new ArgumentException($"remote_serde: unknown codec '{options.RemoteSerde}' (known: {KvCodecs.Names})");
        var timeout = TimeSpan.FromMilliseconds(options.RemoteTimeoutMs);
        var query = ParseQuery(uri.Query);
        IRemoteConnector connector;
        switch (uri.Scheme)
        {
            case "blackhole":
                return new BlackholeTier();
            case "lm":
                {
                    var client = new CacheClient(new CacheClientOptions
                    {
                        Host = uri.Host,
                        Port = uri.IsDefaultPort || uri.Port <= 0 ? 65432 : uri.Port,
                        AuthToken = query.GetValueOrDefault("token") ?? Password(uri),
                        Connections = query.TryGetValue("connections", out var c) ? ParseInt(c, "connections", 1, 256) : 4,
                        ConnectTimeout = ClientTimeout(timeout),
                    })
                    {
                        RequestTimeout = ClientTimeout(timeout),
                    };
                    connector = new LmRemoteConnector(client, codec, pool);
                    break;
                }

            default:
                {
                    var tls = uri.Scheme is "rediss" or "valkeys";
                    var configuration = new ConfigurationOptions
                    {
                        AbortOnConnectFail = false,
                        ConnectTimeout = options.RemoteTimeoutMs,
                        SyncTimeout = options.RemoteTimeoutMs,
                        AsyncTimeout = options.RemoteTimeoutMs,
                        Ssl = tls,
                        ClientName = "lmcachesharp",
                    };
                    configuration.EndPoints.Add(uri.Host, uri.IsDefaultPort || uri.Port <= 0 ? (tls ? 6380 : 6379) : uri.Port);
                    var (user, password) = Credentials(uri);
                    configuration.User = user;
                    configuration.Password = password;
                    var db = uri.AbsolutePath.Trim('/');
                    if (db.Length > 0)
                    {
                        configuration.DefaultDatabase = ParseInt(db, "database", 0, 65535);
                    }

                    connector = new RedisRemoteConnector(configuration, Encoding.UTF8.GetBytes(query.GetValueOrDefault("prefix") ?? "lmcache:"), codec, pool);
                    break;
                }
        }

        return new RemoteStorageTier(connector, timeout, metrics,
            new CircuitBreaker(minOpenTime: TimeSpan.FromSeconds(1), maxOpenTime: TimeSpan.FromSeconds(30), probeTimeout: timeout * 2),
            WithoutCredentials(url));
    }

    /// <summary>
    /// The client's own timeouts sit below the tier's (90%, at least 1 ms): the client gives up on a request, and closes
    /// its connection, before the tier does, so the tier never outlives a request still queued on a connection.
    /// </summary>
    internal static TimeSpan ClientTimeout(TimeSpan tierTimeout) => TimeSpan.FromTicks(Math.Max(TimeSpan.TicksPerMillisecond, tierTimeout.Ticks * 9 / 10));

    /// <summary>The URL as logs may show it: user name and password removed.</summary>
    public static string WithoutCredentials(string url)
    {
        if (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || uri.UserInfo.Length == 0)
        {
            return url;
        }

        return new UriBuilder(uri) { UserName = "", Password = "" }.Uri.ToString().TrimEnd('/');
    }

    private static Uri Validate(string url)
    {
        if (string.IsNullOrWhiteSpace(url) || !Uri.TryCreate(url, UriKind.Absolute, out var uri))
        {
            throw new ArgumentException($"remote_url: '{url}' is not an absolute URL such as lm://127.0.0.1:65432 or redis://127.0.0.1:6379");
        }

        if (!Schemes.Contains(uri.Scheme))
        {
            throw new ArgumentException($"remote_url: unknown scheme '{uri.Scheme}' in '{url}' (known: {string.Join(", ", Schemes.Select(s => s + "://"))})");
        }

        if (uri.Scheme != "blackhole" && string.IsNullOrEmpty(uri.Host))
        {
            throw new ArgumentException($"remote_url: '{url}' has no host");
        }

        return uri;
    }

    private static string? Password(Uri uri) => Credentials(uri).Password;

    private static (string? User, string? Password) Credentials(Uri uri)
    {
        if (string.IsNullOrEmpty(uri.UserInfo))
        {
            return (null, null);
        }

        var info = uri.UserInfo;
        var colon = info.IndexOf(':', StringComparison.Ordinal);
        return colon < 0
            ? (null, WebUtility.UrlDecode(info))
            : (colon == 0 ? null : WebUtility.UrlDecode(info[..colon]), WebUtility.UrlDecode(info[(colon + 1)..]));
    }

    private static Dictionary<string, string> ParseQuery(string query)
    {
        var result = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        foreach (var part in query.TrimStart('?').Split('&', StringSplitOptions.RemoveEmptyEntries))
        {
            var eq = part.IndexOf('=', StringComparison.Ordinal);
            result[WebUtility.UrlDecode(eq < 0 ? part : part[..eq])] = eq < 0 ? "" : WebUtility.UrlDecode(part[(eq + 1)..]);
        }

        return result;
    }

    private static int ParseInt(string text, string name, int min, int max) =>
        int.TryParse(text, System.Globalization.CultureInfo.InvariantCulture, out var value) && value >= min && value <= max
            ? value
            : throw new ArgumentException($"remote_url: {name} must be an integer in {min}..{max}, got '{text}'");
}
