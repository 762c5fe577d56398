using System.Buffers;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
using LMCacheSharp.Protocol;

namespace LMCacheSharp.Remote;

/// <summary>
/// One TCP connection to the cache server. Any number of callers send on it at once (requests are written whole under a
/// send lock, so they pipeline); one receive loop matches responses to requests in order and fills each response's
/// buffers, reading large bodies straight from the socket into them. When anything goes wrong the connection is dead:
/// every outstanding request fails and the pool opens a new one.
/// </summary>
internal sealed class CacheClientConnection : IAsyncDisposable
{
    private const int ReadBufferSize = 64 << 10;
    private const int DirectReceiveThreshold = 16 << 10;

    private readonly Socket _socket;
    private readonly ProtocolLimits _limits;
    private readonly SemaphoreSlim _sendLock = new(1, 1);
    private readonly Queue<(uint Id, ResponseHandler Handler)> _pending = new();
    private readonly byte[] _readBuffer = new byte[ReadBufferSize];
    private readonly ArrayBufferWriter<byte> _sendBuffer = new(4096);
    private readonly CancellationTokenSource _closed = new();
    private Task _receiveLoop = Task.CompletedTask;
    private int _readStart, _readEnd;
    private uint _nextId;
    private Exception? _failure;
    private int _outstanding;

    private CacheClientConnection(Socket socket, ProtocolLimits limits)
    {
        _socket = socket;
        _limits = limits;
    }

    /// <summary>Requests sent and not yet answered.</summary>
    public int Outstanding => Volatile.Read(ref _outstanding);

    /// <summary>False once the connection has failed or was closed.</summary>
    public bool IsAlive => Volatile.Read(ref _failure) is null;

    /// <summary>Connects, starts the receive loop and authenticates when a token is given.</summary>
    public static async Task<CacheClientConnection> ConnectAsync(CacheClientOptions options, CancellationToken cancellationToken)
    {
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp)
        {
            NoDelay = true,
            SendBufferSize = options.SocketBufferBytes,
            ReceiveBufferSize = options.SocketBufferBytes,
        };
        CacheClientConnection? connection = null;
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            timeout.CancelAfter(options.ConnectTimeout);
            await socket.ConnectAsync(options.Host, options.Port, timeout.Token).ConfigureAwait(false);
            connection = new CacheClientConnection(socket, options.Limits);
            connection._receiveLoop = Task.Run(connection.ReceiveLoopAsync, CancellationToken.None);
            if (!string.IsNullOrEmpty(options.AuthToken))
            {
                var token = Encoding.UTF8.GetBytes(options.AuthToken);
                var handler = new BufferedHandler(Opcode.Auth);
                await connection.SendAsync(handler, (w, id, t) => FrameWriter.WriteAuth(w, id, t), token, default, timeout.Token).ConfigureAwait(false);
                using var response = await handler.WaitAsync(options.ConnectTimeout, timeout.Token).ConfigureAwait(false);
                response.ThrowUnless(StatusCode.Ok);
            }

