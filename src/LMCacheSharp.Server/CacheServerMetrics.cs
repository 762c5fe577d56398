using System.Diagnostics.Metrics;
using LMCacheSharp.Protocol;

namespace LMCacheSharp.Server;

/// <summary>
/// Running totals of the cache server, counted once: answered by STATS (<see cref="Snapshot"/>) and reported by the
/// observable instruments of the meter <see cref="MeterName"/> (<c>lmcache_server.NAME</c>, exported at /metrics as
/// <c>lmcache_server_NAME</c> for a gauge and <c>lmcache_server_NAME_total</c> for a counter). Both read one table of the
/// names, so STATS and /metrics always list the same values. Thread-safe; counting allocates nothing.
/// </summary>
public sealed class CacheServerMetrics : IDisposable
{
    /// <summary>The meter name.</summary>
    public const string MeterName = "LMCacheSharp.Server";

    /// <summary>Every value STATS answers and /metrics exports, in that order; null when absent (disk values without a disk).</summary>
    private static readonly Stat[] Stats =
    [
        Stat.OfStore("items", true, "Values held.", s => s.Items),
        Stat.OfStore("used_bytes", true, "Bytes of values held (4 KiB-aligned buffers).", s => s.UsedBytes),
        Stat.OfStore("capacity_bytes", true, "Capacity in bytes.", s => s.CapacityBytes),
        Stat.OfStore("evictions", false, "Values evicted to make room.", s => s.Evictions),
        Stat.OfStore("pinned_items", true, "Values pinned (PIN), exempt from eviction.", s => s.PinnedItems),
        Stat.OfStore("pinned_bytes", true, "Bytes of the pinned values.", s => s.PinnedBytes),
        Stat.OfStore("max_pinned_bytes", true, "Bytes that may be pinned at once.", s => s.MaxPinnedBytes),
        Stat.OfStore("quota_evictions", false, "Values evicted to keep a salt's quota group within its quota (isolated LRU).", s => s.QuotaEvictions),
        Stat.Own("hits", "Keys found by GET, MGET and EXISTS-PREFIX.", m => Interlocked.Read(ref m._hits)),
        Stat.Own("misses", "Keys not found by GET, MGET and EXISTS-PREFIX.", m => Interlocked.Read(ref m._misses)),
        Stat.Own("bytes_received", "bytes received.", m => Interlocked.Read(ref m._bytesIn)),
        Stat.Own("bytes_sent", "bytes sent.", m => Interlocked.Read(ref m._bytesOut)),
        Stat.Own("connections_accepted", "connections accepted.", m => Interlocked.Read(ref m._accepted)),
        Stat.Own("connections_active", "Connections open.", m => m.ActiveConnections, isGauge: true),
        Stat.Own("connections_rejected", "connections rejected.", m => Interlocked.Read(ref m._rejected)),
        Stat.Own("protocol_errors", "protocol errors.", m => Interlocked.Read(ref m._protocolErrors)),
        Stat.Own("request_errors", "request errors.", m => Interlocked.Read(ref m._requestErrors)),
        Stat.Own("auth_failures", "Failed AUTH attempts and requests refused before AUTH.", m => Interlocked.Read(ref m._authFailures)),
        Stat.Own("auth_closes", "Connections closed after too many failed AUTH attempts.", m => Interlocked.Read(ref m._authCloses)),
        Stat.Own("put_busy", "PUTs answered Busy: the in-flight PUT budget was full.", m => Interlocked.Read(ref m._putBusy)),
        Stat.Own("connections_too_slow", "Connections closed for sending a frame under the minimum data rate.", m => Interlocked.Read(ref m._slowClients)),
        Stat.OfStore("disk_items", true, "Values on disk.", s => s.Disk?.Items),
        Stat.OfStore("disk_used_bytes", true, "Bytes of files on disk (4 KiB blocks).", s => s.Disk?.UsedBytes),
        Stat.OfStore("disk_capacity_bytes", true, "Disk capacity in bytes.", s => s.Disk?.CapacityBytes),
        Stat.OfStore("disk_queued_bytes", true, "Bytes of values waiting for the disk writer.", s => s.Disk?.QueuedBytes),
        Stat.OfStore("disk_hits", false, "GETs that missed memory and were served from disk.", s => s.Disk?.Hits),
        Stat.OfStore("disk_writes", false, "disk writes.", s => s.Disk?.Writes),
        Stat.OfStore("disk_writes_dropped", false, "Values not written to disk because the write queue was full.", s => s.Disk?.WritesDropped),
        Stat.OfStore("disk_refused", false, "Values kept in memory only (key not 32 bytes, or not a chunk envelope).", s => s.Disk?.Refused),
        Stat.OfStore("disk_write_failures", false, "disk write failures.", s => s.Disk?.WriteFailures),
        Stat.OfStore("disk_evictions", false, "disk evictions.", s => s.Disk?.Evictions),
        Stat.OfStore("disk_corrupt", false, "disk corrupt.", s => s.Disk?.Corrupt),
        Stat.OfStore("disk_errors", false, "disk errors.", s => s.Disk?.Errors),
        .. Enum.GetValues<Opcode>().Select(op => Stat.Own("requests_" + OpcodeName(op), $"{OpcodeName(op).ToUpperInvariant()} requests.",
            m => Interlocked.Read(ref m._requests[(int)op & 15]))),
    ];

