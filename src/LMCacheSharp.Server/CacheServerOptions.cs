using LMCacheSharp.Protocol;

namespace LMCacheSharp.Server;

/// <summary>Settings of the cache server (<c>lmcache server</c>). <see cref="GetErrors"/> names every bad value and its range.</summary>
public sealed class CacheServerOptions
{
    /// <summary>Address to bind. Default 127.0.0.1 (loopback only); "0.0.0.0" or "::" listens on every interface.</summary>
    public string Host { get; set; } = "127.0.0.1";

    /// <summary>TCP port of the cache protocol. Default 65432; range 0..65535 (0 picks a free port).</summary>
    public int Port { get; set; } = 65432;

    /// <summary>Bytes of values held before the least recently used are evicted. Default 1 GiB; range 1 MiB..16 TiB.</summary>
    public long CapacityBytes { get; set; } = 1L << 30;

    /// <summary>
    /// Token clients must send with AUTH before any other request but PING; null or empty disables authentication.
    /// Default null. Only as strong as the channel: use it on loopback or behind a TLS tunnel.
    /// </summary>
    public string? AuthToken { get; set; }

    /// <summary>Connections served at once; more are answered with Busy and closed. Default 1024; range 1..100000.</summary>
    public int MaxConnections { get; set; } = 1024;

    /// <summary>Limits on keys, values and frames.</summary>
    public ProtocolLimits Limits { get; set; } = ProtocolLimits.Default;

    /// <summary>
    /// Port of the HTTP endpoint serving Prometheus metrics at /metrics, on <see cref="Host"/>. Default null (no HTTP
    /// endpoint; STATS still answers); range 0..65535 (0 picks a free port).
    /// </summary>
    public int? MetricsPort { get; set; }

    /// <summary>
    /// Bytes of a large value copied into the socket's buffer before it is flushed, so copying and sending overlap and a
    /// connection holds at most about this much unsent. Default 1 MiB; range 4 KiB..64 MiB.
    /// </summary>
    public int WriteSliceBytes { get; set; } = 1 << 20;

    /// <summary>
    /// How long a connection may go without receiving a byte while it is inside a frame (a header begun, or a body not yet
    /// complete) before it is closed, so a stalled or malicious client cannot hold a connection slot and a partly received
    /// value forever. Idle time between frames is not limited (pooled clients keep connections open). Default 30 s; range
    /// 100 ms..1 h, or <see cref="Timeout.InfiniteTimeSpan"/> for no limit.
    /// </summary>
    public TimeSpan FrameTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Bytes of PUT values being received at once, across all connections: each PUT reserves its value's buffer (rounded up
    /// to 4 KiB) from the moment its header arrives until the store has it. A PUT that does not fit waits up to
    /// <see cref="InFlightPutWait"/> for others to finish, then is answered <c>Busy</c> (its body is read and dropped; the
    /// connection stays usable). A value larger than the whole budget is admitted only when nothing else is in flight.
    /// Default null: a quarter of <see cref="CapacityBytes"/>, at least 64 MiB and at most 1 GiB. Range 1 MiB..1 TiB.
    /// </summary>
    public long? MaxInFlightPutBytes { get; set; }

    /// <summary>The in-flight budget in effect: <see cref="MaxInFlightPutBytes"/>, or its default derived from <see cref="CapacityBytes"/>.</summary>
    public long EffectiveMaxInFlightPutBytes => MaxInFlightPutBytes ?? Math.Clamp(CapacityBytes / 4, 64L << 20, 1L << 30);

    /// <summary>
    /// How long a PUT waits for room in <see cref="MaxInFlightPutBytes"/> before it is answered <c>Busy</c>. Default 100 ms;
    /// range 0..10 s.
    /// </summary>
    public TimeSpan InFlightPutWait { get; set; } = TimeSpan.FromMilliseconds(100);

    /// <summary>
    /// Minimum data rate inside a frame, in bytes per second, averaged from the frame's first byte over the time the server
    /// spent waiting for the client (Kestrel's MinRequestBodyDataRate): a client that trickles a frame slower than this is
    /// sent one ProtocolViolation frame and closed once <see cref="MinDataRateGracePeriod"/> has passed. Applies on top of
    /// <see cref="FrameTimeout"/>. Default 65536 (64 KiB/s); range 0 (off)..1 GiB/s.
    /// </summary>
    public long MinDataRateBytesPerSecond { get; set; } = 64 << 10;

