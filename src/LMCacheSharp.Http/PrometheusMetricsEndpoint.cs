using System.Diagnostics.Metrics;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Prometheus;

namespace LMCacheSharp.Http;

/// <summary>
/// <c>GET /metrics</c> of every LMCacheSharp host: its <see cref="PrometheusExporter"/>, a singleton of its own container.
/// <code>
///   builder.Services.AddPrometheusExporter(PrometheusNaming.MeterAndInstrument, sp => [sp.GetRequiredService&lt;RouterMetrics&gt;().Meter]);
///   var app = builder.Build();
///   app.MapPrometheusMetrics();
/// </code>
/// </summary>
public static class PrometheusMetricsEndpoint
{
    /// <summary>Registers the host's exporter of <paramref name="meters"/> (created by <see cref="MapPrometheusMetrics"/>, disposed with the container).</summary>
    public static IServiceCollection AddPrometheusExporter(this IServiceCollection services, PrometheusNaming naming, Func<IServiceProvider, IEnumerable<Meter>> meters)
    {
        ArgumentNullException.ThrowIfNull(meters);
        return services.AddSingleton(sp => new PrometheusExporter(naming, meters(sp)));
    }

    /// <summary>
    /// Starts the exporter registered by <see cref="AddPrometheusExporter"/> and maps <c>GET <paramref name="pattern"/></c> to
    /// its registry (Prometheus text, or OpenMetrics when the scraper asks for it). Call before the host starts, so that no
    /// measurement is missed.
    /// </summary>
    public static IEndpointConventionBuilder MapPrometheusMetrics(this IEndpointRouteBuilder endpoints, string pattern = "/metrics")
    {
        ArgumentNullException.ThrowIfNull(endpoints);
        return endpoints.MapMetrics(pattern, endpoints.ServiceProvider.GetRequiredService<PrometheusExporter>().Registry);
    }
}
