using System.CommandLine;
using System.Globalization;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Router;
using Microsoft.Extensions.Hosting;

namespace LMCacheSharp.Cli.Commands;

/// <summary>
/// <c>lmcache router</c>: an OpenAI-compatible reverse proxy over several <c>lmcache serve</c> instances that routes each request
/// by a policy (kv-aware, round-robin, session, least-loaded). docs/fleet.md, section Router.
/// </summary>
internal static class RouterCommand
{
    public static Command Create()
    {
        var host = new Option<string>("--host") { Description = "Address to bind.", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "Port (0 picks a free one).", DefaultValueFactory = _ => 8000 };
        var instances = new Option<string?>("--instances") { Description = "The instances' base URLs, comma-separated: http://host:port,http://host:port (required)." };
        var policy = new Option<string>("--policy")
        {
            Description = "kv-aware (longest cached prefix in an instance's memory, weighed against load), round-robin, session (sticky by X-Session-Id or user) or least-loaded.",
            DefaultValueFactory = _ => "kv-aware",
        };
        var healthInterval = Flag("--health-interval", "Seconds between health probes of each instance (GET /health). Default 2; 0.05..3600.");
        var healthTimeout = Flag("--health-timeout", "Seconds a health probe may take before the instance is out. Default 2; 0.05..60.");
        var lookupTimeout = Flag("--lookup-timeout", "Seconds kv-aware waits for the instances' /lookup answers; later is nothing cached. Default 0.05; 0.001..10.");
        var tieTokens = Flag("--kv-tie-tokens", "kv-aware: cached prefixes within this many tokens of the longest count as the longest (load decides). Default 256; 0..1048576.");
        var loadWeight = Flag("--kv-load-weight", "kv-aware: cached tokens one request in flight or queued on an instance is worth. Default 256; 0..1048576.");
        var maxBody = Flag("--max-body-size", "Largest request body, e.g. 32MB; larger is 413. Default 32MB; 1KB..1GB.");
        var requestTimeout = Flag("--request-timeout", "Seconds a forwarded request may go without progress before it fails with 504. Default 600; 1..86400.");
        var logLevel = new Option<string>("--log-level") { Description = "trace, debug, information, warning, error or none (information: one line per request).", DefaultValueFactory = _ => "information" };
        var command = new Command("router", "Route OpenAI requests over several lmcache serve instances (kv-aware, round-robin, session, least-loaded).")
        {
            host, port, instances, policy, healthInterval, healthTimeout, lookupTimeout, tieTokens, loadWeight, maxBody, requestTimeout, logLevel,
        };
        command.SetAction(async (r, ct) =>
        {
            // Every problem of the flags is reported at once, each naming its flag.
            var problems = new List<string>();
            var options = new RouterOptions();
            var list = r.GetValue(instances);
            if (string.IsNullOrWhiteSpace(list))
            {
                problems.Add("--instances: required: the instances' base URLs, comma-separated (http://127.0.0.1:8001,http://127.0.0.1:8002)");
            }
            else
            {
                options.Instances = RouterOptions.ParseInstances(list, problems);
            }

            if (RouterOptions.ParsePolicy(r.GetValue(policy)) is { } kind)
            {
                options.Policy = kind;
            }
            else
            {
                problems.Add($"--policy: must be kv-aware, round-robin, session or least-loaded, got '{r.GetValue(policy)}'");
            }

            Seconds(r, healthInterval, problems, v => options.HealthInterval = v);
            Seconds(r, healthTimeout, problems, v => options.HealthTimeout = v);
            Seconds(r, lookupTimeout, problems, v => options.LookupTimeout = v);
            Seconds(r, requestTimeout, problems, v => options.RequestTimeout = v);
            Int(r, tieTokens, problems, v => options.KvTieTokens = v);
            Int(r, loadWeight, problems, v => options.KvLoadWeightTokens = v);
            if (r.GetValue(maxBody) is { } size)
            {
                if (ByteSize.TryParse(size.Trim(), out var bytes))
                {
                    options.MaxBodyBytes = bytes;
                }
                else
                {
                    problems.Add($"--max-body-size: '{size}' is not a size: use a number with an optional unit B, KB, MB, GB or TB (binary), e.g. 32MB");
                }
            }

            if (ServeCommand.TryParseLogLevel(r.GetValue(logLevel)!, out var level))
            {
                options.LogLevel = level;
            }
            else
            {
                problems.Add($"--log-level: must be trace, debug, information, warning, error or none, got '{r.GetValue(logLevel)}'");
            }

            // Errors of values that parsed (ranges, duplicates); instance problems were named while parsing.
            problems.AddRange(options.GetErrors().Where(e => options.Instances.Count > 0 || !e.StartsWith("--instances", StringComparison.Ordinal)));
            if (problems.Count > 0)
            {
                await Console.Error.WriteLineAsync("lmcache router: invalid configuration:" + Environment.NewLine +
                    string.Join(Environment.NewLine, problems.Distinct().Select(p => "  " + p)));
                return 2;
            }

            if (ServeCommand.PortInUse(r.GetValue(host)!, r.GetValue(port)) is { } busy)
            {
                await Console.Error.WriteLineAsync(busy);
                return 2;
            }

            try
            {
                await using var app = RouterApp.Build(options, [$"http://{r.GetValue(host)}:{r.GetValue(port)}"]);
                await app.StartAsync(ct);
                var names = string.Join(", ", options.Instances.Select(RouterOptions.Key));
                Console.WriteLine($"lmcache router: {string.Join(", ", app.Urls)} (policy {RouterOptions.PolicyName(options.Policy)}, instances {names}); Ctrl+C to stop");
                await app.WaitForShutdownAsync(ct);
                return 0;
            }
            catch (IOException e)
            {
                await Console.Error.WriteLineAsync("lmcache router: " + e.Message);
                return 1;
            }
        });
        return command;
    }

    private static Option<string?> Flag(string name, string description) => new(name) { Description = description };

    private static void Seconds(ParseResult r, Option<string?> option, List<string> problems, Action<TimeSpan> set)
    {
        if (r.GetValue(option) is not { } text)
        {
            return;
        }

        if (double.TryParse(text.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out var seconds) && double.IsFinite(seconds) && seconds is >= 0 and <= 1e6)
        {
            set(TimeSpan.FromSeconds(seconds));
        }
        else
        {
            problems.Add($"{option.Name}: not a number of seconds: '{text}'");
        }
    }

    private static void Int(ParseResult r, Option<string?> option, List<string> problems, Action<int> set)
    {
        if (r.GetValue(option) is not { } text)
        {
            return;
        }

        if (int.TryParse(text.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out var value))
        {
            set(value);
        }
        else
        {
            problems.Add($"{option.Name}: not an integer: '{text}'");
        }
    }
}
