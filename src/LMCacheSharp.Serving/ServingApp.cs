using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Metrics;
using LMCacheSharp.Core.Storage;
using LMCacheSharp.Serving.Inference;
using LMCacheSharp.Serving.OpenAi;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Diagnostics;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Prometheus;

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
        if (configureLogging is not null)
        {
            configureLogging(builder.Logging);
        }

        var modelPath = options.ModelPath ?? DefaultModel.Ensure(Console.Out);
        if (options.ModelPath is null)
        {
            options.ModelName ??= DefaultModel.Name;
        }

        builder.Services.AddSingleton(new ServingMetrics());
        builder.Services.AddSingleton(new CacheMetrics());
        builder.Services.AddSingleton(sp => InferenceService.Create(modelPath, options, cacheOptions, sp.GetRequiredService<ServingMetrics>(),
            sp.GetRequiredService<CacheMetrics>(), lowerTiers, sp.GetRequiredService<ILoggerFactory>().CreateLogger("LMCacheSharp.Serving")));
        // Start exporting the meters now: prometheus-net's adapter otherwise starts at the first scrape and misses what came before.
        Metrics.ConfigureMeterAdapter(o => o.InstrumentFilterPredicate = i => i.Meter.Name.StartsWith("LMCacheSharp", StringComparison.Ordinal));
        // ...and it only subscribes to measurements at its first collection (prometheus-net issue 487): collect once now.
        Metrics.DefaultRegistry.CollectAndExportAsTextAsync(Stream.Null).GetAwaiter().GetResult();
        var app = builder.Build();
        var service = app.Services.GetRequiredService<InferenceService>();
        app.UseExceptionHandler(error => error.Run(async http =>
        {
            var e = http.Features.Get<IExceptionHandlerFeature>()?.Error;
            if (e is BadHttpRequestException bad)
            {
                await OpenAiEndpoints.WriteErrorAsync(http, bad.StatusCode, bad.Message, "invalid_request_error").ConfigureAwait(false);
                return;
            }

            await OpenAiEndpoints.WriteErrorAsync(http, 500, "internal server error", "server_error").ConfigureAwait(false);
        }));
        app.MapOpenAi(service);
        app.MapMetrics("/metrics");
        return app;
    }
}
