using System.Buffers;
using LMCacheSharp.Protocol;

namespace LMCacheSharp.Remote;

/// <summary>
/// A client of the cache server (<c>lm://host:port</c>): a pool of pipelined connections, opened on first use and
/// reopened when one fails. Every call may run concurrently with any other. Server errors throw
/// <see cref="CacheServerException"/>; a failed or closed connection throws <see cref="CacheConnectionException"/>;
/// a request waits at most <see cref="RequestTimeout"/>.
/// </summary>
public sealed class CacheClient : IAsyncDisposable
{
    private readonly CacheClientOptions _options;
    private readonly CacheClientConnection?[] _connections;
    private readonly SemaphoreSlim[] _connectLocks;
    private int _disposed;
    private volatile bool _groupsUnsupported; // the server answered PUT-IN-GROUP with UnknownOpcode: an older server

    /// <summary>Creates a client; nothing connects until the first request.</summary>
    public CacheClient(CacheClientOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        _options = options;
        _connections = new CacheClientConnection?[options.Connections];
        _connectLocks = [.. Enumerable.Range(0, options.Connections).Select(_ => new SemaphoreSlim(1, 1))];
    }

    /// <summary>
    /// How long a request waits for its response before it is abandoned and its connection closed (a request abandoned by
    /// its caller's cancellation closes its connection too). Default infinite; any positive time.
    /// </summary>
    public TimeSpan RequestTimeout { get; set; } = Timeout.InfiniteTimeSpan;

    /// <summary>The options.</summary>
    public CacheClientOptions Options => _options;

    /// <summary>Connections open now.</summary>
    public int OpenConnections => _connections.Count(c => c?.IsAlive == true);

    /// <summary>Round trip with an empty body.</summary>
    public async Task PingAsync(CancellationToken cancellationToken = default)
    {
        using var response = await SendBufferedAsync(Opcode.Ping, static (w, id, _) => FrameWriter.WriteEmpty(w, Opcode.Ping, StatusCode.Ok, id), 0,
            cancellationToken).ConfigureAwait(false);
        response.ThrowUnless(StatusCode.Ok);
    }

    /// <summary>Stores <paramref name="value"/> under <paramref name="key"/>; false when the server refused it (too large, or busy).</summary>
    public Task<bool> PutAsync(ReadOnlyMemory<byte> key, ReadOnlyMemory<byte> value, CancellationToken cancellationToken = default) =>
        PutAsync(key, new ReadOnlySequence<byte>(value), cancellationToken);

    /// <summary>Stores a value given in segments (sent as they are, without copying them together).</summary>
    public Task<bool> PutAsync(ReadOnlyMemory<byte> key, ReadOnlySequence<byte> value, CancellationToken cancellationToken = default) =>
        PutAsync(key, value, default, cancellationToken);