    /// <summary>Time inside a frame before <see cref="MinDataRateBytesPerSecond"/> is enforced. Default 5 s; range 0..10 min.</summary>
    public TimeSpan MinDataRateGracePeriod { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// Failed AUTH attempts allowed on one connection: the last one is answered Unauthorized and the connection is closed
    /// (counted in <c>auth_failures</c> and <c>auth_closes</c>). Default 3; range 1..1000.
    /// </summary>
    public int MaxAuthFailures { get; set; } = 3;

    /// <summary>How long a graceful stop waits for requests in progress. Default 5 s; range 0..10 min.</summary>
    public TimeSpan ShutdownTimeout { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// Persistence: values also go to a disk directory and survive a restart (<see cref="DiskBackedCacheStore"/>). Default
    /// null (memory only).
    /// </summary>
    public DiskStoreOptions? Disk { get; set; }

    /// <summary>
    /// Children (LINK records: a stored key that continues a parent key, with its tokens) the server remembers for token-exact
    /// lookups (CHILDREN), oldest forgotten first. Soft state: lost on restart. Default 65,536; range 1..16,777,216.
    /// </summary>
    public int MaxChildren { get; set; } = 65_536;

    /// <summary>Tokens the remembered children may hold in all (4 bytes each). Default 16,777,216 (64 MiB); range 1..2^32.</summary>
    public long MaxChildTokens { get; set; } = 1L << 24;

    /// <summary>
    /// Bytes of values that may be pinned (PIN) at once; a PIN that would go over it is refused whole. Default null: half of
    /// <see cref="CapacityBytes"/>; range 0 (no pins)..<see cref="CapacityBytes"/>. With <see cref="Disk"/>, pins hold values
    /// in memory, so this is memory.
    /// </summary>
    public long? MaxPinnedBytes { get; set; }

    /// <summary>The pinned-bytes limit in effect: <see cref="MaxPinnedBytes"/>, or half of <see cref="CapacityBytes"/>.</summary>
    public long EffectiveMaxPinnedBytes => MaxPinnedBytes ?? CapacityBytes / 2;

    /// <summary>
    /// Byte quotas per <c>cache_salt</c> (LMCache's isolated LRU): salt -&gt; most bytes of values its tenant's chunks may hold
    /// in memory. A client sends each salted chunk with its salt's quota group (<see cref="Core.Keys.CacheNamespace.QuotaGroupOf"/>,
    /// a hash: the salt never travels) and the server computes the same id from each salt here; a PUT that would take a
    /// group over its quota evicts that group's least recently used values first. Default empty; at most 10,000 salts, each
    /// quota 4 KiB..<see cref="CapacityBytes"/>.
    /// </summary>
    public IDictionary<string, long> SaltQuotas { get; } = new Dictionary<string, long>(StringComparer.Ordinal);

    /// <summary>
    /// Quota of every salt not in <see cref="SaltQuotas"/> (each such group on its own). Default null: other salts have no
    /// quota of their own, only the capacity; range 4 KiB..<see cref="CapacityBytes"/>.
    /// </summary>
    public long? DefaultSaltQuotaBytes { get; set; }

    /// <summary>Most salts <see cref="SaltQuotas"/> may name (each is a labelled series on /metrics).</summary>
    public const int MaxSaltQuotas = 10_000;

    /// <summary>Every problem with the current values; empty when valid.</summary>
    public IReadOnlyList<string> GetErrors()
    {
        var errors = new List<string>();
        if (string.IsNullOrWhiteSpace(Host))
        {
            errors.Add("host: must be an address such as 127.0.0.1");
        }
        else if (!System.Net.IPAddress.TryParse(Host, out _) && !string.Equals(Host, "localhost", StringComparison.OrdinalIgnoreCase))
        {
            errors.Add($"host: must be an IP address or localhost, got '{Host}'");
        }

        if (Port is < 0 or > 65535)
        {
            errors.Add($"port: must be in 0..65535, got {Port}");
        }

        if (CapacityBytes is < 1L << 20 or > 1L << 44)
        {
            errors.Add($"capacity: must be in 1MB..16TB, got {CapacityBytes} bytes");
        }

        if (MaxConnections is < 1 or > 100_000)
        {
            errors.Add($"max connections: must be in 1..100000, got {MaxConnections}");
        }

        if (MetricsPort is < 0 or > 65535)
        {
            errors.Add($"metrics port: must be in 0..65535, got {MetricsPort}");
        }

        if (WriteSliceBytes is < 4096 or > 64 << 20)
        {
            errors.Add($"write slice: must be in 4KB..64MB, got {WriteSliceBytes} bytes");
        }

        if (FrameTimeout != Timeout.InfiniteTimeSpan && (FrameTimeout < TimeSpan.FromMilliseconds(100) || FrameTimeout > TimeSpan.FromHours(1)))
        {
            errors.Add($"frame timeout: must be in 100 ms..1 h (or infinite), got {FrameTimeout}");
        }

        if (MaxInFlightPutBytes is < 1L << 20 or > 1L << 40)
        {
            errors.Add($"max in-flight put bytes: must be in 1MB..1TB, got {MaxInFlightPutBytes} bytes");
        }

        if (InFlightPutWait < TimeSpan.Zero || InFlightPutWait > TimeSpan.FromSeconds(10))
        {
            errors.Add($"in-flight put wait: must be in 0..10 s, got {InFlightPutWait}");
        }

        if (MinDataRateBytesPerSecond is < 0 or > 1L << 30)
        {
            errors.Add($"min data rate: must be in 0..1GB/s, got {MinDataRateBytesPerSecond} bytes/s");
        }

        if (MinDataRateGracePeriod < TimeSpan.Zero || MinDataRateGracePeriod > TimeSpan.FromMinutes(10))
        {
            errors.Add($"min data rate grace period: must be in 0..10 min, got {MinDataRateGracePeriod}");
        }

        if (MaxAuthFailures is < 1 or > 1000)
        {
            errors.Add($"max auth failures: must be in 1..1000, got {MaxAuthFailures}");
        }

        if (ShutdownTimeout < TimeSpan.Zero || ShutdownTimeout > TimeSpan.FromMinutes(10))
        {
            errors.Add($"shutdown timeout: must be in 0..10 min, got {ShutdownTimeout}");
        }

        if (MaxChildren is < 1 or > 1 << 24)
        {
            errors.Add($"max children: must be in 1..16777216, got {MaxChildren}");
        }

        if (MaxChildTokens is < 1 or > 1L << 32)
        {
            errors.Add($"max child tokens: must be in 1..4294967296, got {MaxChildTokens}");
        }

        if (MaxPinnedBytes is < 0 || MaxPinnedBytes > CapacityBytes)
        {
            errors.Add($"max pinned: must be in 0..the capacity ({CapacityBytes} bytes), got {MaxPinnedBytes} bytes");
        }

        if (SaltQuotas.Count > MaxSaltQuotas)
        {
            errors.Add($"salt quotas: at most {MaxSaltQuotas} salts, got {SaltQuotas.Count}");
        }

        foreach (var (salt, bytes) in SaltQuotas)
        {
            if (string.IsNullOrEmpty(salt))
            {
                errors.Add("salt quota: the salt must not be empty");
            }
            else if (bytes < 4096 || bytes > CapacityBytes)
            {
                errors.Add($"salt quota for salt #{Core.Keys.CacheNamespace.QuotaGroupOf(salt)}: must be in 4KB..the capacity ({CapacityBytes} bytes), got {bytes} bytes");
            }
        }

        if (DefaultSaltQuotaBytes is < 4096 || DefaultSaltQuotaBytes > CapacityBytes)
        {
            errors.Add($"default salt quota: must be in 4KB..the capacity ({CapacityBytes} bytes), got {DefaultSaltQuotaBytes} bytes");
        }

        if (Disk is not null)
        {
            errors.AddRange(Disk.GetErrors());
        }

        if (Limits is null)
        {
            errors.Add("limits: required");
        }
        else
        {
            errors.AddRange(Limits.GetErrors());
        }

        return errors;
    }

    /// <summary>Throws <see cref="ArgumentException"/> listing every problem.</summary>
    public void Validate()
    {
        var errors = GetErrors();
        if (errors.Count > 0)
        {
            throw new ArgumentException("Invalid cache server options: " + string.Join("; ", errors));
        }
    }
}
