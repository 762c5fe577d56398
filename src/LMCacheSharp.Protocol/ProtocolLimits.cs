namespace LMCacheSharp.Protocol;

/// <summary>
/// Limits on what a peer may send. Every length read off the wire is checked against one of these before anything is
/// allocated. Server and client take the same class; each side enforces the limits on what it receives.
/// </summary>
public sealed class ProtocolLimits
{
    /// <summary>Largest key in bytes. Default 256; range 1..65535 (the key length is a u16 on the wire).</summary>
    public int MaxKeyBytes { get; init; } = 256;

    /// <summary>Largest value of one PUT in bytes. Default 256 MiB; range 1..1 GiB + 4 KiB.</summary>
    public int MaxValueBytes { get; init; } = 256 << 20;

    /// <summary>Most keys in one MGET or EXISTS-PREFIX. Default 4096; range 1..65535 (the count is a u16 on the wire).</summary>
    public int MaxKeysPerRequest { get; init; } = 4096;

    /// <summary>Most tokens in a LINK or CHILDREN request (a chunk's tokens). Default 65,536 (the largest chunk); range 1..1,048,576.</summary>
    public int MaxLinkTokens { get; init; } = 65_536;

    /// <summary>Most children one CHILDREN request may ask for. Default 16; range 1..1024.</summary>
    public int MaxChildrenPerLookup { get; init; } = 16;

    /// <summary>
    /// Largest frame body in bytes, in either direction: a longer frame is a framing violation (the connection is closed).
    /// Default 257 MiB (the default value limit plus 1 MiB); range 16..2 GiB - 64 KiB.
    /// </summary>
    public int MaxFrameBytes { get; init; } = (256 << 20) + (1 << 20);

    /// <summary>Largest value in bytes that <see cref="Validate"/> allows for <see cref="MaxValueBytes"/>.</summary>
    public const int ValueBytesCeiling = (1 << 30) + 4096;

    /// <summary>Largest value in bytes that <see cref="Validate"/> allows for <see cref="MaxFrameBytes"/>.</summary>
    public const int FrameBytesCeiling = int.MaxValue - (64 << 10);

    /// <summary>Longest quota group of a PUT-IN-GROUP in bytes (the group length is a u8 on the wire; 1..64). Fixed.</summary>
    public const int MaxGroupBytes = 64;

    /// <summary>The defaults.</summary>
    public static ProtocolLimits Default { get; } = new();

    /// <summary>
    /// Largest body of a request other than PUT (a key list at the limits: u16 count, then each key with its u16 length).
    /// Derived from <see cref="MaxKeysPerRequest"/> and <see cref="MaxKeyBytes"/>.
    /// </summary>
    public int MaxControlBodyBytes => Math.Max(2 + (MaxKeysPerRequest * (2 + MaxKeyBytes)), (2 * (2 + MaxKeyBytes)) + 6 + (4 * MaxLinkTokens));

    /// <summary>Every problem with the current values, each naming the limit and its range; empty when valid.</summary>
    public IReadOnlyList<string> GetErrors()
    {
        var errors = new List<string>();
        if (MaxKeyBytes is < 1 or > ushort.MaxValue)
        {
            errors.Add($"max key bytes: must be in 1..65535, got {MaxKeyBytes}");
        }

        if (MaxValueBytes is < 1 or > ValueBytesCeiling)
        {
            errors.Add($"max value bytes: must be in 1..{ValueBytesCeiling}, got {MaxValueBytes}");
        }

        if (MaxKeysPerRequest is < 1 or > ushort.MaxValue)
        {
            errors.Add($"max keys per request: must be in 1..65535, got {MaxKeysPerRequest}");
        }

        if (MaxLinkTokens is < 1 or > 1 << 20)
        {
            errors.Add($"max link tokens: must be in 1..1048576, got {MaxLinkTokens}");
        }

        if (MaxChildrenPerLookup is < 1 or > 1024)
        {
            errors.Add($"max children per lookup: must be in 1..1024, got {MaxChildrenPerLookup}");
        }

        if (MaxFrameBytes is < 16 or > FrameBytesCeiling)
        {
            errors.Add($"max frame bytes: must be in 16..{FrameBytesCeiling}, got {MaxFrameBytes}");
        }

        return errors;
    }

    /// <summary>Throws <see cref="ArgumentException"/> listing every problem.</summary>
    public void Validate()
    {
        var errors = GetErrors();
        if (errors.Count > 0)
        {
            throw new ArgumentException("Invalid protocol limits: " + string.Join("; ", errors));
        }
    }
}