    /// <summary>
    /// Stores a value in the quota group <paramref name="group"/> (1..<see cref="ProtocolLimits.MaxGroupBytes"/> bytes;
    /// empty: none) with PUT-IN-GROUP: the server counts it against the group's quota, evicting the group's own least
    /// recently used values when it is over. A server that does not know PUT-IN-GROUP (an older one) gets a plain PUT,
    /// this time and from then on. False when the server refused the value (too large for its capacity or its group's
    /// quota, no unpinned room, or busy).
    /// </summary>
    public async Task<bool> PutAsync(ReadOnlyMemory<byte> key, ReadOnlySequence<byte> value, ReadOnlyMemory<byte> group, CancellationToken cancellationToken = default)
    {
        CheckKey(key.Span);
        if (value.Length > _options.Limits.MaxValueBytes)
        {
            throw new ArgumentException($"value of {value.Length} bytes is over the {_options.Limits.MaxValueBytes}-byte limit", nameof(value));
        }

        if (group.Length > ProtocolLimits.MaxGroupBytes)
        {
            throw new ArgumentException($"a quota group is at most {ProtocolLimits.MaxGroupBytes} bytes, got {group.Length}", nameof(group));
        }

        var grouped = !group.IsEmpty && !_groupsUnsupported;
        var handler = new BufferedHandler(grouped ? Opcode.PutInGroup : Opcode.Put);
        var connection = await RentConnectionAsync(cancellationToken).ConfigureAwait(false);
        if (grouped)
        {
            await connection.SendAsync(handler, static (w, id, s) => FrameWriter.WritePutInGroupHead(w, id, s.group.Span, s.key.Span, s.length),
                (key, group, length: (int)value.Length), value, cancellationToken).ConfigureAwait(false);
        }
        else
        {
            await connection.SendAsync(handler, static (w, id, s) => FrameWriter.WritePutHead(w, id, s.key.Span, s.length), (key, length: (int)value.Length), value,
                cancellationToken).ConfigureAwait(false);
        }

        using var response = await WaitAsync(handler, connection, cancellationToken).ConfigureAwait(false);
        if (grouped && response.Status == StatusCode.UnknownOpcode)
        {
            // An older server skipped the body and kept the connection: plain PUTs from now on (no quota, but stored).
            _groupsUnsupported = true;
            return await PutAsync(key, value, default, cancellationToken).ConfigureAwait(false);
        }

        if (response.Status == StatusCode.Busy)
        {
            return false; // the server's PUT budget is full: not stored, the connection is fine
        }

        response.ThrowUnless(StatusCode.Ok, StatusCode.TooLarge);
        return response.Status == StatusCode.Ok;
    }

    /// <summary>
    /// Reads the value under <paramref name="key"/> into <paramref name="destination"/>. Returns its length, or -1 when
    /// absent. Throws <see cref="ArgumentException"/> when it is longer than <paramref name="destination"/>. Ownership:
    /// <paramref name="destination"/> is written only by this call, before it returns; after a cancellation or timeout it is
    /// never written (the value is received into a pooled buffer and copied on delivery).
    /// </summary>
    public async Task<int> GetAsync(ReadOnlyMemory<byte> key, Memory<byte> destination, CancellationToken cancellationToken = default)
    {
        // The value is received into a buffer the request owns and copied here, on the caller's side of the wait: once this
        // method has returned or thrown (cancellation, timeout), nothing writes into destination any more.
        using var received = await SendAsync(key, new GetIntoHandler(destination.Length), cancellationToken).ConfigureAwait(false);
        var n = received.Length;
        if (n < -1)
        {
            throw new ArgumentException($"the value is {-2 - n} bytes, more than the {destination.Length}-byte destination", nameof(destination));
        }

        received.CopyTo(destination.Span);
        return n;
    }

    /// <summary>The value under <paramref name="key"/> as a new array, or null when absent.</summary>
    public async Task<byte[]?> GetAsync(ReadOnlyMemory<byte> key, CancellationToken cancellationToken = default)
    {
        using var response = await SendBufferedAsync(Opcode.Get, static (w, id, k) => FrameWriter.WriteKeyRequest(w, Opcode.Get, id, k.Span), key,
            cancellationToken).ConfigureAwait(false);
        response.ThrowUnless(StatusCode.Ok, StatusCode.NotFound);
        return response.Status == StatusCode.Ok ? response.Body.ToArray() : null;
    }

    /// <summary>The values under <paramref name="keys"/> (null where absent), in one round trip (several when the answer is over the frame limit).</summary>
    public async Task<byte[]?[]> MultiGetAsync(IReadOnlyList<ReadOnlyMemory<byte>> keys, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(keys);
        var result = new byte[]?[keys.Count];
        var start = 0;
        while (start < keys.Count)
        {
            var batch = keys.Skip(start).Take(_options.Limits.MaxKeysPerRequest).ToArray();
            foreach (var key in batch)
            {
                CheckKey(key.Span);
            }

            using var response = await SendBufferedAsync(Opcode.MultiGet, static (w, id, k) => FrameWriter.WriteKeyListRequest(w, Opcode.MultiGet, id, k), batch,
                cancellationToken).ConfigureAwait(false);
            response.ThrowUnless(StatusCode.Ok);
            var omitted = new bool[batch.Length];
            var entries = ResponseBody.ParseMultiGet(response.Body, batch.Length, omitted);
            var advanced = 0;
            for (var i = 0; i < batch.Length && !omitted[i]; i++, advanced++)
            {
                result[start + i] = entries[i] is { } range ? response.Body[range].ToArray() : null;
            }

            if (advanced == 0)
            {
                throw new CacheServerException(StatusCode.TooLarge, "a single value is over the response limit");
            }

            start += advanced;
        }

        return result;
    }

