using System.CommandLine;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Protocol;
using LMCacheSharp.Server;

namespace LMCacheSharp.Cli.Commands;

/// <summary>
/// <c>lmcache server</c>: the standalone cache server that many inference processes share (<c>remote_url: lm://host:port</c>).
/// Settings come from LMCACHE_SERVER_* environment variables, then the command line.
/// </summary>
internal static class ServerCommand
{
    public static Command Create()
    {
        var host = new Option<string?>("--host") { Description = "Address to bind (LMCACHE_SERVER_HOST). Default 127.0.0.1; 0.0.0.0 exposes it to the network." };
        var port = new Option<int?>("--port") { Description = "Protocol port (LMCACHE_SERVER_PORT). Default 65432; 0 picks a free one." };
        var capacity = new Option<string?>("--capacity") { Description = "Bytes of values kept before LRU eviction, e.g. 8GB (LMCACHE_SERVER_CAPACITY). Default 1GB." };
        var token = new Option<string?>("--auth-token") { Description = "Token clients must AUTH with (LMCACHE_SERVER_AUTH_TOKEN; the variable keeps it out of ps)." };
        var metricsPort = new Option<int?>("--metrics-port") { Description = "Serve Prometheus metrics at http://HOST:PORT/metrics (LMCACHE_SERVER_METRICS_PORT). Default off." };
        var maxConnections = new Option<int?>("--max-connections") { Description = "Connections served at once (LMCACHE_SERVER_MAX_CONNECTIONS). Default 1024." };
        var maxValue = new Option<string?>("--max-value-size") { Description = "Largest value accepted, e.g. 256MB (LMCACHE_SERVER_MAX_VALUE_SIZE). Default 256MB." };
        var command = new Command("server", "Run the cache server: a shared KV store for several lmcache serve instances (remote_url: lm://host:port).")
        {
            host, port, capacity, token, metricsPort, maxConnections, maxValue,
        };
        command.SetAction(async (r, ct) =>
        {
            CacheServerOptions options;
            try
            {
                static string? Env(string name) => Environment.GetEnvironmentVariable("LMCACHE_SERVER_" + name) is { Length: > 0 } v ? v : null;
                static int? EnvInt(string name) => Env(name) is { } v
                    ? int.TryParse(v, System.Globalization.CultureInfo.InvariantCulture, out var n) ? n : throw new ArgumentException($"LMCACHE_SERVER_{name}: not an integer: '{v}'")
                    : null;
                var valueText = r.GetValue(maxValue) ?? Env("MAX_VALUE_SIZE");
                var valueBytes = valueText is null ? 256L << 20 : ByteSize.Parse(valueText);
                if (valueBytes is < 1 or > ProtocolLimits.ValueBytesCeiling)
                {
                    throw new ArgumentException($"--max-value-size: must be in 1..{ProtocolLimits.ValueBytesCeiling} bytes, got {valueBytes}");
                }

                options = new CacheServerOptions
                {
                    Host = r.GetValue(host) ?? Env("HOST") ?? "127.0.0.1",
                    Port = r.GetValue(port) ?? EnvInt("PORT") ?? 65432,
                    CapacityBytes = ByteSize.Parse(r.GetValue(capacity) ?? Env("CAPACITY") ?? "1GB"),
                    AuthToken = r.GetValue(token) ?? Env("AUTH_TOKEN"),
                    MetricsPort = r.GetValue(metricsPort) ?? EnvInt("METRICS_PORT"),
                    MaxConnections = r.GetValue(maxConnections) ?? EnvInt("MAX_CONNECTIONS") ?? 1024,
                    Limits = new ProtocolLimits { MaxValueBytes = (int)valueBytes, MaxFrameBytes = (int)Math.Min(valueBytes + (1 << 20), ProtocolLimits.FrameBytesCeiling) },
                };
            }
            catch (Exception e) when (e is ArgumentException or FormatException or OverflowException)
            {
                await Console.Error.WriteLineAsync("lmcache server: " + e.Message);
                return 2;
            }

            var errors = options.GetErrors();
            if (errors.Count > 0)
            {
                errors.ToList().ForEach(e => Console.Error.WriteLine("lmcache server: " + e));
                return 2;
            }

            try
            {
                await using var server = CacheServer.Create(options);
                await server.StartAsync(ct);
                Console.WriteLine($"lmcache server: {server.Url} (capacity {ByteSize.Format(options.CapacityBytes)}, auth {(string.IsNullOrEmpty(options.AuthToken) ? "off" : "on")}" +
                    $"{(server.MetricsUrl is { } m ? $", metrics {m}" : "")}); Ctrl+C to stop");
                await server.WaitForShutdownAsync(ct);
                return 0;
            }
            catch (IOException e)
            {
                await Console.Error.WriteLineAsync("lmcache server: " + e.Message);
                return 1;
            }
        });
        return command;
    }
}
