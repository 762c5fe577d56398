using System.CommandLine;
using LMCacheSharp.Controller;
using LMCacheSharp.Core.Configuration;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Hosting;

namespace LMCacheSharp.Cli.Commands;

/// <summary>
/// <c>lmcache controller</c>: the fleet controller. Instances started with <c>lmcache serve --controller URL</c> register
/// and heartbeat; it reads their KV events into a chunk directory and answers lookups, forwards prefetch and clear, and
/// serves a live dashboard at /. Settings come from a YAML or JSON file (<c>--config</c>), then LMCACHE_CONTROLLER_*
/// variables, then the command line, through <see cref="ControllerConfigLoader"/>.
/// </summary>
internal static class ControllerCommand
{
    public static Command Create()
    {
        var flags = new ConfigFlags("YAML or JSON file of these settings, keyed as the flags without dashes (heartbeat_timeout: 10) " +
            "(LMCACHE_CONTROLLER_CONFIG_FILE); LMCACHE_CONTROLLER_* variables win over it, and flags over both.");
        flags.Add("host", "Address to bind (LMCACHE_CONTROLLER_HOST). Default 127.0.0.1; 0.0.0.0 exposes it to the network.");
        flags.Add("port", "HTTP port (LMCACHE_CONTROLLER_PORT). Default 9300; 0 picks a free one.");
        flags.Add("auth_token", "Bearer token every mutating call needs (LMCACHE_CONTROLLER_AUTH_TOKEN; the variable keeps it out of ps). Default: none.");
        flags.Add("heartbeat_interval", "Seconds between an instance's heartbeats (LMCACHE_CONTROLLER_HEARTBEAT_INTERVAL). Default 2; 0.1..600.");
        flags.Add("heartbeat_timeout", "Seconds without a heartbeat after which an instance expires (LMCACHE_CONTROLLER_HEARTBEAT_TIMEOUT). Default 10; 0.2..3600.");
        flags.Add("max_body_size", "Largest request body, e.g. 16MB (LMCACHE_CONTROLLER_MAX_BODY_SIZE). Default 16MB; 1KB..256MB.");
        var command = new Command("controller", "Run the fleet controller: instance registry, chunk directory from KV events, lookup/prefetch/clear, dashboard at /.");
        flags.AddTo(command, ControllerConfigLoader.Keys);
        command.SetAction(async (r, ct) =>
        {
            // Every problem of the file, the environment and the flags is reported at once, each naming its source.
            ControllerOptions options;
            try
            {
                options = ControllerConfigLoader.Load(r.GetValue(flags.Config), null, flags.Values(r));
            }
            catch (LMCacheConfigurationException e)
            {
                return await ConfigFlags.FailAsync("lmcache controller", e.Errors);
            }

            // A busy port is found before anything starts, and reported as serve and router do.
            if (ServeCommand.PortInUse(options.Host, options.Port) is { } busy)
            {
                return await ConfigFlags.FailAsync("lmcache controller", [busy]);
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
}
