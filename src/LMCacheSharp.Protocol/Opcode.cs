namespace LMCacheSharp.Protocol;

/// <summary>Request operations. The numbers are on the wire: never renumber. A response echoes its request's opcode.</summary>
public enum Opcode : byte
{
    /// <summary>Liveness check; empty body both ways. Allowed before <see cref="Auth"/>.</summary>
    Ping = 1,

    /// <summary>Authenticates the connection: body = the token (raw bytes). Allowed before authentication.</summary>
    Auth = 2,

    /// <summary>Stores a value: body = key, then the value (the rest of the body).</summary>
    Put = 3,

    /// <summary>Reads a value: body = key; response body = the value.</summary>
    Get = 4,

    /// <summary>Reads several values: body = key list; response body = one entry per key.</summary>
    MultiGet = 5,

    /// <summary>How many leading keys of a list are present: body = key list; response body = u32 count.</summary>
    ExistsPrefix = 6,

    /// <summary>Removes a key: body = key; <see cref="StatusCode.NotFound"/> when it was absent.</summary>
    Delete = 7,

    /// <summary>Removes every key; empty body.</summary>
    Clear = 8,

    /// <summary>Server counters; response body = a list of (name, u64) pairs.</summary>
    Stats = 9,

    /// <summary>
    /// Records that a stored key continues a parent key, with the child's token ids: body = child key, parent key, u32 token
    /// count, then the tokens (i32 each). Token-exact reuse finds the children of a parent with <see cref="Children"/>.
    /// </summary>
    Link = 10,

    /// <summary>
    /// The stored children of a parent that share the most leading tokens with the request's next tokens: body = parent key,
    /// u16 most children wanted, u32 token count, then the tokens; response body = u16 count, then per child its key, u32
    /// token count and tokens, best first.
    /// </summary>
    Children = 11,

    /// <summary>
    /// Exempts keys from the server's eviction until as many <see cref="Unpin"/>s: body = key list; response body = u32
    /// number of keys pinned (absent keys are not pinned). All or nothing against the server's pinned-bytes limit:
    /// <see cref="StatusCode.TooLarge"/> when the pin would go over it (nothing pinned).
    /// </summary>
    Pin = 12,

    /// <summary>Takes one pin off each pinned key: body = key list; response body = u32 number of keys unpinned.</summary>
    Unpin = 13,

    /// <summary>
    /// Stores a value in a quota group: body = u8 group length (1..<see cref="ProtocolLimits.MaxGroupBytes"/>), the group
    /// bytes, then a <see cref="Put"/> body (key, value). The server counts the value against the group's byte quota and
    /// evicts the group's own least recently used values when it is over (isolated LRU). Answered as <see cref="Put"/>.
    /// </summary>
    PutInGroup = 14,
}

/// <summary>Response statuses. The numbers are on the wire: never renumber.</summary>
public enum StatusCode : byte
{
    /// <summary>Done; the body is the operation's result.</summary>
    Ok = 0,

    /// <summary>The key is absent (GET, DELETE). Not an error: a cache miss.</summary>
    NotFound = 1,

    /// <summary>The request body is malformed (request-level: the connection stays open). Body: a short UTF-8 message.</summary>
    BadRequest = 2,

    /// <summary>A key or value is over the server's limits (request-level). Body: a short UTF-8 message.</summary>
    TooLarge = 3,

    /// <summary>The connection has not authenticated, or the token is wrong (request-level).</summary>
    Unauthorized = 4,

    /// <summary>The opcode is unknown to the server (request-level: the body was skipped).</summary>
    UnknownOpcode = 5,

    /// <summary>
    /// The server is out of a resource. With request id 0: it refuses the connection (too many connections) and closes it
    /// after this frame. On a PUT: the in-flight PUT budget is full; the value was dropped, the connection stays, retry later.
    /// </summary>
    Busy = 6,

    /// <summary>A framing violation (bad magic, version or length); the server closes the connection after this frame.</summary>
    ProtocolViolation = 7,

    /// <summary>The server failed unexpectedly for this request.</summary>
    InternalError = 8,

    /// <summary>The server is shutting down; it closes the connection after this frame.</summary>
    ShuttingDown = 9,
}