            return connection;
        }
        catch (Exception e)
        {
            if (connection is not null)
            {
                await connection.DisposeAsync().ConfigureAwait(false);
            }
            else
            {
                socket.Dispose();
            }

            if (e is CacheServerException)
            {
                throw;
            }

            throw new CacheConnectionException($"cannot connect to the cache server at {options.Host}:{options.Port}: {e.Message}", e);
        }
    }

    /// <summary>
    /// Sends a request (written by <paramref name="write"/> into a buffer, followed by <paramref name="tail"/> sent as is)
    /// and registers <paramref name="handler"/> for its response.
    /// </summary>
    public async Task SendAsync<TState>(ResponseHandler handler, Action<IBufferWriter<byte>, uint, TState> write, TState state,
        ReadOnlySequence<byte> tail, CancellationToken cancellationToken)
    {
        await _sendLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            ThrowIfDead();
            var id = ++_nextId == 0 ? ++_nextId : _nextId; // id 0 is the server's own (Busy, ProtocolViolation, ShuttingDown)
            _sendBuffer.ResetWrittenCount();
            write(_sendBuffer, id, state);
            lock (_pending)
            {
                _pending.Enqueue((id, handler));
            }

            Interlocked.Increment(ref _outstanding);
            try
            {
                // Once bytes are on the wire the request cannot be taken back: cancellation only applies before.
                await SendAllAsync(_sendBuffer.WrittenMemory).ConfigureAwait(false);
                foreach (var segment in tail)
                {
                    await SendAllAsync(segment).ConfigureAwait(false);
                }
            }
            catch (Exception e)
            {
                Fault(new CacheConnectionException("sending to the cache server failed: " + e.Message, e));
                throw _failure!;
            }
        }
        finally
        {
            _sendLock.Release();
        }
    }

    /// <summary>Closes the connection; outstanding requests fail.</summary>
    public void Abort(string reason) => Fault(new CacheConnectionException(reason));

    public async ValueTask DisposeAsync()
    {
        Fault(new CacheConnectionException("connection closed"));
        await _receiveLoop.ConfigureAwait(false);
        _closed.Dispose();
        _sendLock.Dispose();
    }

    private async ValueTask SendAllAsync(ReadOnlyMemory<byte> data)
    {
        while (!data.IsEmpty)
        {
            var sent = await _socket.SendAsync(data, SocketFlags.None, _closed.Token).ConfigureAwait(false);
            if (sent <= 0)
            {
                throw new CacheConnectionException("the cache server closed the connection");
            }

            data = data[sent..];
        }
    }

    private async Task ReceiveLoopAsync()
    {
        ResponseHandler? current = null;
        try
        {
            while (true)
            {
                if (!await FillAsync(FrameHeader.Size).ConfigureAwait(false))
                {
                    throw new CacheConnectionException("the cache server closed the connection");
                }

                var header = FrameHeader.Parse(_readBuffer.AsSpan(_readStart, FrameHeader.Size), _limits, isRequest: false);
                _readStart += FrameHeader.Size;
                if (header.RequestId == 0)
                {
                    // The server's own frame (Busy, ProtocolViolation, ShuttingDown, InternalError): it closes next.
                    var message = await ReadMessageAsync(header.BodyLength).ConfigureAwait(false);
                    throw new CacheConnectionException($"cache server closed the connection: {header.Status}: {message}");
                }

                lock (_pending)
                {
                    if (!_pending.TryPeek(out var next) || next.Id != header.RequestId || next.Handler.Opcode != header.Opcode)
                    {
                        throw new ProtocolException(ProtocolError.InvalidResponse, $"unexpected response id {header.RequestId} ({header.Opcode})");
                    }

                    // From here the loop owns the handler: a concurrent Fault fails only those still queued, so nobody
                    // releases the buffers this loop is receiving into.
                    current = _pending.Dequeue().Handler;
                }

                Interlocked.Decrement(ref _outstanding);
                current.OnHeader(header);
                var offset = 0;
                while (offset < header.BodyLength)
                {
                    var remaining = header.BodyLength - offset;
                    var target = current.NextBuffer(offset, remaining);
                    var n = target.IsEmpty ? Math.Min(remaining, ReadBufferSize) : Math.Min(target.Length, remaining);
                    if (target.IsEmpty)
                    {
                        await DiscardAsync(n).ConfigureAwait(false);
                    }
                    else
                    {
                        await ReadExactlyAsync(target[..n]).ConfigureAwait(false);
                    }

                    offset += n;
                }

                var done = current;
                current = null;
                done.OnComplete();
            }
        }
        catch (Exception e)
        {
            var error = e as CacheConnectionException ?? new CacheConnectionException("cache server connection failed: " + e.Message, e);
            current?.OnFailed(error);
            Fault(error);
        }
    }

    /// <summary>Ensures at least <paramref name="count"/> bytes are buffered; false on a clean end of stream before any.</summary>
    private async ValueTask<bool> FillAsync(int count)
    {
        if (_readEnd - _readStart >= count)
        {
            return true;
        }

        if (_readStart > 0)
        {
            Buffer.BlockCopy(_readBuffer, _readStart, _readBuffer, 0, _readEnd - _readStart);
            _readEnd -= _readStart;
            _readStart = 0;
        }

        while (_readEnd < count)
        {
            var n = await _socket.ReceiveAsync(_readBuffer.AsMemory(_readEnd), SocketFlags.None, _closed.Token).ConfigureAwait(false);
            if (n == 0)
            {
                if (_readEnd == 0)
                {
                    return false;
                }

                throw new CacheConnectionException("the cache server closed the connection inside a frame");
            }

            _readEnd += n;
        }

        return true;
    }

    /// <summary>Fills <paramref name="target"/>: from the read buffer first, then straight from the socket.</summary>
    private async ValueTask ReadExactlyAsync(Memory<byte> target)
    {
        var buffered = Math.Min(_readEnd - _readStart, target.Length);
        _readBuffer.AsSpan(_readStart, buffered).CopyTo(target.Span);
        _readStart += buffered;
        target = target[buffered..];
        while (!target.IsEmpty)
        {
            if (target.Length >= DirectReceiveThreshold)
            {
                var n = await _socket.ReceiveAsync(target, SocketFlags.None, _closed.Token).ConfigureAwait(false);
                if (n == 0)
                {
                    throw new CacheConnectionException("the cache server closed the connection inside a frame");
                }

                target = target[n..];
            }
            else
            {
                // Small remainders go through the read buffer, which may then also hold the next frame's header.
                _readStart = _readEnd = 0;
                await FillAsync(1).ConfigureAwait(false);
                var n = Math.Min(_readEnd - _readStart, target.Length);
                _readBuffer.AsSpan(_readStart, n).CopyTo(target.Span);
                _readStart += n;
                target = target[n..];
            }
        }
    }

    private async ValueTask DiscardAsync(int count)
    {
        var scratch = ArrayPool<byte>.Shared.Rent(count);
        try
        {
            await ReadExactlyAsync(scratch.AsMemory(0, count)).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(scratch);
        }
    }

    private async ValueTask<string> ReadMessageAsync(int length)
    {
        var bytes = new byte[Math.Min(length, ResponseBody.MaxMessageBytes)];
        await ReadExactlyAsync(bytes).ConfigureAwait(false);
        return ResponseBody.ParseMessage(bytes);
    }

    private void Fault(Exception error)
    {
        if (Interlocked.CompareExchange(ref _failure, error, null) is not null)
        {
            return;
        }

        try
        {
            _closed.Cancel();
        }
        catch (ObjectDisposedException)
        {
        }

        try
        {
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }

        _socket.Dispose();
        List<ResponseHandler> failed;
        lock (_pending)
        {
            failed = [.. _pending.Select(p => p.Handler)];
            _pending.Clear();
        }

        Interlocked.Add(ref _outstanding, -failed.Count);
        foreach (var handler in CollectionsMarshal.AsSpan(failed))
        {
            handler.OnFailed(error);
        }
    }

    private void ThrowIfDead()
    {
        if (Volatile.Read(ref _failure) is { } failure)
        {
            throw new CacheConnectionException("connection is closed: " + failure.Message, failure);
        }
    }
}
