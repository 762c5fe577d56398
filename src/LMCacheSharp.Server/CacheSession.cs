using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using System.Security.Cryptography;
using System.Text;
using LMCacheSharp.Core.Engine;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Protocol;
using Microsoft.Extensions.Logging;

namespace LMCacheSharp.Server;

/// <summary>
/// Serves one connection over any <see cref="IDuplexPipe"/> (a Kestrel connection, an in-memory pipe in tests and
/// benchmarks). Requests are answered in order; responses are flushed when no further request is already buffered, so a
/// pipelining client gets its answers in batches. Large values stream through in slices: a frame never has to fit in the
/// pipe. Errors come in three tiers: a bad request body gets an error reply and the connection stays; a framing violation
/// gets one <see cref="StatusCode.ProtocolViolation"/> frame (request id 0) and the connection is closed; anything
/// unexpected is logged and the connection is closed. Clients see short messages only.
/// </summary>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Design", "CA1001:Types that own disposable fields should be disposable",
    Justification = "The frame timer lives and is disposed within RunAsync, the only entry point.")]
public sealed partial class CacheSession
{
    private const int FlushThreshold = 64 << 10;

    private readonly PipeReader _input;
    private readonly PipeWriter _output;
    private readonly ICacheStore _store;
    private readonly CacheServerOptions _options;
    private readonly ProtocolLimits _limits;
    private readonly CacheServerMetrics _metrics;
    private readonly ILogger _logger;
    private readonly byte[]? _token;
    private readonly InFlightBudget _budget;
    private readonly TailIndex _children;
    private readonly TimeProvider _time;
    private bool _authenticated;
    private int _authFailures;
    private bool _closeAfterReply;
    private long _frameBytes; // bytes of the current frame received so far (for the minimum data rate)
    private long _frameWaited; // timestamp ticks spent waiting for the client inside the current frame
    private long _unflushed;
    private bool _needMoreData;
    private bool _partialHeader;
    private long _bodyRead;
    private volatile bool _stopping;
    private CancellationTokenSource? _frameTimer;

    /// <summary>Creates a session with a PUT budget of its own (<see cref="CacheServerOptions.EffectiveMaxInFlightPutBytes"/>) and the system clock.</summary>
    public CacheSession(IDuplexPipe transport, ICacheStore store, CacheServerOptions options, CacheServerMetrics metrics, ILogger logger)
        : this(transport, store, options, metrics, logger, null, null)
    {
    }

    /// <summary>Creates a session.</summary>
    /// <param name="transport">The connection.</param>
    /// <param name="store">Where values are kept.</param>
    /// <param name="options">Limits and timeouts.</param>
    /// <param name="metrics">Counters.</param>
    /// <param name="logger">Where connection problems are logged.</param>
    /// <param name="budget">The PUT budget shared by every connection of the server, or null for one of this session's own.</param>
    /// <param name="timeProvider">The clock of the frame timeout, the minimum data rate and the PUT wait (tests pass a fake one).</param>
    /// <param name="children">The LINK records shared by every connection of the server, or null for an index of this session's own.</param>
    public CacheSession(IDuplexPipe transport, ICacheStore store, CacheServerOptions options, CacheServerMetrics metrics, ILogger logger,
        InFlightBudget? budget, TimeProvider? timeProvider, TailIndex? children = null)
    {
        ArgumentNullException.ThrowIfNull(transport);
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(metrics);
        ArgumentNullException.ThrowIfNull(logger);
        _input = transport.Input;
        _output = transport.Output;
        _store = store;
        _options = options;
        _limits = options.Limits;
        _metrics = metrics;
        _logger = logger;
        _token = string.IsNullOrEmpty(options.AuthToken) ? null : Encoding.UTF8.GetBytes(options.AuthToken);
        _authenticated = _token is null;
        _budget = budget ?? new InFlightBudget(options.EffectiveMaxInFlightPutBytes);
        _children = children ?? CreateChildIndex(options);
        _time = timeProvider ?? TimeProvider.System;
    }

