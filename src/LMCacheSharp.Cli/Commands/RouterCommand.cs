using System.CommandLine;
using System.Globalization;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Router;
using Microsoft.Extensions.DependencyInjection;
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
        var instances = new Option<string?>("--instances") { Description = "The instances' base URLs, comma-separated: http://host:port,http://host:port (this or --controller)." };
        var controller = new Option<string?>("--controller")
        {
            Description = "The fleet controller (lmcache controller), e.g. http://127.0.0.1:9300 (this or --instances): the instances are those registered there, kv-aware asks its /lookup once per request, and decisions are reported to it.",
        };
        var controllerToken = new Option<string?>("--controller-token") { Description = "The controller's --auth-token (also LMCACHE_CONTROLLER_TOKEN), sent on every call to it." };
        var controllerInterval = Flag("--controller-interval", "Seconds between refreshes of the controller's instance list and decision reports; also how long kv-aware asks the instances directly after a failed controller lookup. Default 2; 0.05..3600.");
        var policy = new Option<string>("--policy")
        {
            Description = "kv-aware (longest cached prefix in an instance's memory, weighed against load), round-robin, session (sticky by X-Session-Id or user) or least-loaded.",
            DefaultValueFactory = _ => "kv-aware",
        };
        var healthInterval = Flag("--health-interval", "Seconds between health probes of each instance (GET /health). Default 2; 0.05..3600.");
        var healthTimeout = Flag("--health-timeout", "Seconds a health probe may take before the instance is out. Default 2; 0.05..60.");
        var lookupTimeout = Flag("--lookup-timeout", "Seconds kv-aware waits for the /lookup answers (the controller's, else each instance's); later is nothing cached. Default 0.05; 0.001..10.");
        var tieTokens = Flag("--kv-tie-tokens", "kv-aware: cached prefixes within this many tokens of the longest count as the longest (load decides). Default 256; 0..1048576.");
        var loadWeight = Flag("--kv-load-weight", "kv-aware: cached tokens one request in flight or queued on an instance is worth. Default 256; 0..1048576.");
        var maxBody = Flag("--max-body-size", "Largest request body, e.g. 32MB; larger is 413. Default 32MB; 1KB..1GB.");
        var requestTimeout = Flag("--request-timeout", "Seconds a forwarded request may go without progress before it fails with 504. Default 600; 1..86400.");
        var pd = new Option<bool>("--pd") { Description = "Prefill/decode disaggregation: each request is prefilled (max_tokens 1) on an instance of serve --role prefill, then generated on one of --role decode, which restores the prompt's KV from the shared store." };
        var pdMinTokens = new Option<int>("--pd-min-tokens") { Description = "With --pd: a request the decode instance would prefill fewer than this many tokens of (its /lookup) skips the prefill step. 0: every request goes through it.", DefaultValueFactory = _ => 256 };
        var logLevel = new Option<string>("--log-level") { Description = "trace, debug, information, warning, error or none (information: one line per request).", DefaultValueFactory = _ => "information" };
        var command = new Command("router", "Route OpenAI requests over several lmcache serve instances (kv-aware, round-robin, session, least-loaded).")
        {
            host, port, instances, controller, controllerToken, controllerInterval, policy, healthInterval, healthTimeout, lookupTimeout, tieTokens, loadWeight, maxBody, requestTimeout, logLevel, pd, pdMinTokens,
        };
        command.SetAction(async (r, ct) =>
        {
            // Every problem of the flags is reported at once, each naming its flag.
            var problems = new List<string>();
            var options = new RouterOptions();
            var list = r.GetValue(instances);
            if (list is not null)
            {
                options.Instances = RouterOptions.ParseInstances(list, problems);
                if (options.Instances.Count == 0 && string.IsNullOrWhiteSpace(list))
                {
                    problems.Add("--instances: give the instances' base URLs, comma-separated (http://127.0.0.1:8001,http://127.0.0.1:8002)");
                }
            }

            var controllerText = r.GetValue(controller);
            if (controllerText is not null)
            {
                options.Controller = RouterOptions.ParseController(controllerText, problems);
                options.ControllerToken = r.GetValue(controllerToken) ?? Environment.GetEnvironmentVariable("LMCACHE_CONTROLLER_TOKEN");
            }
            else
            {
                options.ControllerToken = r.GetValue(controllerToken); // an error without --controller (GetErrors)
            }

            Seconds(r, controllerInterval, problems, v => options.ControllerInterval = v);
            options.PrefillDecode = r.GetValue(pd);
            options.PdMinTokens = r.GetValue(pdMinTokens);

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

            // Errors of values that parsed (ranges, duplicates, --instances against --controller); a flag whose value did not
            // parse was named while parsing, so "give one of them" is left out then.
            var given = list is not null || controllerText is not null;
            problems.AddRange(options.GetErrors().Where(e => !(given && e.StartsWith("--instances or --controller", StringComparison.Ordinal))));
            if (problems.Count > 0)
            {
                return await ConfigFlags.FailAsync("lmcache router", problems);
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
                var members = app.Services.GetRequiredService<InstanceSet>().Current;
                var names = members.Count == 0 ? "none yet" : string.Join(", ", members.Select(i => i.Name));
                var source = options.Controller is { } c ? $"instances from the controller {c.ToString().TrimEnd('/')}: {names}" : $"instances {names}";
                Console.WriteLine($"lmcache router: {string.Join(", ", app.Urls)} (policy {RouterOptions.PolicyName(options.Policy)}{(options.PrefillDecode ? ", prefill/decode disaggregated" : "")}, {source}); Ctrl+C to stop");
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