    private readonly Meter _meter;
    private readonly bool _ownsMeter;
    private readonly ICacheStore? _store;
    private readonly long[] _requests = new long[16];
    private long _hits, _misses, _bytesIn, _bytesOut, _accepted, _active, _rejected, _protocolErrors, _requestErrors, _authFailures, _authCloses, _putBusy, _slowClients;

    /// <summary>Creates the totals and their instruments, on a meter from <paramref name="meterFactory"/> or a private one.</summary>
    /// <param name="store">The store whose sizes the instruments report (<c>items</c>, <c>used_bytes</c>, <c>disk_*</c>, ...); null: none.</param>
    /// <param name="meterFactory">Where the meter comes from; null: a private meter, disposed with this.</param>
    public CacheServerMetrics(ICacheStore? store = null, IMeterFactory? meterFactory = null)
    {
        _store = store;
        _meter = meterFactory?.Create(MeterName) ?? new Meter(MeterName);
        _ownsMeter = meterFactory is null;
        foreach (var stat in Stats)
        {
            var name = "lmcache_server." + stat.Name;
            if (stat.IsGauge)
            {
                _meter.CreateObservableGauge(name, () => Observe(stat), description: stat.Description);
            }
            else
            {
                _meter.CreateObservableCounter(name, () => Observe(stat), description: stat.Description);
            }
        }

        // Per quota group: too many for STATS, and labelled by the configured groups only (a bounded set), never by what
        // clients send. The label is the group id (a hash of the salt), so /metrics shows no salt.
        _meter.CreateObservableGauge("lmcache_server.quota_group_used_bytes", () => ObserveGroups(static g => g.UsedBytes), "By",
            "Bytes of values held in each configured salt quota group.");
        _meter.CreateObservableGauge("lmcache_server.quota_group_quota_bytes", () => ObserveGroups(static g => g.QuotaBytes), "By",
            "The quota of each configured salt quota group.");
        _meter.CreateObservableCounter("lmcache_server.quota_group_evictions", () => ObserveGroups(static g => g.Evictions), "{value}",
            "Values evicted to keep each configured salt quota group within its quota.");
    }

    /// <summary>The meter holding the instruments.</summary>
    public Meter Meter => _meter;

    /// <summary>Connections open now.</summary>
    public long ActiveConnections => Interlocked.Read(ref _active);

    internal void Request(Opcode opcode) => Interlocked.Increment(ref _requests[(int)opcode & 15]);

    internal void Hits(long n) => Interlocked.Add(ref _hits, n);

    internal void Misses(long n) => Interlocked.Add(ref _misses, n);

    internal void BytesIn(long n) => Interlocked.Add(ref _bytesIn, n);

    internal void BytesOut(long n) => Interlocked.Add(ref _bytesOut, n);

    internal void ConnectionOpened()
    {
        Interlocked.Increment(ref _accepted);
        Interlocked.Increment(ref _active);
    }

    internal void ConnectionClosed() => Interlocked.Decrement(ref _active);

    internal void ConnectionRejected() => Interlocked.Increment(ref _rejected);

    internal void ProtocolError() => Interlocked.Increment(ref _protocolErrors);

    internal void RequestError() => Interlocked.Increment(ref _requestErrors);

    internal void AuthFailure() => Interlocked.Increment(ref _authFailures);

    internal void AuthClose() => Interlocked.Increment(ref _authCloses);

    internal void PutBusy() => Interlocked.Increment(ref _putBusy);

    internal void SlowClient() => Interlocked.Increment(ref _slowClients);

    /// <summary>Every counter by name (the STATS reply), with the store's sizes (and its disk's, <c>disk_*</c>, when it has one).</summary>
    public IReadOnlyList<KeyValuePair<string, long>> Snapshot(CacheStoreStats store)
    {
        var list = new List<KeyValuePair<string, long>>(Stats.Length);
        foreach (var stat in Stats)
        {
            if (stat.Read(this, store) is { } value)
            {
                list.Add(new(stat.Name, value));
            }
        }

        return list;
    }

    /// <summary>The lower-case wire name of an opcode ("get", "exists_prefix").</summary>
    public static string OpcodeName(Opcode opcode) => opcode switch
    {
        Opcode.MultiGet => "mget",
        Opcode.ExistsPrefix => "exists_prefix",
        Opcode.PutInGroup => "put_in_group",
        _ => opcode.ToString().ToLowerInvariant(),
    };

    /// <inheritdoc />
    public void Dispose()
    {
        if (_ownsMeter)
        {
            _meter.Dispose();
        }
    }

    private Measurement<long>[] ObserveGroups(Func<QuotaGroupStats, long> read) =>
        _store is null ? [] : [.. _store.GetGroupStats().Select(g => new Measurement<long>(read(g), new KeyValuePair<string, object?>("group", g.Group)))];

    private Measurement<long>[] Observe(Stat stat) =>
        stat.Read(this, stat.ReadsStore ? _store?.GetStats() ?? default : default) is { } value ? [new(value)] : [];

    /// <summary>One value: its STATS name, whether it is a gauge (else a counter), its description and how it is read.</summary>
    private sealed record Stat(string Name, bool IsGauge, string Description, bool ReadsStore, Func<CacheServerMetrics, CacheStoreStats, long?> Read)
    {
        public static Stat OfStore(string name, bool isGauge, string description, Func<CacheStoreStats, long?> read) =>
            new(name, isGauge, description, true, (_, s) => read(s));

        public static Stat Own(string name, string description, Func<CacheServerMetrics, long> read, bool isGauge = false) =>
            new(name, isGauge, description, false, (m, _) => read(m));
    }
}