    /// <summary>How many leading <paramref name="keys"/> the server holds, in one round trip.</summary>
    public async Task<int> ExistsPrefixAsync(IReadOnlyList<ReadOnlyMemory<byte>> keys, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(keys);
        CheckKeyCount(keys.Count);
        foreach (var key in keys)
        {
            CheckKey(key.Span);
        }

        using var response = await SendBufferedAsync(Opcode.ExistsPrefix, static (w, id, k) => FrameWriter.WriteKeyListRequest(w, Opcode.ExistsPrefix, id, k), keys,
            cancellationToken).ConfigureAwait(false);
        response.ThrowUnless(StatusCode.Ok);
        return ResponseBody.ParseCount(response.Body, keys.Count);
    }

    /// <summary>How many leading keys of <paramref name="packedKeys"/> (fixed-size keys back to back) the server holds, in one round trip.</summary>
    public Task<int> ExistsPrefixAsync(ReadOnlyMemory<byte> packedKeys, int keySize, CancellationToken cancellationToken = default) =>
        CountKeysAsync(Opcode.ExistsPrefix, packedKeys, keySize, cancellationToken);

    // A key-list request answered with a u32 count (EXISTS-PREFIX, PIN, UNPIN).
    private async Task<int> CountKeysAsync(Opcode opcode, ReadOnlyMemory<byte> packedKeys, int keySize, CancellationToken cancellationToken)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(keySize, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(keySize, _options.Limits.MaxKeyBytes);
        var count = packedKeys.Length / keySize;
        CheckKeyCount(count);
        using var response = await SendBufferedAsync(opcode,
            static (w, id, s) => FrameWriter.WriteKeyListRequest(w, s.opcode, id, s.packedKeys.Span, s.keySize), (opcode, packedKeys, keySize),
            cancellationToken).ConfigureAwait(false);
        response.ThrowUnless(StatusCode.Ok);
        return ResponseBody.ParseCount(response.Body, count);
    }

    /// <summary>
    /// Records on the server that <paramref name="child"/> continues <paramref name="parent"/> and covers <paramref name="tokens"/>,
    /// for <see cref="ChildrenAsync"/> (token-exact reuse). The server keeps these records as soft state.
    /// </summary>
    public async Task LinkAsync(ReadOnlyMemory<byte> child, ReadOnlyMemory<byte> parent, ReadOnlyMemory<int> tokens, CancellationToken cancellationToken = default)
    {
        CheckKey(child.Span);
        CheckKey(parent.Span);
        CheckTokens(tokens.Length, minimum: 1);
        using var response = await SendBufferedAsync(Opcode.Link,
            static (w, id, s) => FrameWriter.WriteLinkRequest(w, id, s.child.Span, s.parent.Span, s.tokens.Span), (child, parent, tokens),
            cancellationToken).ConfigureAwait(false);
        response.ThrowUnless(StatusCode.Ok);
    }

