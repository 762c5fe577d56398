using LMCacheSharp.Protocol;

namespace LMCacheSharp.Remote;

/// <summary>Settings of a <see cref="CacheClient"/>.</summary>
public sealed class CacheClientOptions
{
    /// <summary>Server host name or address. Default 127.0.0.1.</summary>
    public string Host { get; set; } = "127.0.0.1";

    /// <summary>Server port. Default 65432; range 1..65535.</summary>
    public int Port { get; set; } = 65432;

    /// <summary>Token sent with AUTH when a connection opens; null or empty sends none. Default null.</summary>
    public string? AuthToken { get; set; }

    /// <summary>Connections in the pool; requests go to the one with the fewest outstanding. Default 4; range 1..256.</summary>
    public int Connections { get; set; } = 4;

    /// <summary>Time to open (and authenticate) one connection. Default 2 s; range 1 ms..10 min.</summary>
    public TimeSpan ConnectTimeout { get; set; } = TimeSpan.FromSeconds(2);

    /// <summary>Limits on what the client accepts from the server.</summary>
    public ProtocolLimits Limits { get; set; } = ProtocolLimits.Default;

    /// <summary>Socket send and receive buffer sizes in bytes. Default 4 MiB; range 64 KiB..256 MiB (the kernel may cap it).</summary>
    public int SocketBufferBytes { get; set; } = 4 << 20;

    /// <summary>Throws <see cref="ArgumentException"/> listing every problem.</summary>
    public void Validate()
    {
        var errors = new List<string>();
        if (string.IsNullOrWhiteSpace(Host))
        {
            errors.Add("host: required");
        }

        if (Port is < 1 or > 65535)
        {
            errors.Add($"port: must be in 1..65535, got {Port}");
        }

        if (Connections is < 1 or > 256)
        {
            errors.Add($"connections: must be in 1..256, got {Connections}");
        }

        if (ConnectTimeout < TimeSpan.FromMilliseconds(1) || ConnectTimeout > TimeSpan.FromMinutes(10))
        {
            errors.Add($"connect timeout: must be in 1 ms..10 min, got {ConnectTimeout}");
        }

        if (SocketBufferBytes is < 64 << 10 or > 256 << 20)
        {
            errors.Add($"socket buffer: must be in 64KB..256MB, got {SocketBufferBytes}");
        }

        if (Limits is null)
        {
            errors.Add("limits: required");
        }
        else
        {
            errors.AddRange(Limits.GetErrors());
        }

        if (errors.Count > 0)
        {
            throw new ArgumentException("Invalid cache client options: " + string.Join("; ", errors));
        }
    }
}
