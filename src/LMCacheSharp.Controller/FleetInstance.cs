using LMCacheSharp.Core.Keys;

namespace LMCacheSharp.Controller;

/// <summary>Load an instance reports with its heartbeat.</summary>
/// <param name="InFlight">Requests queued or running.</param>
/// <param name="Queued">Requests waiting for a sequence.</param>
public readonly record struct InstanceLoad(int InFlight, int Queued);

/// <summary>Cache figures an instance reports with its heartbeat (totals since it started).</summary>
/// <param name="LookupTokens">Prompt tokens looked up.</param>
/// <param name="HitTokens">Of those, tokens found cached.</param>
/// <param name="MemoryUsedBytes">Bytes in its memory tier.</param>
/// <param name="MemoryCapacityBytes">Capacity of its memory tier (0: none).</param>
/// <param name="DiskUsedBytes">Bytes in its disk tier.</param>
/// <param name="DiskCapacityBytes">Capacity of its disk tier (0: none).</param>
public readonly record struct InstanceStats(long LookupTokens, long HitTokens, long MemoryUsedBytes, long MemoryCapacityBytes, long DiskUsedBytes, long DiskCapacityBytes)
{
    /// <summary>Hit tokens / looked-up tokens (0 before any lookup).</summary>
    public double HitRate => LookupTokens == 0 ? 0 : (double)HitTokens / LookupTokens;
}

/// <summary>What an instance registers with (<c>POST /instances/register</c>).</summary>
/// <param name="Url">Its HTTP base URL (the OpenAI API and the /lmcache/* admin endpoints).</param>
/// <param name="Model">The model name it serves.</param>
/// <param name="Namespace">Its default cache namespace (model fingerprint, KV format, variant), from which the controller
/// computes the same chunk keys it does; null: lookups cannot find whole chunks on it.</param>
/// <param name="ChunkSize">Tokens per chunk.</param>
/// <param name="Tiers">Its tiers ("memory", "disk", "remote").</param>
/// <param name="KvEvents">Its KV event PUB endpoint, or null.</param>
/// <param name="KvEventsReplay">Its replay ROUTER endpoint, or null.</param>
/// <param name="KvEventsTopic">The topic of its event messages ("" for all).</param>
public sealed record InstanceRegistration(string Url, string Model, CacheNamespace? Namespace, int ChunkSize, IReadOnlyList<string> Tiers,
    string? KvEvents, string? KvEventsReplay, string KvEventsTopic);

/// <summary>One registered instance: what it registered with, its heartbeats, and its event stream's state.</summary>
public sealed class FleetInstance
{
    private readonly Lock _lock = new();
    private InstanceLoad _load;
    private InstanceStats _stats;
    private long _lastHeartbeat;

    internal FleetInstance(int index, string id, InstanceRegistration registration, long now)
    {
        Index = index;
        Id = id;
        Registration = registration;
        _lastHeartbeat = now;
        RegisteredAt = now;
    }

    /// <summary>The directory's index of the instance (never reused).</summary>
    public int Index { get; }

    /// <summary>The id the controller gave it ("i1", "i2", ...).</summary>
    public string Id { get; }

    /// <summary>What it registered with.</summary>
    public InstanceRegistration Registration { get; }

    /// <summary>When it registered (<see cref="TimeProvider.GetTimestamp"/> of the registry's clock).</summary>
    public long RegisteredAt { get; }

    /// <summary>Its event stream, or null when it publishes none.</summary>
    internal KvEventIngestor? Events { get; set; }

    /// <summary>The last heartbeat's timestamp.</summary>
    public long LastHeartbeat => Interlocked.Read(ref _lastHeartbeat);

    /// <summary>The last reported load.</summary>
    public InstanceLoad Load
    {
        get
        {
            lock (_lock)
            {
                return _load;
            }
        }
    }

    /// <summary>The last reported cache figures.</summary>
    public InstanceStats Stats
    {
        get
        {
            lock (_lock)
            {
                return _stats;
            }
        }
    }

    internal void Heartbeat(long now, InstanceLoad load, InstanceStats? stats)
    {
        lock (_lock)
        {
            _load = load;
            _stats = stats ?? _stats;
        }

        Interlocked.Exchange(ref _lastHeartbeat, now);
    }
}