    /// <summary>
    /// The stored children of <paramref name="parent"/> that share the most leading tokens with <paramref name="next"/>, best
    /// first, at most <paramref name="max"/>, each with its key and tokens, in one round trip. The tokens are the server's
    /// word: a caller compares them and checks the key they hash to before it uses a child.
    /// </summary>
    public async Task<IReadOnlyList<(byte[] Key, int[] Tokens)>> ChildrenAsync(ReadOnlyMemory<byte> parent, ReadOnlyMemory<int> next, int max = 4,
        CancellationToken cancellationToken = default)
    {
        CheckKey(parent.Span);
        CheckTokens(next.Length, minimum: 0);
        ArgumentOutOfRangeException.ThrowIfLessThan(max, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(max, _options.Limits.MaxChildrenPerLookup);
        using var response = await SendBufferedAsync(Opcode.Children,
            static (w, id, s) => FrameWriter.WriteChildrenRequest(w, id, s.parent.Span, s.max, s.next.Span), (parent, next, max),
            cancellationToken).ConfigureAwait(false);
        response.ThrowUnless(StatusCode.Ok);
        return ResponseBody.ParseChildren(response.Body, max, _options.Limits);
    }

    /// <summary>Whether the server turned out not to know PUT-IN-GROUP (an older server): grouped PUTs go out as plain PUTs.</summary>
    public bool QuotaGroupsUnsupported => _groupsUnsupported;

    /// <summary>
    /// Pins the keys the server holds (packed fixed-size keys, back to back), exempt from its eviction until as many
    /// <see cref="UnpinAsync"/>s; returns how many were pinned (absent keys are not). All or nothing against the server's
    /// pinned-bytes limit: over it, <see cref="CacheServerException"/> with <see cref="StatusCode.TooLarge"/> and nothing
    /// pinned. An older server answers <see cref="StatusCode.UnknownOpcode"/>.
    /// </summary>
    public Task<int> PinAsync(ReadOnlyMemory<byte> packedKeys, int keySize, CancellationToken cancellationToken = default) =>
        CountKeysAsync(Opcode.Pin, packedKeys, keySize, cancellationToken);

    /// <summary>Takes one pin off each pinned key (packed fixed-size keys); returns how many were unpinned.</summary>
    public Task<int> UnpinAsync(ReadOnlyMemory<byte> packedKeys, int keySize, CancellationToken cancellationToken = default) =>
        CountKeysAsync(Opcode.Unpin, packedKeys, keySize, cancellationToken);

    /// <summary>Removes <paramref name="key"/>; false when it was absent.</summary>
    public async Task<bool> DeleteAsync(ReadOnlyMemory<byte> key, CancellationToken cancellationToken = default)
    {
        CheckKey(key.Span);
        using var response = await SendBufferedAsync(Opcode.Delete, static (w, id, k) => FrameWriter.WriteKeyRequest(w, Opcode.Delete, id, k.Span), key,
            cancellationToken).ConfigureAwait(false);
        response.ThrowUnless(StatusCode.Ok, StatusCode.NotFound);
        return response.Status == StatusCode.Ok;
    }

    /// <summary>Removes every value on the server.</summary>
    public async Task ClearAsync(CancellationToken cancellationToken = default)
    {
        using var response = await SendBufferedAsync(Opcode.Clear, static (w, id, _) => FrameWriter.WriteEmpty(w, Opcode.Clear, StatusCode.Ok, id), 0,
            cancellationToken).ConfigureAwait(false);
        response.ThrowUnless(StatusCode.Ok);
    }

    /// <summary>The server's counters (items, used_bytes, hits, misses, requests_get, ...).</summary>
    public async Task<IReadOnlyDictionary<string, long>> StatsAsync(CancellationToken cancellationToken = default)
    {
        using var response = await SendBufferedAsync(Opcode.Stats, static (w, id, _) => FrameWriter.WriteEmpty(w, Opcode.Stats, StatusCode.Ok, id), 0,
            cancellationToken).ConfigureAwait(false);
        response.ThrowUnless(StatusCode.Ok);
        return ResponseBody.ParseStats(response.Body);
    }

    /// <summary>Closes every connection; requests in flight fail.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        for (var i = 0; i < _connections.Length; i++)
        {
            if (Interlocked.Exchange(ref _connections[i], null) is { } connection)
            {
                await connection.DisposeAsync().ConfigureAwait(false);
            }
        }
    }

    /// <summary>Closes every connection (they reopen on the next request); requests in flight fail.</summary>
    public void ResetConnections()
    {
        foreach (var connection in _connections)
        {
            connection?.Abort("connections reset by the client");
        }
    }

