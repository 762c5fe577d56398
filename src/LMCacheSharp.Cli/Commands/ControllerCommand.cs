using System.CommandLine;
using System.Globalization;
using LMCacheSharp.Controller;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Hosting;

namespace LMCacheSharp.Cli.Commands;

/// <summary>
/// <c>lmcache controller</c>: the fleet controller. Instances started with <c>lmcache serve --controller URL</c> register
/// and heartbeat; it reads their KV events into a chunk directory and answers lookups, forwards prefetch and clear, and
/// serves a live dashboard at /. Settings come from LMCACHE_CONTROLLER_* variables, then the command line.
/// </summary>
internal static class ControllerCommand
{
    private const string EnvironmentPrefix = "LMCACHE_CONTROLLER_";

    public static Command Create()
    {
        var host = Flag("--host", "Address to bind (LMCACHE_CONTROLLER_HOST). Default 127.0.0.1; 0.0.0.0 exposes it to the network.");
        var port = Flag("--port", "HTTP port (LMCACHE_CONTROLLER_PORT). Default 9300; 0 picks a free one.");
        var token = Flag("--auth-token", "Bearer token every mutating call needs (LMCACHE_CONTROLLER_AUTH_TOKEN; the variable keeps it out of ps). Default: none.");
        var interval = Flag("--heartbeat-interval", "Seconds between an instance's heartbeats (LMCACHE_CONTROLLER_HEARTBEAT_INTERVAL). Default 2; 0.1..600.");
        var timeout = Flag("--heartbeat-timeout", "Seconds without a heartbeat after which an instance expires (LMCACHE_CONTROLLER_HEARTBEAT_TIMEOUT). Default 10; 0.2..3600.");
        var maxBody = Flag("--max-body-size", "Largest request body, e.g. 16MB (LMCACHE_CONTROLLER_MAX_BODY_SIZE). Default 16MB; 1KB..256MB.");
        var command = new Command("controller", "Run the fleet controller: instance registry, chunk directory from KV events, lookup/prefetch/clear, dashboard at /.")
        {
            host, port, token, interval, timeout, maxBody,
        };
        command.SetAction(async (r, ct) =>
        {
            var problems = new List<string>();
            var options = new ControllerOptions();
            string? Value(Option<string?> option, string variable) =>
                r.GetResult(option) is { Implicit: false } ? r.GetValue(option) : Environment.GetEnvironmentVariable(EnvironmentPrefix + variable) is { Length: > 0 } v ? v : null;
            string Source(Option<string?> option, string variable) => r.GetResult(option) is { Implicit: false } ? option.Name : EnvironmentPrefix + variable;

            if (Value(host, "HOST") is { } h)
            {
                options.Host = h.Trim();
            }

            if (Value(port, "PORT") is { } p)
            {
                if (int.TryParse(p, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) && n is >= 0 and <= 65535)
                {
                    options.Port = n;
                }
                else
                {
                    problems.Add($"{Source(port, "PORT")}: must be an integer 0..65535, got '{p}'");
                }
            }

            options.AuthToken = Value(token, "AUTH_TOKEN");
            foreach (var (option, variable, set) in new (Option<string?>, string, Action<TimeSpan>)[]
            {
                (interval, "HEARTBEAT_INTERVAL", v => options.HeartbeatInterval = v),
                (timeout, "HEARTBEAT_TIMEOUT", v => options.HeartbeatTimeout = v),
            })
            {
                if (Value(option, variable) is { } text)
                {
                    if (double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var seconds) && seconds is > 0 and <= 86400)
                    {
                        set(TimeSpan.FromSeconds(seconds));
                    }
                    else
                    {
                        problems.Add($"{Source(option, variable)}: not a number of seconds: '{text}'");
                    }
                }
            }

            if (Value(maxBody, "MAX_BODY_SIZE") is { } size)
            {
                if (Core.Configuration.ByteSize.TryParse(size, out var bytes))
                {
                    options.MaxBodyBytes = bytes;
                }
                else
                {
                    problems.Add($"{Source(maxBody, "MAX_BODY_SIZE")}: '{size}' is not a size: use a number with an optional unit B, KB, MB, GB or TB, e.g. 16MB");
                }
            }

            if (problems.Count == 0)
            {
                // "heartbeat interval: ..." names the flag --heartbeat-interval.
                problems.AddRange(options.GetErrors().Select(e => "--" + e[..e.IndexOf(':', StringComparison.Ordinal)].Replace(' ', '-') + e[e.IndexOf(':', StringComparison.Ordinal)..]));
            }

            if (problems.Count == 0 && ServeCommand.PortInUse(options.Host, options.Port) is { } busy)
            {
                problems.Add(busy);
            }

            if (problems.Count > 0)
            {
                await Console.Error.WriteLineAsync("lmcache controller: invalid configuration:" + Environment.NewLine +
                    string.Join(Environment.NewLine, problems.Select(p => "  " + p)));
                return 2;
            }

            try
            {
                await using var app = ControllerApp.Build(options);
                await app.StartAsync(ct);
                Console.WriteLine($"lmcache controller: {string.Join(", ", app.Urls)} (auth {(string.IsNullOrEmpty(options.AuthToken) ? "off" : "on")}, " +
                    $"heartbeat every {options.HeartbeatInterval.TotalSeconds} s, expiry after {options.HeartbeatTimeout.TotalSeconds} s; dashboard at /); Ctrl+C to stop");
                await app.WaitForShutdownAsync(ct);
                return 0;
            }
            catch (IOException e)
            {
                await Console.Error.WriteLineAsync("lmcache controller: " + e.Message);
                return 1;
            }
        });
        return command;
    }

    private static Option<string?> Flag(string name, string description) => new(name) { Description = description };
}
