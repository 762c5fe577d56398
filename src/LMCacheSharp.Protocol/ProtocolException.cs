namespace LMCacheSharp.Protocol;

/// <summary>Why received bytes were rejected. A closed set: every malformed input maps to exactly one of these.</summary>
public enum ProtocolError
{
    /// <summary>The frame does not start with the protocol magic (framing violation).</summary>
    BadMagic,

    /// <summary>The frame's version is not one this build speaks (framing violation).</summary>
    UnsupportedVersion,

    /// <summary>Reserved header bits are set, or a request carries a status (framing violation).</summary>
    InvalidHeader,

    /// <summary>The frame's body length is over <see cref="ProtocolLimits.MaxFrameBytes"/> (framing violation).</summary>
    FrameTooLarge,

    /// <summary>The body ends before a field it announces (request-level).</summary>
    BodyTruncated,

    /// <summary>The body has bytes after its last field (request-level).</summary>
    TrailingBytes,

    /// <summary>A key is empty (request-level).</summary>
    EmptyKey,

    /// <summary>A key is over <see cref="ProtocolLimits.MaxKeyBytes"/> (request-level).</summary>
    KeyTooLarge,

    /// <summary>A key list is over <see cref="ProtocolLimits.MaxKeysPerRequest"/> (request-level).</summary>
    TooManyKeys,

    /// <summary>A value is over <see cref="ProtocolLimits.MaxValueBytes"/> (request-level).</summary>
    ValueTooLarge,

    /// <summary>A request body other than PUT is over <see cref="ProtocolLimits.MaxControlBodyBytes"/> (request-level).</summary>
    BodyTooLarge,

    /// <summary>A request field holds a value out of its range (a LINK without tokens, a CHILDREN asking for none) (request-level).</summary>
    InvalidField,

    /// <summary>A response field holds a value that cannot occur (a client-side check of the server's replies).</summary>
    InvalidResponse,
}

/// <summary>Malformed bytes on the wire. Never thrown for input that is merely incomplete.</summary>
public sealed class ProtocolException : Exception
{
    /// <summary>Creates the exception.</summary>
    public ProtocolException(ProtocolError reason, string message)
        : base(message)
    {
        Reason = reason;
    }

    /// <summary>Creates the exception.</summary>
    public ProtocolException()
        : this(ProtocolError.InvalidHeader, "protocol error")
    {
    }

    /// <summary>Creates the exception.</summary>
    public ProtocolException(string message)
        : this(ProtocolError.InvalidHeader, message)
    {
    }

    /// <summary>Creates the exception.</summary>
    public ProtocolException(string message, Exception innerException)
        : base(message, innerException)
    {
        Reason = ProtocolError.InvalidHeader;
    }

    /// <summary>The reason.</summary>
    public ProtocolError Reason { get; }

    /// <summary>
    /// True when the stream can no longer be trusted to be in sync (bad header): the server answers with one
    /// <see cref="StatusCode.ProtocolViolation"/> frame and closes. False for a malformed body, which is answered and skipped.
    /// </summary>
    public bool IsFramingViolation => IsFraming(Reason);

    /// <summary>Whether <paramref name="reason"/> is a framing violation (see <see cref="IsFramingViolation"/>).</summary>
    public static bool IsFraming(ProtocolError reason) =>
        reason is ProtocolError.BadMagic or ProtocolError.UnsupportedVersion or ProtocolError.InvalidHeader or ProtocolError.FrameTooLarge;

    /// <summary>The status a server answers this error with.</summary>
    public StatusCode ToStatus() => Reason switch
    {
        ProtocolError.KeyTooLarge or ProtocolError.ValueTooLarge or ProtocolError.TooManyKeys or ProtocolError.BodyTooLarge => StatusCode.TooLarge,
        _ when IsFramingViolation => StatusCode.ProtocolViolation,
        _ => StatusCode.BadRequest,
    };
}