    private void CheckTokens(int count, int minimum)
    {
        if (count < minimum || count > _options.Limits.MaxLinkTokens)
        {
            throw new ArgumentException($"{count} tokens: must be {minimum}..{_options.Limits.MaxLinkTokens}", nameof(count));
        }
    }

    /// <summary>Sends a GET whose response <paramref name="handler"/> receives (the remote tier streams into chunk buffers this way).</summary>
    internal async Task<T> SendAsync<T>(ReadOnlyMemory<byte> key, ResponseHandler<T> handler, CancellationToken cancellationToken)
    {
        CheckKey(key.Span);
        var connection = await RentConnectionAsync(cancellationToken).ConfigureAwait(false);
        await connection.SendAsync(handler, static (w, id, k) => FrameWriter.WriteKeyRequest(w, Opcode.Get, id, k.Span), key, default, cancellationToken)
            .ConfigureAwait(false);
        return await WaitAsync(handler, connection, cancellationToken).ConfigureAwait(false);
    }

    private async Task<BufferedResponse> SendBufferedAsync<TState>(Opcode opcode, Action<IBufferWriter<byte>, uint, TState> write, TState state,
        CancellationToken cancellationToken)
    {
        var handler = new BufferedHandler(opcode);
        var connection = await RentConnectionAsync(cancellationToken).ConfigureAwait(false);
        await connection.SendAsync(handler, write, state, default, cancellationToken).ConfigureAwait(false);
        return await WaitAsync(handler, connection, cancellationToken).ConfigureAwait(false);
    }

    private async Task<T> WaitAsync<T>(ResponseHandler<T> handler, CacheClientConnection connection, CancellationToken cancellationToken)
    {
        try
        {
            return await handler.WaitAsync(RequestTimeout, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is TimeoutException or OperationCanceledException)
        {
            // The request was sent and is abandoned (our timeout, the caller's cancellation or a tier's deadline): its
            // response may still come, but later ones queue behind it, so a stalled connection is closed and reopened.
            connection.Abort(e is TimeoutException
                ? $"a request got no answer within {RequestTimeout.TotalMilliseconds} ms"
                : "a request was abandoned by its caller");
            throw;
        }
    }

    private async ValueTask<CacheClientConnection> RentConnectionAsync(CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        var best = -1;
        var bestLoad = int.MaxValue;
        for (var i = 0; i < _connections.Length; i++)
        {
            var c = Volatile.Read(ref _connections[i]);
            var load = c is { IsAlive: true } ? c.Outstanding : -1; // an unopened slot is opened first
            if (load < bestLoad)
            {
                best = i;
                bestLoad = load;
            }
        }

        var current = Volatile.Read(ref _connections[best]);
        if (current is { IsAlive: true })
        {
            return current;
        }

        await _connectLocks[best].WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            current = Volatile.Read(ref _connections[best]);
            if (current is { IsAlive: true })
            {
                return current;
            }

            var fresh = await CacheClientConnection.ConnectAsync(_options, cancellationToken).ConfigureAwait(false);
            if (Volatile.Read(ref _disposed) != 0)
            {
                await fresh.DisposeAsync().ConfigureAwait(false);
                throw new ObjectDisposedException(nameof(CacheClient));
            }

            Volatile.Write(ref _connections[best], fresh);
            if (current is not null)
            {
                await current.DisposeAsync().ConfigureAwait(false);
            }

            return fresh;
        }
        finally
        {
            _connectLocks[best].Release();
        }
    }

    private void CheckKey(ReadOnlySpan<byte> key)
    {
        if (key.IsEmpty || key.Length > _options.Limits.MaxKeyBytes)
        {
            throw new ArgumentException($"a key is 1..{_options.Limits.MaxKeyBytes} bytes, got {key.Length}", nameof(key));
        }
    }

    private void CheckKeyCount(int count)
    {
        if (count > _options.Limits.MaxKeysPerRequest)
        {
            throw new ArgumentException($"{count} keys is over the {_options.Limits.MaxKeysPerRequest}-key limit", nameof(count));
        }
    }
}
