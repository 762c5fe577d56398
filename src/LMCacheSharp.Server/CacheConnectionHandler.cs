using LMCacheSharp.Protocol;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace LMCacheSharp.Server;

/// <summary>Kestrel's entry point for the cache protocol: one <see cref="CacheSession"/> per connection, within the connection limit.</summary>
public sealed partial class CacheConnectionHandler : ConnectionHandler
{
    private readonly ICacheStore _store;
    private readonly CacheServerOptions _options;
    private readonly CacheServerMetrics _metrics;
    private readonly ILogger _logger;
    private readonly CancellationToken _stopping;
    private readonly InFlightBudget _budget;
    private readonly Core.Engine.TailIndex _children;
    private int _active;

    /// <summary>Creates the handler (resolved by dependency injection).</summary>
    public CacheConnectionHandler(ICacheStore store, CacheServerOptions options, CacheServerMetrics metrics, ILoggerFactory loggerFactory,
        IHostApplicationLifetime lifetime, InFlightBudget budget, Core.Engine.TailIndex children)
    {
        ArgumentNullException.ThrowIfNull(children);
        _children = children;
        ArgumentNullException.ThrowIfNull(budget);
        _budget = budget;
        ArgumentNullException.ThrowIfNull(loggerFactory);
        ArgumentNullException.ThrowIfNull(lifetime);
        _store = store;
        _options = options;
        _metrics = metrics;
        _logger = loggerFactory.CreateLogger("LMCacheSharp.Server");
        _stopping = lifetime.ApplicationStopping;
    }

    /// <inheritdoc />
    public override async Task OnConnectedAsync(ConnectionContext connection)
    {
        ArgumentNullException.ThrowIfNull(connection);
        if (Interlocked.Increment(ref _active) > _options.MaxConnections)
        {
            try
            {
                _metrics.ConnectionRejected();
                LogRefused(_logger, connection.ConnectionId, _options.MaxConnections);
                FrameWriter.WriteError(connection.Transport.Output, 0, StatusCode.Busy, 0, "too many connections");
                await connection.Transport.Output.FlushAsync().ConfigureAwait(false);
                await connection.Transport.Output.CompleteAsync().ConfigureAwait(false);
            }
            finally
            {
                Interlocked.Decrement(ref _active);
            }

            return;
        }

        _metrics.ConnectionOpened();
        try
        {
            await new CacheSession(connection.Transport, _store, _options, _metrics, _logger, _budget, null, _children).RunAsync(_stopping).ConfigureAwait(false);
        }
        finally
        {
            _metrics.ConnectionClosed();
            Interlocked.Decrement(ref _active);
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "refusing connection {Id}: {Max} connections open")]
    private static partial void LogRefused(ILogger logger, string id, int max);
}
