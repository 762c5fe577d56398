using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Metrics;
using LMCacheSharp.Core.Storage;
using LMCacheSharp.Http;
using LMCacheSharp.KvEvents;
using LMCacheSharp.Serving.Inference;
using LMCacheSharp.Serving.OpenAi;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Diagnostics;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace LMCacheSharp.Serving;

/// <summary>Builds the OpenAI-compatible server: <c>lmcache serve</c> and the tests use this.</summary>
public static class ServingApp
{
    /// <summary>
    /// Loads the model (or the default one), creates the cache and returns the configured web application, not yet started.
    /// </summary>
    /// <param name="options">Serving options.</param>
    /// <param name="cacheOptions">Cache options (LMCache keys).</param>
    /// <param name="urls">Addresses to listen on, e.g. http://127.0.0.1:8000 (port 0 picks a free port).</param>
    /// <param name="lowerTiers">Extra tiers under those <paramref name="cacheOptions"/> configures (memory, <c>local_disk</c>,
    /// <c>remote_url</c>), or null.</param>
    /// <param name="configureLogging">Optional logging setup.</param>
    public static WebApplication Build(ServingOptions options, LMCacheOptions cacheOptions, IEnumerable<string> urls,
        Func<KvBufferPool, CacheMetrics, IEnumerable<IStorageTier>>? lowerTiers = null, Action<ILoggingBuilder>? configureLogging = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(cacheOptions);
        options.Validate();
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls([.. urls]);
        builder.WebHost.ConfigureKestrel(k => k.Limits.MaxRequestBodySize = OpenAiEndpoints.MaxBodyBytes);
        // One line per request from our own logger; ASP.NET Core's own six lines only at Debug.
        builder.Logging.SetMinimumLevel(options.LogLevel);
        builder.Logging.AddSimpleConsole(o =>
        {
            o.SingleLine = true;
            o.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fff ";
            o.UseUtcTimestamp = true;
        });
        builder.Logging.AddFilter("Microsoft", options.LogLevel <= LogLevel.Debug ? options.LogLevel : LogLevel.Warning);
        builder.Logging.AddFilter("System.Net.Http", options.LogLevel <= LogLevel.Debug ? options.LogLevel : LogLevel.Warning);
        if (configureLogging is not null)
        {
            configureLogging(builder.Logging);
        }

        var cacheMetrics = new CacheMetrics();
        builder.Services.AddSingleton(cacheMetrics);
        // Bound now, before the model is made or loaded, so that a busy port is reported at once. Returned by a factory so that the
        // container disposes it, after the inference service (resolved later), whose last removals it then still sends.
        var publisher = options.EnableCache ? CreatePublisher(cacheOptions, cacheMetrics) : null;
        if (publisher is not null)
        {
            builder.Services.AddSingleton(_ => publisher);
        }

        var modelPath = options.ModelPath ?? DefaultModel.Ensure(Console.Out, options.Progress);
        if (options.ModelPath is null)
        {
            options.ModelName ??= DefaultModel.Name;
        }

        builder.Services.AddSingleton(new ServingMetrics());
        builder.Services.AddPrometheusExporter(PrometheusNaming.MeterAndInstrument,
            sp => [sp.GetRequiredService<CacheMetrics>().Meter, sp.GetRequiredService<ServingMetrics>().Meter]);
        builder.Services.AddSingleton(sp => InferenceService.Create(modelPath, options, cacheOptions, sp.GetRequiredService<ServingMetrics>(),
            sp.GetRequiredService<CacheMetrics>(), lowerTiers, sp.GetRequiredService<ILoggerFactory>().CreateLogger("LMCacheSharp.Serving"),
            publisher is null ? null : sp.GetRequiredService<ZmqKvEventPublisher>()));
        WebApplication app;
        InferenceService service;
        try
        {
            app = builder.Build();
            service = app.Services.GetRequiredService<InferenceService>();
        }
        catch
        {
            publisher?.Dispose();
            throw;
        }

        service.Metrics.ObserveLoopProgressAge(() => service.GetLoopHealth().ProgressAgeSeconds);
        var requestLog = app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("LMCacheSharp.Serving.Requests");
        app.Use(async (http, next) =>
        {
            var start = System.Diagnostics.Stopwatch.GetTimestamp();
            try
            {
                await next(http).ConfigureAwait(false);
            }
            finally
            {
                LogRequest(requestLog, http, start);
            }
        });
        // Routing's bare 404 and 405, Kestrel's bad requests and unhandled errors get OpenAI's error shape like every other error.
        app.UseOpenAiErrors("/v1/models, /v1/completions, /v1/chat/completions, /health, /metrics", "LMCacheSharp.Serving");
        app.MapOpenAi(service);
        app.MapCacheLookup(service);
        app.MapPrometheusMetrics();
        return app;
    }

    /// <summary>
    /// The KV event publisher <paramref name="cacheOptions"/> asks for (<c>kv_events_endpoint</c>), bound, or null. A socket
    /// that cannot be bound is a configuration error naming the key.
    /// </summary>
    private static ZmqKvEventPublisher? CreatePublisher(LMCacheOptions cacheOptions, CacheMetrics metrics)
    {
        if (KvEventPublisherOptions.FromCacheOptions(cacheOptions) is not { } options)
        {
            return null;
        }

        try
        {
            return new ZmqKvEventPublisher(options, metrics);
        }
        catch (KvEventBindException e)
        {
            var key = e.Endpoint == options.Endpoint ? "kv_events_endpoint" : "kv_events_replay_endpoint";
            throw new LMCacheConfigurationException($"{key}: {e.Message}");
        }
    }

    private static void LogRequest(ILogger log, HttpContext http, long start)
    {
        if (!log.IsEnabled(LogLevel.Information))
        {
            return;
        }

        var totalMs = System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        var status = http.RequestAborted.IsCancellationRequested && !http.Response.HasStarted ? 499 : http.Response.StatusCode;
        if (http.Items.TryGetValue(OpenAiEndpoints.JobItem, out var item) && item is GenerationJob job)
        {
            var usage = job.Final?.Usage;
            log.LogInformation("{Method} {Path} {Status} prompt={Prompt} cached={Cached} completion={Completion} ttft_ms={Ttft:F1} total_ms={Total:F1}{Finish}",
                http.Request.Method, http.Request.Path.Value, status, job.PromptTokens.Length, usage?.CachedTokens ?? 0, usage?.CompletionTokens ?? 0,
                job.TimeToFirstToken?.TotalMilliseconds ?? 0, totalMs, job.Final is { Finish: { } f } ? " finish=" + f.ToString().ToLowerInvariant() : "");
        }
        else if (http.Request.Path != "/metrics" && http.Request.Path != "/health")
        {
            log.LogInformation("{Method} {Path} {Status} total_ms={Total:F1}", http.Request.Method, http.Request.Path.Value, status, totalMs);
        }
    }
}
