using System.Text.Json.Nodes;
using LMCacheSharp.Http;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Diagnostics;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Yarp.ReverseProxy.Forwarder;

namespace LMCacheSharp.Router;

/// <summary>
/// Builds <c>lmcache router</c>: an OpenAI-compatible reverse proxy over several <c>lmcache serve</c> (or other
/// OpenAI-compatible) instances. Serves /v1/models (the instances' models, deduplicated), /v1/completions,
/// /v1/chat/completions (routed by the policy, forwarded through YARP), /health and /metrics.
/// </summary>
public static class RouterApp
{
    /// <summary>Returns the configured router, not yet started (starting runs the first round of health probes).</summary>
    /// <param name="options">Router options (validated here).</param>
    /// <param name="urls">Addresses to listen on, e.g. http://127.0.0.1:8000 (port 0 picks a free port).</param>
    /// <param name="locator">Where kv-aware learns what each instance caches; null: the controller (<see cref="ControllerCacheLocator"/>) with <see cref="RouterOptions.Controller"/>, else the instances (<see cref="InstanceCacheLocator"/>).</param>
    /// <param name="configureLogging">Optional logging setup.</param>
    public static WebApplication Build(RouterOptions options, IEnumerable<string> urls, ICacheLocator? locator = null, Action<ILoggingBuilder>? configureLogging = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls([.. urls]);
        // Twice the body limit: a body up to that is read to its end and answered 413, so that clients see the answer.
        builder.WebHost.ConfigureKestrel(k => k.Limits.MaxRequestBodySize = 2 * options.MaxBodyBytes);
        builder.Logging.SetMinimumLevel(options.LogLevel);
        builder.Logging.AddSimpleConsole(o =>
        {
            o.SingleLine = true;
            o.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fff ";
            o.UseUtcTimestamp = true;
        });
        builder.Logging.AddFilter("Microsoft", options.LogLevel <= LogLevel.Debug ? options.LogLevel : LogLevel.Warning);
        builder.Logging.AddFilter("System.Net.Http", options.LogLevel <= LogLevel.Debug ? options.LogLevel : LogLevel.Warning);
        // YARP logs every failed forward as a warning with its stack; the router logs one line of its own (and retries).
        builder.Logging.AddFilter("Yarp", options.LogLevel <= LogLevel.Debug ? options.LogLevel : LogLevel.Error);
        configureLogging?.Invoke(builder.Logging);

        // With --controller the set starts empty and follows the controller's GET /instances (ControllerLink).
        var instances = new InstanceSet(options.Controller is null ? options.Instances : []);
        var metrics = new RouterMetrics(instances);
        // Forwarding: YARP's recommended handler settings (no proxy, redirects, decompression or cookies). Probes and lookups
        // go through their own pool, so that a slow stream never delays a health probe.
        var forwarding = new HttpMessageInvoker(new SocketsHttpHandler
        {
            UseProxy = false,
            AllowAutoRedirect = false,
            AutomaticDecompression = System.Net.DecompressionMethods.None,
            UseCookies = false,
            ConnectTimeout = TimeSpan.FromSeconds(5),
        });
        var control = new HttpClient(new SocketsHttpHandler { UseProxy = false, ConnectTimeout = options.HealthTimeout }) { Timeout = Timeout.InfiniteTimeSpan };
        builder.Services.AddHttpForwarder();
        builder.Services.AddSingleton(metrics);
        builder.Services.AddPrometheusExporter(PrometheusNaming.MeterAndInstrument, _ => [metrics.Meter]);
        builder.Services.AddSingleton(instances);
        builder.Services.AddSingleton(sp => new HealthMonitor(instances, control, options, metrics, sp.GetRequiredService<ILoggerFactory>().CreateLogger("LMCacheSharp.Router")));
        var policyName = RouterOptions.PolicyName(options.Policy);
        if (options.Controller is not null)
        {
            // Registered before the monitor: the first refresh lands before the first round of health probes.
            builder.Services.AddSingleton(sp => new ControllerLink(options, instances, control, metrics, sp.GetRequiredService<HealthMonitor>,
                () => SelfName(sp.GetRequiredService<IServer>()), policyName, sp.GetRequiredService<ILoggerFactory>().CreateLogger("LMCacheSharp.Router.Controller")));
            builder.Services.AddHostedService(sp => sp.GetRequiredService<ControllerLink>());
        }

        builder.Services.AddHostedService(sp => sp.GetRequiredService<HealthMonitor>());
        builder.Services.AddSingleton<IRoutingPolicy>(sp => options.Policy switch
        {
            RoutingPolicyKind.RoundRobin => new RoundRobinPolicy(),
            RoutingPolicyKind.Session => new SessionPolicy(instances),
            RoutingPolicyKind.LeastLoaded => new LeastLoadedPolicy(),
            _ => new KvAwarePolicy(locator ?? DefaultLocator(options, control, metrics, sp.GetRequiredService<ILoggerFactory>()), options.KvTieTokens, options.KvLoadWeightTokens),
        });
        builder.Services.AddSingleton(sp => new RouterProxy(instances, sp.GetRequiredService<IRoutingPolicy>(), sp.GetRequiredService<IHttpForwarder>(), forwarding, options, metrics,
            sp.GetRequiredService<ILoggerFactory>().CreateLogger("LMCacheSharp.Router.Requests")));
        var app = builder.Build();
        app.Lifetime.ApplicationStopped.Register(() =>
        {
            forwarding.Dispose();
            control.Dispose();
            metrics.Dispose();
        });

        app.UseOpenAiErrors("/v1/models, /v1/completions, /v1/chat/completions, /health, /metrics", "LMCacheSharp.Router");

        var proxy = app.Services.GetRequiredService<RouterProxy>();
        var policy = app.Services.GetRequiredService<IRoutingPolicy>();
        var link = app.Services.GetService<ControllerLink>();
        app.MapPost("/v1/completions", proxy.HandleAsync);
        app.MapPost("/v1/chat/completions", proxy.HandleAsync);
        app.MapGet("/v1/models", () => Models(instances.Current) is { } cards
            ? Results.Json(new JsonObject { ["object"] = "list", ["data"] = cards })
            : Results.Json(OpenAiErrors.Body("no instance is healthy now; retry later", "server_error", null, "no_healthy_instance"), statusCode: 503));
        app.MapGet("/v1/models/{id}", (string id) => Models(instances.Current)?.OfType<JsonObject>().FirstOrDefault(m => m["id"]?.GetValue<string>() == id) is { } card
            ? Results.Json(card)
            : Results.Json(OpenAiErrors.Body($"The model '{id}' does not exist (see /v1/models).", "invalid_request_error", "model", "model_not_found"), statusCode: 404));
        app.MapGet("/health", () =>
        {
            var members = instances.Current;
            var any = members.Any(i => i.Healthy);
            var json = new JsonObject
            {
                ["status"] = any ? "ok" : "unhealthy",
                ["policy"] = policy.Name,
                ["instances"] = new JsonArray([.. members.Select(i => (JsonNode)new JsonObject
                {
                    ["url"] = i.Name,
                    ["healthy"] = i.Healthy,
                    ["reason"] = i.Healthy ? null : i.Reason,
                    ["controller_id"] = i.ControllerId,
                    ["models"] = new JsonArray([.. i.Status.Models.Select(m => (JsonNode?)JsonValue.Create(m["id"]?.GetValue<string>()))]),
                    ["in_flight"] = i.InFlight,
                    ["load"] = i.Status.Load is { } l ? new JsonObject { ["in_flight"] = l.InFlight, ["queued"] = l.Queued } : null,
                })]),
            };
            if (link is not null)
            {
                json["controller"] = new JsonObject
                {
                    ["url"] = link.Controller.ToString(),
                    ["last_refresh"] = link.LastRefresh?.ToString("O", System.Globalization.CultureInfo.InvariantCulture),
                    ["error"] = link.LastError,
                };
            }

            return Results.Json(json, statusCode: any ? 200 : 503);
        });
        app.MapPrometheusMetrics();
        return app;
    }

