using LMCacheSharp.Protocol;

namespace LMCacheSharp.Server;

/// <summary>
/// Running totals of the cache server, answered by STATS and exported to Prometheus (names below, prefixed
/// <c>lmcache_server_</c>). Thread-safe; counting allocates nothing.
/// </summary>
public sealed class CacheServerMetrics
{
    private readonly long[] _requests = new long[16];
    private long _hits, _misses, _bytesIn, _bytesOut, _accepted, _active, _rejected, _protocolErrors, _requestErrors, _authFailures, _authCloses, _putBusy, _slowClients;

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

    /// <summary>Every counter by name (the STATS reply and the Prometheus export), with the store's sizes (and its disk's, <c>disk_*</c>, when it has one).</summary>
    public IReadOnlyList<KeyValuePair<string, long>> Snapshot(CacheStoreStats store)
    {
        var list = new List<KeyValuePair<string, long>>(32)
        {
            new("items", store.Items),
            new("used_bytes", store.UsedBytes),
            new("capacity_bytes", store.CapacityBytes),
            new("evictions", store.Evictions),
            new("hits", Interlocked.Read(ref _hits)),
            new("misses", Interlocked.Read(ref _misses)),
            new("bytes_received", Interlocked.Read(ref _bytesIn)),
            new("bytes_sent", Interlocked.Read(ref _bytesOut)),
            new("connections_accepted", Interlocked.Read(ref _accepted)),
            new("connections_active", Interlocked.Read(ref _active)),
            new("connections_rejected", Interlocked.Read(ref _rejected)),
            new("protocol_errors", Interlocked.Read(ref _protocolErrors)),
            new("request_errors", Interlocked.Read(ref _requestErrors)),
            new("auth_failures", Interlocked.Read(ref _authFailures)),
            new("auth_closes", Interlocked.Read(ref _authCloses)),
            new("put_busy", Interlocked.Read(ref _putBusy)),
            new("connections_too_slow", Interlocked.Read(ref _slowClients)),
        };
        if (store.Disk is { } disk)
        {
            list.AddRange(
            [
                new("disk_items", disk.Items),
                new("disk_used_bytes", disk.UsedBytes),
                new("disk_capacity_bytes", disk.CapacityBytes),
                new("disk_queued_bytes", disk.QueuedBytes),
                new("disk_hits", disk.Hits),
                new("disk_writes", disk.Writes),
                new("disk_writes_dropped", disk.WritesDropped),
                new("disk_refused", disk.Refused),
                new("disk_write_failures", disk.WriteFailures),
                new("disk_evictions", disk.Evictions),
                new("disk_corrupt", disk.Corrupt),
                new("disk_errors", disk.Errors),
            ]);
        }

        foreach (var op in Enum.GetValues<Opcode>())
        {
            list.Add(new("requests_" + OpcodeName(op), Interlocked.Read(ref _requests[(int)op & 15])));
        }

        return list;
    }

    /// <summary>The lower-case wire name of an opcode ("get", "exists_prefix").</summary>
    public static string OpcodeName(Opcode opcode) => opcode switch
    {
        Opcode.MultiGet => "mget",
        Opcode.ExistsPrefix => "exists_prefix",
        _ => opcode.ToString().ToLowerInvariant(),
    };
}