    /// <summary>
    /// Serves requests until the peer closes, a framing violation, or <paramref name="stopping"/> fires (the request in
    /// progress is finished, then a <see cref="StatusCode.ShuttingDown"/> frame is sent). Completes both pipe ends.
    /// </summary>
    public async Task RunAsync(CancellationToken stopping = default)
    {
        await using var registration = stopping.Register(() =>
        {
            _stopping = true;
            _input.CancelPendingRead();
        }).ConfigureAwait(false);
        try
        {
            while (await ReadHeaderAsync().ConfigureAwait(false) is { } header)
            {
                await HandleAsync(header).ConfigureAwait(false);
                if (_closeAfterReply)
                {
                    break;
                }

                if (_unflushed >= FlushThreshold)
                {
                    await FlushAsync().ConfigureAwait(false);
                }
            }

            await FlushAsync().ConfigureAwait(false);
        }
        catch (ProtocolException e) when (e.IsFramingViolation)
        {
            _metrics.ProtocolError();
            Log.FramingViolation(_logger, e.Reason);
            await TrySendFinalAsync(StatusCode.ProtocolViolation, e.Message).ConfigureAwait(false);
        }
        catch (FrameTimeoutException e)
        {
            _metrics.ProtocolError();
            if (e.TooSlow)
            {
                _metrics.SlowClient();
            }

            Log.StalledClient(_logger, e.Message);
            await TrySendFinalAsync(StatusCode.ProtocolViolation, (e.TooSlow ? "too slow: " : "frame timeout: ") + e.Message).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or EndOfStreamException or ObjectDisposedException)
        {
            // The peer went away mid-frame, or the transport was aborted: nothing to answer.
            Log.ConnectionEnded(_logger, e.Message);
        }
        catch (Exception e)
        {
            Log.UnexpectedError(_logger, e);
            await TrySendFinalAsync(StatusCode.InternalError, "internal error").ConfigureAwait(false);
        }
        finally
        {
            _frameTimer?.Dispose();
            await _input.CompleteAsync().ConfigureAwait(false);
            await _output.CompleteAsync().ConfigureAwait(false);
        }
    }

    private async ValueTask<FrameHeader?> ReadHeaderAsync()
    {
        while (true)
        {
            ReadResult result;
            if (_needMoreData || !_input.TryRead(out result))
            {
                await FlushAsync().ConfigureAwait(false);
                result = _partialHeader ? await ReadInsideFrameAsync().ConfigureAwait(false) : await _input.ReadAsync().ConfigureAwait(false);
            }

            var buffer = result.Buffer;
            if (!_stopping && FrameReader.TryReadHeader(ref buffer, _limits, isRequest: true, out var header))
            {
                if (!_partialHeader)
                {
                    // The frame starts now (a header that arrived in pieces started at its first piece).
                    _frameWaited = 0;
                    _frameBytes = 0;
                }

                _frameBytes += FrameHeader.Size;
                _input.AdvanceTo(buffer.Start);
                _needMoreData = false;
                _partialHeader = false;
                _metrics.BytesIn(FrameHeader.Size);
                return header;
            }

            if (_stopping)
            {
                _input.AdvanceTo(buffer.Start, buffer.End);
                await TrySendFinalAsync(StatusCode.ShuttingDown, "server shutting down").ConfigureAwait(false);
                return null;
            }

            if (result.IsCompleted)
            {
                _input.AdvanceTo(buffer.End);
                if (!buffer.IsEmpty)
                {
                    Log.ClosedInsideHeader(_logger, buffer.Length);
                }

                return null;
            }

            _input.AdvanceTo(buffer.Start, buffer.End);
            _needMoreData = true;
            if (!_partialHeader && !buffer.IsEmpty)
            {
                _frameWaited = 0;
                _frameBytes = 0;
            }

            _partialHeader = !buffer.IsEmpty;
        }
    }

