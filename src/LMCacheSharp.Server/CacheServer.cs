using System.Net;
using LMCacheSharp.Http;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace LMCacheSharp.Server;

/// <summary>
/// The cache server host (<c>lmcache server</c>): Kestrel with the cache protocol on <see cref="CacheServerOptions.Port"/>
/// and, when <see cref="CacheServerOptions.MetricsPort"/> is set, Prometheus metrics at <c>/metrics</c> over HTTP.
/// <code>
///   await using var server = CacheServer.Create(new CacheServerOptions { Port = 0, CapacityBytes = 8L &lt;&lt; 30 });
///   await server.StartAsync();
///   // remote_url: server.Url  (lm://127.0.0.1:PORT)
/// </code>
/// </summary>
public sealed partial class CacheServer : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly ListenOptions _protocolEndpoint;
    private readonly ListenOptions? _metricsEndpoint;
    private readonly bool _ownsStore;
    private int _disposed;

    private CacheServer(WebApplication app, ListenOptions protocolEndpoint, ListenOptions? metricsEndpoint, CacheServerOptions options,
        ICacheStore store, bool ownsStore, CacheServerMetrics metrics)
    {
        _app = app;
        _protocolEndpoint = protocolEndpoint;
        _metricsEndpoint = metricsEndpoint;
        Options = options;
        Store = store;
        _ownsStore = ownsStore;
        Metrics = metrics;
    }

    /// <summary>The options.</summary>
    public CacheServerOptions Options { get; }

    /// <summary>Where values are kept.</summary>
    public ICacheStore Store { get; }

    /// <summary>The PUT budget shared by every connection (<see cref="CacheServerOptions.MaxInFlightPutBytes"/>).</summary>
    public InFlightBudget InFlight => _app.Services.GetRequiredService<InFlightBudget>();

    /// <summary>Counters (STATS, /metrics).</summary>
    public CacheServerMetrics Metrics { get; }

    /// <summary>The bound protocol endpoint (the real port once started, when <see cref="CacheServerOptions.Port"/> was 0).</summary>
    public IPEndPoint EndPoint => _protocolEndpoint.IPEndPoint!;

    /// <summary>The URL clients put in <c>remote_url</c>: <c>lm://host:port</c>.</summary>
    public string Url => $"lm://{FormatHost(EndPoint)}:{EndPoint.Port}";

    /// <summary>The metrics URL (<c>http://host:port/metrics</c>), or null when metrics are off.</summary>
    public Uri? MetricsUrl => _metricsEndpoint?.IPEndPoint is { } ep ? new Uri($"http://{FormatHost(ep)}:{ep.Port}/metrics") : null;

    /// <summary>Stops when the host is told to stop (Ctrl+C, SIGTERM, <see cref="StopAsync"/>).</summary>
    public CancellationToken Stopping => _app.Lifetime.ApplicationStopping;

    /// <summary>Builds a server; nothing listens until <see cref="StartAsync"/>.</summary>
    /// <exception cref="IOException">The disk directory cannot be opened or is in use by another process.</exception>
    /// <param name="options">Validated here.</param>
    /// <param name="store">
    /// The store, or null for one owned by the server: a <see cref="MemoryCacheStore"/> of <see cref="CacheServerOptions.CapacityBytes"/>,
    /// or with <see cref="CacheServerOptions.Disk"/> a <see cref="DiskBackedCacheStore"/> (which opens the directory here),
    /// with the options' pinned-bytes limit and salt quotas (<see cref="CacheStoreLimits.FromOptions"/>). A store passed in
    /// keeps its own.
    /// </param>
    /// <param name="configureLogging">Optional logging setup (default: console, warnings and up from ASP.NET Core).</param>
    public static CacheServer Create(CacheServerOptions options, ICacheStore? store = null, Action<ILoggingBuilder>? configureLogging = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        var ownsStore = store is null;
        var limits = CacheStoreLimits.FromOptions(options);
        store ??= options.Disk is { } disk ? new DiskBackedCacheStore(options.CapacityBytes, disk, limits) : new MemoryCacheStore(options.CapacityBytes, limits: limits);
        try
        {
            var metrics = new CacheServerMetrics(store);
            var builder = WebApplication.CreateSlimBuilder();
            builder.Logging.AddFilter("Microsoft", LogLevel.Warning);
            configureLogging?.Invoke(builder.Logging);
            builder.Services.Configure<HostOptions>(h => h.ShutdownTimeout = options.ShutdownTimeout);
            builder.Services.AddSingleton(store);
            // Large pipe blocks: Kestrel's default 4 KiB blocks cap each socket read at 4 KiB (see LargeBlockMemoryPool).
            builder.Services.AddSingleton<IMemoryPoolFactory<byte>, LargeBlockMemoryPoolFactory>();
            builder.Services.AddSingleton(options);
            builder.Services.AddSingleton(metrics);
            if (options.MetricsPort is not null)
            {
                builder.Services.AddPrometheusExporter(PrometheusNaming.Instrument, _ => [metrics.Meter]);
            }

            builder.Services.AddSingleton(new InFlightBudget(options.EffectiveMaxInFlightPutBytes));
            builder.Services.AddSingleton(CacheSession.CreateChildIndex(options));
            var address = string.Equals(options.Host, "localhost", StringComparison.OrdinalIgnoreCase) ? IPAddress.Loopback : IPAddress.Parse(options.Host);
            ListenOptions? protocol = null, http = null;
            builder.WebHost.ConfigureKestrel(k =>
            {
                k.Listen(address, options.Port, l =>
                {
                    protocol = l;
                    l.UseConnectionHandler<CacheConnectionHandler>();
                });
                if (options.MetricsPort is { } metricsPort)
                {
                    k.Listen(address, metricsPort, l =>
                    {
                        http = l;
                        l.Protocols = HttpProtocols.Http1;
                    });
                }
            });
            var app = builder.Build();
            if (options.MetricsPort is not null)
            {
                app.MapPrometheusMetrics();
            }

            // Kestrel runs the Listen callbacks while the app is built, so the endpoints are known here.
            return new CacheServer(app, protocol!, http, options, store, ownsStore, metrics);
        }
        catch
        {
            if (ownsStore)
            {
                store.Dispose(); // releases the disk directory's lock
            }

            throw;
        }
    }

    /// <summary>Binds and starts accepting connections.</summary>
    public Task StartAsync(CancellationToken cancellationToken = default) => _app.StartAsync(cancellationToken);

    /// <summary>
    /// Stops gracefully: stops accepting, lets each connection finish the request in progress (up to
    /// <see cref="CacheServerOptions.ShutdownTimeout"/>), sends ShuttingDown and closes.
    /// </summary>
    public Task StopAsync(CancellationToken cancellationToken = default) => _app.StopAsync(cancellationToken);

    /// <summary>Completes when the server has been told to stop and has stopped.</summary>
    public Task WaitForShutdownAsync(CancellationToken cancellationToken = default) => _app.WaitForShutdownAsync(cancellationToken);

    /// <summary>Stops (if running) and releases the store when the server owns it.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        try
        {
            await _app.StopAsync().ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // Already stopping.
        }

        var logger = _app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("LMCacheSharp.Server");
        await _app.DisposeAsync().ConfigureAwait(false);
        Metrics.Dispose();
        if (_ownsStore)
        {
            // A disk-backed store finishes its queued disk writes here, after the last connection has closed, within the
            // configured time; what it flushed and what it dropped is logged.
            if (Store is DiskBackedCacheStore disk)
            {
                var report = await disk.ShutdownAsync(Options.Disk?.ShutdownFlushTimeout ?? TimeSpan.FromSeconds(30)).ConfigureAwait(false);
                if (report.TimedOut)
                {
                    LogFlushDropped(logger, report.QueuedRecords, report.Written, report.Dropped, report.DroppedBytes);
                }
                else
                {
                    LogFlushed(logger, report.QueuedRecords, report.QueuedBytes, report.Written);
                }
            }
            else if (Store is IAsyncDisposable asyncStore)
            {
                await asyncStore.DisposeAsync().ConfigureAwait(false);
            }
            else
            {
                Store.Dispose();
            }
        }
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "disk write queue flushed on shutdown: {Records} records ({Bytes} bytes) queued, {Written} values written")]
    private static partial void LogFlushed(ILogger logger, long records, long bytes, long written);

    [LoggerMessage(Level = LogLevel.Warning,
        Message = "disk write queue flush timed out on shutdown: {Records} records queued, {Written} values written, {Dropped} records ({DroppedBytes} bytes) dropped (kept nowhere)")]
    private static partial void LogFlushDropped(ILogger logger, long records, long written, long dropped, long droppedBytes);

    private static string FormatHost(IPEndPoint endPoint) =>
        endPoint.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{endPoint.Address}]" : endPoint.Address.ToString();
}
