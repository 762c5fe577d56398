using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Http;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Diagnostics;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace LMCacheSharp.Controller;

/// <summary>Builds the controller: <c>lmcache controller</c> and the tests use this.</summary>
public static partial class ControllerApp
{
    /// <summary>The response header naming the controller's API version.</summary>
    public const string ApiVersion = "1";

    /// <summary>Returns the configured web application (not yet started) on <paramref name="urls"/>.</summary>
    /// <param name="options">Controller options (validated here).</param>
    /// <param name="urls">Addresses to listen on; null: http://Host:Port from <paramref name="options"/>.</param>
    /// <param name="timeProvider">The clock for heartbeats and expiry; null: the system clock.</param>
    /// <param name="configureLogging">Optional logging setup.</param>
    /// <exception cref="ArgumentException">The options are invalid (the message lists every problem).</exception>
    public static WebApplication Build(ControllerOptions options, IEnumerable<string>? urls = null, TimeProvider? timeProvider = null,
        Action<ILoggingBuilder>? configureLogging = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.GetErrors() is { Count: > 0 } errors)
        {
            throw new ArgumentException(string.Join("; ", errors), nameof(options));
        }

        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls([.. urls ?? [$"http://{options.Host}:{options.Port}"]]);
        builder.WebHost.ConfigureKestrel(k => k.Limits.MaxRequestBodySize = options.MaxBodyBytes);
        builder.Logging.AddSimpleConsole(o =>
        {
            o.SingleLine = true;
            o.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fff ";
            o.UseUtcTimestamp = true;
        });
        builder.Logging.AddFilter("Microsoft", LogLevel.Warning);
        builder.Logging.AddFilter("System.Net.Http", LogLevel.Warning);
        configureLogging?.Invoke(builder.Logging);
        var time = timeProvider ?? TimeProvider.System;
        builder.Services.AddSingleton(options);
        builder.Services.AddSingleton(new ChunkDirectory());
        builder.Services.AddSingleton(sp => new InstanceRegistry(sp.GetRequiredService<ChunkDirectory>(), options, time,
            sp.GetRequiredService<ILoggerFactory>().CreateLogger("LMCacheSharp.Controller")));
        builder.Services.AddSingleton(_ => new RouterReports(time));
        builder.Services.AddSingleton(_ => new HttpClient { Timeout = options.InstanceCallTimeout });
        builder.Services.AddPrometheusExporter(PrometheusNaming.MeterAndInstrument, sp => [sp.GetRequiredService<InstanceRegistry>().Metrics.Meter]);
        var app = builder.Build();
        var registry = app.Services.GetRequiredService<InstanceRegistry>();
        app.UseOpenAiErrors("docs/fleet.md, section Controller", "LMCacheSharp.Controller");
        MapEndpoints(app, options, registry);
        app.MapPrometheusMetrics();
        return app;
    }

    /// <summary>True when <paramref name="http"/> carries the token (or none is configured); otherwise writes the 401.</summary>
    internal static async Task<bool> AuthorizeAsync(HttpContext http, ControllerOptions options, ControllerMetrics metrics)
    {
        if (string.IsNullOrEmpty(options.AuthToken))
        {
            return true;
        }

        var header = http.Request.Headers.Authorization.ToString();
        const string Prefix = "Bearer ";
        if (header.StartsWith(Prefix, StringComparison.OrdinalIgnoreCase) &&
            CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(header[Prefix.Length..].Trim()), Encoding.UTF8.GetBytes(options.AuthToken)))
        {
            return true;
        }

        metrics.AuthFailure();
        http.Response.Headers.WWWAuthenticate = "Bearer";
        await ControllerJson.WriteErrorAsync(http, 401, header.Length == 0
            ? "this controller needs a token: send Authorization: Bearer TOKEN (--auth-token)"
            : "the token is not valid", code: "invalid_api_key").ConfigureAwait(false);
        return false;
    }

    /// <summary>Parses a registration body.</summary>
    internal static InstanceRegistration ParseRegistration(JsonObject body)
    {
        var url = ControllerJson.RequiredString(body, "url");
        if (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https"))
        {
            throw new ControllerRequestException(400, $"'url' must be an absolute http(s) URL, got '{url}'", "url");
        }

        var model = ControllerJson.RequiredString(body, "model");
        var chunkSize = (int)ControllerJson.OptionalLong(body, "chunk_size", 256);
        if (chunkSize is < 1 or > PrefixHasher.MaxChunkSize)
        {
            throw new ControllerRequestException(400, $"'chunk_size' must be 1..{PrefixHasher.MaxChunkSize}, got {chunkSize}", "chunk_size");
        }

        CacheNamespace? ns = null;
        if (body["namespace"] is JsonObject n)
        {
            try
            {
                var format = new KvFormat((int)ControllerJson.OptionalLong(n, "layers"), (int)ControllerJson.OptionalLong(n, "k_bytes_per_token"),
                    (int)ControllerJson.OptionalLong(n, "v_bytes_per_token"), Enum.Parse<KvDataType>(ControllerJson.RequiredString(n, "dtype"), ignoreCase: true),
                    Enum.Parse<KvLayout>(ControllerJson.RequiredString(n, "layout"), ignoreCase: true));
                ns = new CacheNamespace(ControllerJson.RequiredString(n, "fingerprint"), format, variant: ControllerJson.OptionalString(n, "variant"));
            }
            catch (ArgumentException e)
            {
                throw new ControllerRequestException(400, "'namespace' is not a valid cache namespace: " + e.Message, "namespace");
            }
        }
        else if (body["namespace"] is not null)
        {
            throw new ControllerRequestException(400, "'namespace' must be an object", "namespace");
        }

        var events = ControllerJson.OptionalString(body, "kv_events");
        var replay = ControllerJson.OptionalString(body, "kv_events_replay");
        foreach (var (name, endpoint) in new[] { ("kv_events", events), ("kv_events_replay", replay) })
        {
            if (endpoint is not null && !LMCacheSharp.Core.Events.KvEventEndpoint.TryParse(endpoint, out _, out var problem))
            {
                throw new ControllerRequestException(400, $"'{name}': {problem}", name);
            }
        }

        if (replay is not null && events is null)
        {
            throw new ControllerRequestException(400, "'kv_events_replay' needs 'kv_events'", "kv_events_replay");
        }

        return new InstanceRegistration(uri.GetLeftPart(UriPartial.Authority) + uri.AbsolutePath.TrimEnd('/'), model, ns, chunkSize,
            ControllerJson.OptionalStrings(body, "tiers"), events, replay, ControllerJson.OptionalString(body, "kv_events_topic") ?? "");
    }

}
