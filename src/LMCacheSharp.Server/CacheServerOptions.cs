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

    /// <summary>How long a graceful stop waits for requests in progress. Default 5 s; range 0..10 min.</summary>
    public TimeSpan ShutdownTimeout { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// Persistence: values also go to a disk directory and survive a restart (<see cref="DiskBackedCacheStore"/>). Default
    /// null (memory only).
    /// </summary>
    public DiskStoreOptions? Disk { get; set; }

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

        if (ShutdownTimeout < TimeSpan.Zero || ShutdownTimeout > TimeSpan.FromMinutes(10))
        {
            errors.Add($"shutdown timeout: must be in 0..10 min, got {ShutdownTimeout}");
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