    private async ValueTask HandleAsync(FrameHeader header)
    {
        _metrics.Request(header.Opcode);
        _bodyRead = 0;
        if (!Enum.IsDefined(header.Opcode))
        {
            await SkipBodyAsync(header.BodyLength).ConfigureAwait(false);
            RequestError(header, StatusCode.UnknownOpcode, $"unknown opcode {(byte)header.Opcode}");
            return;
        }

        if (!_authenticated && header.Opcode is not (Opcode.Ping or Opcode.Auth))
        {
            await SkipBodyAsync(header.BodyLength).ConfigureAwait(false);
            _metrics.AuthFailure();
            RequestError(header, StatusCode.Unauthorized, "authenticate first (AUTH)");
            return;
        }

        try
        {
            if (header.Opcode is Opcode.Put or Opcode.PutInGroup)
            {
                await HandlePutAsync(header).ConfigureAwait(false);
            }
            else
            {
                await HandleControlAsync(header).ConfigureAwait(false);
            }
        }
        catch (ProtocolException e) when (!e.IsFramingViolation)
        {
            // A request-level problem: skip what is left of the body so the stream stays in sync, answer, carry on.
            await SkipBodyAsync(header.BodyLength - (int)_bodyRead).ConfigureAwait(false);
            RequestError(header, e.ToStatus(), e.Message);
        }
    }

    private async ValueTask HandlePutAsync(FrameHeader header)
    {
        // head: [0, 2) key length, [2, 2 + MaxKeyBytes) key, then a PUT-IN-GROUP's group length and group.
        var groupAt = 2 + _limits.MaxKeyBytes;
        var head = ArrayPool<byte>.Shared.Rent(groupAt + 1 + ProtocolLimits.MaxGroupBytes);
        KvChunk? value = null;
        long reserved = 0;
        try
        {
            var putLength = header.BodyLength;
            var groupLength = 0;
            if (header.Opcode == Opcode.PutInGroup)
            {
                if (header.BodyLength < 1)
                {
                    throw new ProtocolException(ProtocolError.BodyTruncated, "PUT-IN-GROUP body ends before the group length");
                }

                await ReadBodyAsync(1, (head, groupAt), static (s, slice, offset) => slice.CopyTo(s.head.AsSpan(s.groupAt + (int)offset))).ConfigureAwait(false);
                groupLength = RequestBody.ReadGroupLength(head[groupAt], header.BodyLength);
                await ReadBodyAsync(groupLength, (head, groupAt), static (s, slice, offset) => slice.CopyTo(s.head.AsSpan(s.groupAt + 1 + (int)offset)))
                    .ConfigureAwait(false);
                putLength -= 1 + groupLength; // what follows the group is a PUT body
            }

            var two = new ReadOnlySequence<byte>(head, 0, 2);
            if (putLength >= 2)
            {
                await ReadBodyAsync(2, head, static (h, slice, offset) => slice.CopyTo(h.AsSpan((int)offset))).ConfigureAwait(false);
            }

            RequestBody.TryReadPutHead(two, putLength, _limits, out var keyLength, out var valueLength);
            await ReadBodyAsync(keyLength, head, static (h, slice, offset) => slice.CopyTo(h.AsSpan(2 + (int)offset))).ConfigureAwait(false);
            var size = ((long)Math.Max(valueLength, 1) + KvBufferPool.Alignment - 1) / KvBufferPool.Alignment * KvBufferPool.Alignment;
            if (!_budget.TryReserve(size))
            {
                await FlushAsync().ConfigureAwait(false); // answers before this one go out while this PUT waits
                if (!await _budget.ReserveAsync(size, _options.InFlightPutWait, _time).ConfigureAwait(false))
                {
                    // Request-level: the value streams through unbuffered and the connection stays in sync.
                    _metrics.PutBusy();
                    RequestError(header, StatusCode.Busy, "server busy: too many PUT bytes in flight, retry later");
                    await FlushAsync().ConfigureAwait(false);
                    await SkipBodyAsync(valueLength).ConfigureAwait(false);
                    return;
                }
            }

            reserved = size;
            value = _store.Rent(valueLength);
            await ReadBodyAsync(valueLength, value, static (v, slice, offset) => slice.CopyTo(v.Span[(int)offset..])).ConfigureAwait(false);
            switch (_store.Put(head.AsSpan(2, keyLength), value, head.AsSpan(groupAt + 1, groupLength)))
            {
                case CachePutStatus.Stored:
                    WriteEmpty(header, StatusCode.Ok);
                    break;
                case CachePutStatus.LargerThanQuota:
                    RequestError(header, StatusCode.TooLarge, $"value of {valueLength} bytes is larger than its quota group's quota");
                    break;
                case CachePutStatus.PinnedFull:
                    RequestError(header, StatusCode.TooLarge, "no room for the value: what could be evicted is pinned");
                    break;
                default:
                    RequestError(header, StatusCode.TooLarge, $"value of {valueLength} bytes is larger than the server's capacity");
                    break;
            }
        }
        finally
        {
            value?.Release();
            if (reserved > 0)
            {
                _budget.Release(reserved);
            }

            ArrayPool<byte>.Shared.Return(head);
        }
    }

