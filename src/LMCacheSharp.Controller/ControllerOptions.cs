namespace LMCacheSharp.Controller;

/// <summary>Settings of <c>lmcache controller</c>. Every value is checked by <see cref="GetErrors"/>.</summary>
public sealed class ControllerOptions
{
    /// <summary>Address to bind. Default 127.0.0.1; 0.0.0.0 exposes the controller to the network.</summary>
    public string Host { get; set; } = "127.0.0.1";

    /// <summary>HTTP port. Default 9300; range 0..65535 (0 picks a free one).</summary>
    public int Port { get; set; } = 9300;

    /// <summary>
    /// Bearer token every mutating call needs (register, heartbeat, deregister, pin, unpin, prefetch, clear, router report);
    /// null or empty: no auth. Default null. Forwarded as the bearer token on the calls the controller makes to instances.
    /// </summary>
    public string? AuthToken { get; set; }

    /// <summary>How often instances are told to heartbeat. Default 2 s; range 0.1..600 s, below <see cref="HeartbeatTimeout"/>.</summary>
    public TimeSpan HeartbeatInterval { get; set; } = TimeSpan.FromSeconds(2);

    /// <summary>An instance with no heartbeat for this long expires and its chunks leave the directory. Default 10 s; range 0.2..3600 s.</summary>
    public TimeSpan HeartbeatTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>Largest request body. Default 16 MiB (a million token ids as JSON fit); range 1 KiB..256 MiB.</summary>
    public long MaxBodyBytes { get; set; } = 16L << 20;

    /// <summary>Most token ids one lookup, pin or prefetch may carry. Default 1,048,576; range 1..16,777,216.</summary>
    public int MaxLookupTokens { get; set; } = 1 << 20;

    /// <summary>How long a replay request to an instance may wait for its end marker. Default 5 s; range 0.1..600 s.</summary>
    public TimeSpan ReplayTimeout { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>How long a call forwarded to an instance (tokenize, pin, prefetch, clear) may take. Default 30 s; range 0.1..3600 s.</summary>
    public TimeSpan InstanceCallTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Every problem, each naming its setting ("port: ..."); empty when valid.</summary>
    public IReadOnlyList<string> GetErrors()
    {
        var errors = new List<string>();
        if (string.IsNullOrWhiteSpace(Host))
        {
            errors.Add("host: must not be empty");
        }

        if (Port is < 0 or > 65535)
        {
            errors.Add($"port: must be 0..65535, got {Port}");
        }

        Seconds(errors, "heartbeat interval", HeartbeatInterval, 0.1, 600);
        Seconds(errors, "heartbeat timeout", HeartbeatTimeout, 0.2, 3600);
        if (HeartbeatInterval >= HeartbeatTimeout)
        {
            errors.Add($"heartbeat interval: must be below the heartbeat timeout ({HeartbeatTimeout.TotalSeconds} s), got {HeartbeatInterval.TotalSeconds} s");
        }

        if (MaxBodyBytes is < 1024 or > 256L << 20)
        {
            errors.Add($"max body size: must be 1KB..256MB, got {MaxBodyBytes} bytes");
        }

        if (MaxLookupTokens is < 1 or > 1 << 24)
        {
            errors.Add($"max lookup tokens: must be 1..16777216, got {MaxLookupTokens}");
        }

        Seconds(errors, "replay timeout", ReplayTimeout, 0.1, 600);
        Seconds(errors, "instance call timeout", InstanceCallTimeout, 0.1, 3600);
        return errors;
    }

    private static void Seconds(List<string> errors, string name, TimeSpan value, double min, double max)
    {
        if (value.TotalSeconds < min || value.TotalSeconds > max)
        {
            errors.Add($"{name}: must be {min}..{max} s, got {value.TotalSeconds} s");
        }
    }
}
