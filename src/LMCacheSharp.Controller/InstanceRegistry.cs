using Microsoft.Extensions.Logging;

namespace LMCacheSharp.Controller;

/// <summary>
/// The registered instances, keyed by URL: registration (a second one from the same URL replaces the first, its entries
/// and its event stream), heartbeats, and expiry of instances whose heartbeats stopped (swept every heartbeat interval).
/// </summary>
public sealed partial class InstanceRegistry : IDisposable
{
    private readonly Lock _lock = new();
    private readonly Dictionary<string, FleetInstance> _byId = new(StringComparer.Ordinal);
    private readonly Dictionary<string, FleetInstance> _byUrl = new(StringComparer.OrdinalIgnoreCase);
    private readonly ChunkDirectory _directory;
    private readonly ControllerOptions _options;
    private readonly TimeProvider _time;
    private readonly ILogger _log;
    private readonly ITimer _sweeper;
    private int _nextIndex;

    /// <summary>Creates the registry and starts its expiry sweep.</summary>
    public InstanceRegistry(ChunkDirectory directory, ControllerOptions options, TimeProvider time, ILogger log)
    {
        ArgumentNullException.ThrowIfNull(options);
        _directory = directory;
        _options = options;
        _time = time;
        _log = log;
        Metrics = new ControllerMetrics(() => Count, () => _directory.Count);
        var period = TimeSpan.FromTicks(Math.Max(TimeSpan.FromMilliseconds(50).Ticks, options.HeartbeatInterval.Ticks / 2));
        _sweeper = time.CreateTimer(_ => Sweep(), null, period, period);
    }

    /// <summary>The controller's metrics.</summary>
    public ControllerMetrics Metrics { get; }

    /// <summary>Registered instances.</summary>
    public int Count
    {
        get
        {
            lock (_lock)
            {
                return _byId.Count;
            }
        }
    }

    /// <summary>Every registered instance, in registration order.</summary>
    public IReadOnlyList<FleetInstance> All
    {
        get
        {
            lock (_lock)
            {
                return [.. _byId.Values.OrderBy(i => i.Index)];
            }
        }
    }

    /// <summary>The instance with this id, or null.</summary>
    public FleetInstance? Find(string id)
    {
        lock (_lock)
        {
            return _byId.GetValueOrDefault(id);
        }
    }

    /// <summary>Seconds since <paramref name="instance"/>'s last heartbeat.</summary>
    public double HeartbeatAge(FleetInstance instance)
    {
        ArgumentNullException.ThrowIfNull(instance);
        return _time.GetElapsedTime(instance.LastHeartbeat).TotalSeconds;
    }

    /// <summary>
    /// Registers an instance (or re-registers it: an instance that restarted, or that found this controller restarted);
    /// starts reading its KV events, replaying what its publisher kept.
    /// </summary>
    public FleetInstance Register(InstanceRegistration registration)
    {
        ArgumentNullException.ThrowIfNull(registration);
        FleetInstance instance;
        FleetInstance? replaced;
        lock (_lock)
        {
            _byUrl.TryGetValue(registration.Url, out replaced);
            if (replaced is not null)
            {
                _byId.Remove(replaced.Id);
                _byUrl.Remove(registration.Url);
            }

            var index = ++_nextIndex;
            instance = new FleetInstance(index, "i" + index.ToString(System.Globalization.CultureInfo.InvariantCulture), registration, _time.GetTimestamp());
            _byId.Add(instance.Id, instance);
            _byUrl.Add(registration.Url, instance);
        }

        if (replaced is not null)
        {
            Retire(replaced);
        }

        _directory.AddInstance(instance.Index);
        if (registration.KvEvents is not null)
        {
            instance.Events = new KvEventIngestor(instance, _directory, Metrics, _log, _options.ReplayTimeout);
        }

        LogRegistered(_log, instance.Id, registration.Url, registration.Model, registration.KvEvents ?? "none");
        return instance;
    }

    /// <summary>Records a heartbeat; false when the id is unknown (expired, or this controller restarted: register again).</summary>
    public bool Heartbeat(string id, InstanceLoad load, InstanceStats? stats)
    {
        var instance = Find(id);
        if (instance is null)
        {
            return false;
        }

        instance.Heartbeat(_time.GetTimestamp(), load, stats);
        return true;
    }

    /// <summary>Removes an instance now (it is shutting down); false when unknown.</summary>
    public bool Deregister(string id)
    {
        FleetInstance? instance;
        lock (_lock)
        {
            if (!_byId.Remove(id, out instance))
            {
                return false;
            }

            _byUrl.Remove(instance.Registration.Url);
        }

        Retire(instance);
        return true;
    }

    /// <summary>Expires every instance whose last heartbeat is older than the timeout.</summary>
    public void Sweep()
    {
        List<FleetInstance> expired = [];
        lock (_lock)
        {
            foreach (var instance in _byId.Values)
            {
                if (_time.GetElapsedTime(instance.LastHeartbeat) > _options.HeartbeatTimeout)
                {
                    expired.Add(instance);
                }
            }

            foreach (var instance in expired)
            {
                _byId.Remove(instance.Id);
                _byUrl.Remove(instance.Registration.Url);
            }
        }

        foreach (var instance in expired)
        {
            Metrics.Expired();
            LogExpired(_log, instance.Id, instance.Registration.Url, _options.HeartbeatTimeout.TotalSeconds);
            Retire(instance);
        }
    }

    private void Retire(FleetInstance instance)
    {
        // The directory forgets the index first, so a batch the stream is still applying is ignored.
        _directory.RemoveInstance(instance.Index);
        if (instance.Events is { } events)
        {
            // Joining the reader thread may take a receive timeout: not on the caller's (request or timer) thread.
            _ = Task.Run(events.Dispose);
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _sweeper.Dispose();
        List<FleetInstance> all;
        lock (_lock)
        {
            all = [.. _byId.Values];
            _byId.Clear();
            _byUrl.Clear();
        }

        foreach (var instance in all)
        {
            _directory.RemoveInstance(instance.Index);
            instance.Events?.Dispose();
        }

        Metrics.Dispose();
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "instance {Id} registered: {Url}, model '{Model}', KV events {Events}")]
    private static partial void LogRegistered(ILogger log, string id, string url, string model, string events);

    [LoggerMessage(Level = LogLevel.Warning, Message = "instance {Id} ({Url}) expired: no heartbeat for {Timeout} s; its chunks left the directory")]
    private static partial void LogExpired(ILogger log, string id, string url, double timeout);
}
