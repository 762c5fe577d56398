using LMCacheSharp.KvEvents;
using LMCacheSharp.Serving.Fleet;
using LMCacheSharp.Serving.Inference;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace LMCacheSharp.Cli.Commands;

/// <summary><c>lmcache serve --controller URL [--controller-token T]</c>: the fleet wiring, kept out of ServeCommand.</summary>
internal static class FleetOptions
{
    /// <summary>The controller's URL, or null when none is given; a bad one is a problem naming the flag.</summary>
    public static Uri? ParseController(string? text, List<string> problems)
    {
        if (text is null)
        {
            return null;
        }

        if (Uri.TryCreate(text, UriKind.Absolute, out var uri) && uri.Scheme is "http" or "https")
        {
            return uri;
        }

        problems.Add($"--controller: must be an http(s) URL such as http://127.0.0.1:9300, got '{text}'");
        return null;
    }

    /// <summary>With --controller and no --kv-events: publish on free loopback ports (the controller is told which).</summary>
    public static void AddFreeEventPorts(List<KeyValuePair<string, string>> overrides, bool replayToo)
    {
        overrides.Add(new("kv_events_endpoint", "tcp://127.0.0.1:0"));
        if (replayToo)
        {
            overrides.Add(new("kv_events_replay_endpoint", "tcp://127.0.0.1:0"));
        }
    }

    /// <summary>Maps the /lmcache/* endpoints the controller calls (before the app starts).</summary>
    public static void Map(WebApplication app, string? token) => app.MapFleet(app.Services.GetRequiredService<InferenceService>(), token);

    /// <summary>Starts registering with the controller, or returns null without one.</summary>
    public static ControllerRegistration? Register(WebApplication app, Uri? controller, string? token)
    {
        if (controller is null)
        {
            return null;
        }

        var self = app.Urls.First().Replace("://0.0.0.0:", "://127.0.0.1:", StringComparison.Ordinal).Replace("://[::]:", "://127.0.0.1:", StringComparison.Ordinal);
        Console.WriteLine($"lmcache serve: registering with the controller {controller} as {self}");
        return ControllerRegistration.Start(controller, token, self, app.Services.GetRequiredService<InferenceService>(),
            app.Services.GetService<ZmqKvEventPublisher>(), app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("LMCacheSharp.Serving.Fleet"));
    }
}