    /// <summary>kv-aware's locator: the controller's lookup (falling back to the instances') with --controller, else the instances'.</summary>
    private static ICacheLocator DefaultLocator(RouterOptions options, HttpMessageInvoker http, RouterMetrics metrics, ILoggerFactory logs)
    {
        var direct = new InstanceCacheLocator(http, options.LookupTimeout, metrics);
        return options.Controller is { } controller
            ? new ControllerCacheLocator(controller, options.ControllerToken, http, options.LookupTimeout, options.ControllerInterval, direct, metrics,
                logs.CreateLogger("LMCacheSharp.Router.Controller"))
            : direct;
    }

    /// <summary>
    /// The router's name in its reports to the controller: its first listening address (0.0.0.0 as the machine's name); null
    /// before it listens (hosted services start before the server binds).
    /// </summary>
    private static string? SelfName(IServer server)
    {
        if (server.Features.Get<IServerAddressesFeature>()?.Addresses.FirstOrDefault() is not { } address || address.EndsWith(":0", StringComparison.Ordinal))
        {
            return null;
        }

        return address.Replace("://0.0.0.0:", "://" + Environment.MachineName + ":", StringComparison.Ordinal)
            .Replace("://[::]:", "://" + Environment.MachineName + ":", StringComparison.Ordinal);
    }

    /// <summary>The model cards of the healthy instances, first instance's card per id; null when none is healthy.</summary>
    private static JsonArray? Models(IReadOnlyList<RouterInstance> instances)
    {
        var healthy = instances.Where(i => i.Healthy).ToList();
        if (healthy.Count == 0)
        {
            return null;
        }

        var seen = new HashSet<string>(StringComparer.Ordinal);
        var cards = new JsonArray();
        foreach (var card in healthy.SelectMany(i => i.Status.Models))
        {
            if (card["id"]?.GetValue<string>() is { } id && seen.Add(id))
            {
                cards.Add(card.DeepClone());
            }
        }

        return cards;
    }
}