    private async ValueTask HandleControlAsync(FrameHeader header)
    {
        RequestBody.CheckControlBodyLength(header.BodyLength, _limits);
        var body = ArrayPool<byte>.Shared.Rent(Math.Max(header.BodyLength, 1));
        try
        {
            await ReadBodyAsync(header.BodyLength, body, static (b, slice, offset) => slice.CopyTo(b.AsSpan((int)offset))).ConfigureAwait(false);
            switch (header.Opcode)
            {
                case Opcode.Get:
                    {
                        var value = _store.Get(RequestBody.ParseKey(body.AsSpan(0, header.BodyLength), _limits));
                        if (value is null)
                        {
                            _metrics.Misses(1);
                            WriteEmpty(header, StatusCode.NotFound);
                            return;
                        }

                        _metrics.Hits(1);
                        try
                        {
                            FrameWriter.WriteHeader(_output, new FrameHeader(Opcode.Get, StatusCode.Ok, header.RequestId, value.Length));
                            _unflushed += FrameHeader.Size;
                            await WriteValueAsync(value).ConfigureAwait(false);
                        }
                        finally
                        {
                            value.Release();
                        }

                        return;
                    }

                case Opcode.MultiGet:
                    await HandleMultiGetAsync(header, body).ConfigureAwait(false);
                    return;
                default:
                    HandleSmall(header, body.AsSpan(0, header.BodyLength));
                    return;
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(body);
        }
    }

    private void HandleSmall(FrameHeader header, ReadOnlySpan<byte> body)
    {
        switch (header.Opcode)
        {
            case Opcode.Ping:
                RequestBody.ParseEmpty(body);
                WriteEmpty(header, StatusCode.Ok);
                break;
            case Opcode.Auth:
                if (_token is null || CryptographicOperations.FixedTimeEquals(body, _token))
                {
                    _authenticated = true;
                    WriteEmpty(header, StatusCode.Ok);
                }
                else if (++_authFailures >= _options.MaxAuthFailures)
                {
                    // Guessing tokens costs a connection per few attempts.
                    _metrics.AuthFailure();
                    _metrics.AuthClose();
                    RequestError(header, StatusCode.Unauthorized, "wrong token; too many failed attempts, closing");
                    _closeAfterReply = true;
                }
                else
                {
                    _metrics.AuthFailure();
                    RequestError(header, StatusCode.Unauthorized, "wrong token");
                }

                break;
            case Opcode.ExistsPrefix:
                {
                    var keys = new KeyListReader(body, _limits);
                    var found = 0;
                    while (keys.TryReadNext(out var key) && _store.Contains(key))
                    {
                        found++;
                    }

                    _metrics.Hits(found);
                    _metrics.Misses(keys.Count - found);
                    FrameWriter.WriteCountResponse(_output, header.RequestId, found);
                    _unflushed += FrameHeader.Size + 4;
                    _metrics.BytesOut(FrameHeader.Size + 4);
                    break;
                }

            case Opcode.Delete:
                WriteEmpty(header, _store.Remove(RequestBody.ParseKey(body, _limits)) ? StatusCode.Ok : StatusCode.NotFound);
                break;
            case Opcode.Pin:
            case Opcode.Unpin:
                {
                    var reader = new KeyListReader(body, _limits);
                    var keys = new List<byte[]>(reader.Count);
                    while (reader.TryReadNext(out var key))
                    {
                        keys.Add(key.ToArray());
                    }

                    int count;
                    if (header.Opcode == Opcode.Unpin)
                    {
                        count = _store.Unpin(keys);
                    }
                    else if (_store.Pin(keys) is { OverLimit: false } pin)
                    {
                        count = pin.Pinned;
                    }
                    else
                    {
                        RequestError(header, StatusCode.TooLarge,
                            $"pinning these keys would take the pinned bytes over the server's limit ({_store.GetStats().MaxPinnedBytes} bytes): nothing was pinned");
                        break;
                    }

                    FrameWriter.WriteCountResponse(_output, header.Opcode, header.RequestId, count);
                    _unflushed += FrameHeader.Size + 4;
                    _metrics.BytesOut(FrameHeader.Size + 4);
                    break;
                }

            case Opcode.Clear:
                RequestBody.ParseEmpty(body);
                _store.Clear();
                _children.Clear();
                WriteEmpty(header, StatusCode.Ok);
                break;
            case Opcode.Link:
                {
                    var child = RequestBody.ParseLink(body, _limits, out var parent, out var tokenBytes);
                    if (child.Length != ChunkHash.Size || parent.Length != ChunkHash.Size)
                    {
                        RequestError(header, StatusCode.BadRequest, $"LINK keys are {ChunkHash.Size}-byte chunk hashes");
                        break;
                    }

                    _children.Add(new ChunkHash(parent), new ChunkHash(child), ReadTokens(tokenBytes));
                    WriteEmpty(header, StatusCode.Ok);
                    break;
                }

            case Opcode.Children:
                {
                    var parent = RequestBody.ParseChildren(body, _limits, out var max, out var tokenBytes);
                    var found = new List<(byte[] Key, int[] Tokens)>(Math.Min(max, 16));
                    if (parent.Length == ChunkHash.Size)
                    {
                        var parentHash = new ChunkHash(parent);
                        var next = ReadTokens(tokenBytes);
                        // Ask for more than wanted: children whose value was evicted or removed are forgotten on the way.
                        foreach (var match in _children.Find(parentHash, next, max * 2))
                        {
                            var key = new byte[ChunkHash.Size];
                            match.Key.WriteTo(key);
                            if (!_store.Contains(key))
                            {
                                _children.Remove(parentHash, match.Key);
                                continue;
                            }

                            if (found.Count < max)
                            {
                                found.Add((key, match.Tokens.ToArray()));
                            }
                        }
                    }

                    FrameWriter.WriteChildrenResponse(_output, header.RequestId, found);
                    var bytes = FrameHeader.Size + 2 + found.Sum(c => 2 + c.Key.Length + 4 + (4 * c.Tokens.Length));
                    _unflushed += bytes;
                    _metrics.BytesOut(bytes);
                    break;
                }

            case Opcode.Stats:
                RequestBody.ParseEmpty(body);
                FrameWriter.WriteStatsResponse(_output, header.RequestId, _metrics.Snapshot(_store.GetStats()));
                _unflushed += 4096;
                break;
            default:
                throw new InvalidOperationException($"opcode {header.Opcode} is not handled here");
        }
    }

    /// <summary>The index a session uses when the server does not share one (tests, a session on its own).</summary>
    public static TailIndex CreateChildIndex(CacheServerOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return new TailIndex(options.MaxChildren, options.MaxChildTokens);
    }

    private static int[] ReadTokens(ReadOnlySpan<byte> bytes)
    {
        var tokens = new int[bytes.Length / 4];
        for (var i = 0; i < tokens.Length; i++)
        {
            tokens[i] = BinaryPrimitives.ReadInt32LittleEndian(bytes[(4 * i)..]);
        }

        return tokens;
    }

    private async ValueTask HandleMultiGetAsync(FrameHeader header, byte[] body)
    {
        var values = CollectMultiGet(header, body, out var bodyLength, out var omittedFrom);
        try
        {
            FrameWriter.WriteMultiGetHead(_output, header.RequestId, bodyLength, values.Length);
            _unflushed += FrameHeader.Size + 2;
            for (var i = 0; i < values.Length; i++)
            {
                var value = values[i];
                if (value is null)
                {
                    FrameWriter.WriteMultiGetEntryHead(_output, i < omittedFrom ? ResponseBody.MultiGetAbsent : ResponseBody.MultiGetOmitted);
                    _unflushed += 4;
                    continue;
                }

                FrameWriter.WriteMultiGetEntryHead(_output, (uint)value.Length);
                _unflushed += 4;
                await WriteValueAsync(value).ConfigureAwait(false);
            }
        }
        finally
        {
            foreach (var value in values)
            {
                value?.Release();
            }
        }
    }

    /// <summary>
    /// Looks the keys up in order while the response stays within the frame limit; from the first value that would
    /// overflow it on (<paramref name="omittedFrom"/>), entries are "omitted" and the client asks again for them.
    /// </summary>
    private KvChunk?[] CollectMultiGet(FrameHeader header, byte[] body, out int bodyLength, out int omittedFrom)
    {
        var keys = new KeyListReader(body.AsSpan(0, header.BodyLength), _limits);
        var values = new KvChunk?[keys.Count];
        long length = 2 + (4L * keys.Count);
        omittedFrom = keys.Count;
        long hits = 0;
        for (var i = 0; keys.TryReadNext(out var key) && i < omittedFrom; i++)
        {
            var value = _store.Get(key);
            if (value is not null && length + value.Length > _limits.MaxFrameBytes)
            {
                value.Release();
                omittedFrom = i;
                break;
            }

            if (value is not null)
            {
                length += value.Length;
                hits++;
            }

            values[i] = value;
        }

        _metrics.Hits(hits);
        _metrics.Misses(omittedFrom - hits);
        bodyLength = (int)length;
        return values;
    }

    private async ValueTask WriteValueAsync(KvChunk value)
    {
        var slice = _options.WriteSliceBytes;
        for (var offset = 0; offset < value.Length; offset += slice)
        {
            var n = Math.Min(slice, value.Length - offset);
            FrameWriter.WriteRaw(_output, value.Span.Slice(offset, n));
            _unflushed += n;
            _metrics.BytesOut(n);
            if (_unflushed >= slice)
            {
                await FlushAsync().ConfigureAwait(false);
            }
        }
    }

    /// <summary>
    /// A read inside a frame: it fails with <see cref="FrameTimeoutException"/> when no byte arrives within
    /// <see cref="CacheServerOptions.FrameTimeout"/>, or when the frame's average rate over the time spent waiting for the
    /// client falls under <see cref="CacheServerOptions.MinDataRateBytesPerSecond"/> after the grace period (a client
    /// trickling one byte at a time re-arms no timer). The timer is reused from read to read.
    /// </summary>
    private async ValueTask<ReadResult> ReadInsideFrameAsync()
    {
        var timeout = _options.FrameTimeout;
        var delay = timeout;
        var rateBound = false;
        var rate = _options.MinDataRateBytesPerSecond;
        if (rate > 0)
        {
            // Reading more cannot take longer than the point where the bytes so far would be under the minimum rate.
            var allowed = Math.Max(_options.MinDataRateGracePeriod.TotalSeconds, (double)_frameBytes / rate);
            var left = TimeSpan.FromSeconds(allowed - ((double)_frameWaited / _time.TimestampFrequency));
            if (left <= TimeSpan.Zero)
            {
                throw TooSlow();
            }

            if (delay == Timeout.InfiniteTimeSpan || left < delay)
            {
                delay = left;
                rateBound = true;
            }
        }

        if (delay == Timeout.InfiniteTimeSpan)
        {
            return await _input.ReadAsync().ConfigureAwait(false);
        }

        if (_frameTimer is null || !_frameTimer.TryReset())
        {
            _frameTimer?.Dispose();
            _frameTimer = new CancellationTokenSource(Timeout.InfiniteTimeSpan, _time);
        }

        var started = _time.GetTimestamp();
        _frameTimer.CancelAfter(delay);
        try
        {
            return await _input.ReadAsync(_frameTimer.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (_frameTimer.IsCancellationRequested)
        {
            throw rateBound ? TooSlow() : new FrameTimeoutException($"no data for {timeout.TotalSeconds:0.###} s inside a frame", tooSlow: false);
        }
        finally
        {
            _frameWaited += _time.GetTimestamp() - started;
        }
    }

    private FrameTimeoutException TooSlow() => new(
        $"{_frameBytes} bytes in {(double)_frameWaited / _time.TimestampFrequency:0.###} s inside a frame, under the minimum of {_options.MinDataRateBytesPerSecond} bytes/s",
        tooSlow: true);

    /// <summary>A client sent part of a frame and then nothing for too long, or too slowly.</summary>
    private sealed class FrameTimeoutException(string message, bool tooSlow) : Exception(message)
    {
        public bool TooSlow { get; } = tooSlow;
    }

    private delegate void SliceAction<in TState>(TState state, ReadOnlySequence<byte> slice, long offset);

    /// <summary>Hands the next <paramref name="length"/> body bytes to <paramref name="onSlice"/> as they arrive.</summary>
    private async ValueTask ReadBodyAsync<TState>(int length, TState state, SliceAction<TState> onSlice)
    {
        long done = 0;
        while (done < length)
        {
            var result = await ReadInsideFrameAsync().ConfigureAwait(false);
            var buffer = result.Buffer;
            if (buffer.IsEmpty)
            {
                if (result.IsCompleted)
                {
                    throw new EndOfStreamException($"connection closed {length - done} bytes before the end of a frame body");
                }

                _input.AdvanceTo(buffer.Start);
                continue; // a cancelled read (shutdown): finish the frame first
            }

            var slice = buffer.Slice(0, Math.Min(length - done, buffer.Length));
            onSlice(state, slice, done);
            done += slice.Length;
            _bodyRead += slice.Length;
            _frameBytes += slice.Length;
            _metrics.BytesIn(slice.Length);
            _input.AdvanceTo(slice.End);
        }
    }

    private ValueTask SkipBodyAsync(int length) => length <= 0 ? ValueTask.CompletedTask : ReadBodyAsync(length, 0, static (_, _, _) => { });

    private void WriteEmpty(FrameHeader request, StatusCode status)
    {
        FrameWriter.WriteEmpty(_output, request.Opcode, status, request.RequestId);
        _unflushed += FrameHeader.Size;
        _metrics.BytesOut(FrameHeader.Size);
    }

    private void RequestError(FrameHeader request, StatusCode status, string message)
    {
        _metrics.RequestError();
        FrameWriter.WriteError(_output, request.Opcode, status, request.RequestId, message);
        _unflushed += FrameHeader.Size + message.Length;
    }

    private async ValueTask FlushAsync()
    {
        if (_unflushed > 0)
        {
            _unflushed = 0;
            var result = await _output.FlushAsync().ConfigureAwait(false);
            if (result.IsCompleted)
            {
                throw new IOException("the peer stopped reading");
            }
        }
    }

    private async ValueTask TrySendFinalAsync(StatusCode status, string message)
    {
        try
        {
            FrameWriter.WriteError(_output, 0, status, 0, message);
            _unflushed += FrameHeader.Size + message.Length;
            await FlushAsync().ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or InvalidOperationException or ObjectDisposedException or OperationCanceledException)
        {
            // The peer is gone already.
        }
    }


    private static partial class Log
    {
        [LoggerMessage(Level = LogLevel.Debug, Message = "closing a connection after a framing violation: {Reason}")]
        public static partial void FramingViolation(ILogger logger, ProtocolError reason);

        [LoggerMessage(Level = LogLevel.Debug, Message = "connection ended: {Message}")]
        public static partial void ConnectionEnded(ILogger logger, string message);

        [LoggerMessage(Level = LogLevel.Error, Message = "closing a connection after an unexpected error")]
        public static partial void UnexpectedError(ILogger logger, Exception exception);

        [LoggerMessage(Level = LogLevel.Information, Message = "closing a stalled connection: {Message}")]
        public static partial void StalledClient(ILogger logger, string message);

        [LoggerMessage(Level = LogLevel.Debug, Message = "connection closed inside a frame header ({Bytes} bytes)")]
        public static partial void ClosedInsideHeader(ILogger logger, long bytes);
    }
}
