using System.Buffers;
using LMCacheSharp.Protocol;

namespace LMCacheSharp.Remote;

/// <summary>
/// Receives one response on a connection's receive loop and hands a result to the waiting caller. The loop calls
/// <see cref="OnHeader"/>, then <see cref="NextBuffer"/> until the body is complete (filling each buffer whole, straight
/// from the socket when it is large), then <see cref="OnComplete"/>; or <see cref="OnFailed"/> at any point. A caller that
/// stops waiting (timeout, cancellation) abandons the request: a result delivered later is released through
/// <c>ReleaseResult</c>, never leaked.
/// </summary>
internal abstract class ResponseHandler
{
    /// <summary>The request's opcode.</summary>
    public abstract Opcode Opcode { get; }

    /// <summary>The response header arrived.</summary>
    public abstract void OnHeader(in FrameHeader header);

    /// <summary>Where the next body bytes go (1..<paramref name="remaining"/> bytes), or empty to discard them.</summary>
    public abstract Memory<byte> NextBuffer(int offset, int remaining);

    /// <summary>The whole body arrived.</summary>
    public abstract void OnComplete();

    /// <summary>The connection failed before the response was complete.</summary>
    public abstract void OnFailed(Exception error);
}

/// <summary>A <see cref="ResponseHandler"/> with a typed result and the deliver/abandon handshake.</summary>
internal abstract class ResponseHandler<T> : ResponseHandler
{
    private const int Pending = 0, Delivered = 1, Abandoned = 2;
    private readonly TaskCompletionSource<T> _result = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _state;

    /// <summary>Waits for the result; on timeout or cancellation abandons the request and throws.</summary>
    public async Task<T> WaitAsync(TimeSpan timeout, CancellationToken cancellationToken)
    {
        try
        {
            return await _result.Task.WaitAsync(timeout, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is TimeoutException or OperationCanceledException)
        {
            if (Interlocked.CompareExchange(ref _state, Abandoned, Pending) == Delivered)
            {
                return await _result.Task.ConfigureAwait(false);
            }

            throw;
        }
    }

    /// <summary>Hands <paramref name="result"/> to the caller, or releases it when the caller is gone.</summary>
    protected void Deliver(T result)
    {
        if (Interlocked.CompareExchange(ref _state, Delivered, Pending) == Pending)
        {
            _result.SetResult(result);
        }
        else
        {
            ReleaseResult(result);
        }
    }

    /// <summary>Fails the caller's wait.</summary>
    protected void Fail(Exception error)
    {
        if (Interlocked.CompareExchange(ref _state, Delivered, Pending) == Pending)
        {
            _result.SetException(error);
        }
    }

    /// <summary>Releases a result nobody will take (pooled buffers).</summary>
    protected virtual void ReleaseResult(T result)
    {
    }
}

/// <summary>A response read whole into a pooled array: the status and body. The receiver returns the array with <see cref="Dispose"/>.</summary>
internal readonly struct BufferedResponse : IDisposable
{
    private readonly byte[]? _buffer;

    public BufferedResponse(StatusCode status, byte[]? buffer, int length)
    {
        Status = status;
        _buffer = buffer;
        Length = length;
    }

    public StatusCode Status { get; }

    public int Length { get; }

    public ReadOnlySpan<byte> Body => _buffer.AsSpan(0, Length);

    /// <summary>Throws <see cref="CacheServerException"/> unless the status is one of <paramref name="accepted"/>.</summary>
    public void ThrowUnless(StatusCode accepted, StatusCode alsoAccepted = StatusCode.Ok)
    {
        if (Status != accepted && Status != alsoAccepted)
        {
            throw new CacheServerException(Status, ResponseBody.ParseMessage(Body));
        }
    }

    public void Dispose()
    {
        if (_buffer is not null)
        {
            ArrayPool<byte>.Shared.Return(_buffer);
        }
    }
}

/// <summary>Reads the whole body into a pooled array.</summary>
internal sealed class BufferedHandler(Opcode opcode) : ResponseHandler<BufferedResponse>
{
    private FrameHeader _header;
    private byte[]? _buffer;

    public override Opcode Opcode => opcode;

    public override void OnHeader(in FrameHeader header)
    {
        _header = header;
        _buffer = header.BodyLength > 0 ? ArrayPool<byte>.Shared.Rent(header.BodyLength) : null;
    }

    public override Memory<byte> NextBuffer(int offset, int remaining) => _buffer.AsMemory(offset, remaining);

    public override void OnComplete()
    {
        var buffer = _buffer;
        _buffer = null;
        Deliver(new BufferedResponse(_header.Status, buffer, _header.BodyLength));
    }

    public override void OnFailed(Exception error)
    {
        if (_buffer is not null)
        {
            ArrayPool<byte>.Shared.Return(_buffer);
            _buffer = null;
        }

        Fail(error);
    }

    protected override void ReleaseResult(BufferedResponse result) => result.Dispose();
}

/// <summary>
/// GET for <see cref="CacheClient.GetAsync(ReadOnlyMemory{byte}, Memory{byte}, CancellationToken)"/>: the value is received
/// into a pooled array this handler owns, never into the caller's memory, so nothing writes there after the caller stopped
/// waiting; the caller copies on delivery (<see cref="ReceivedValue.CopyTo"/>). A value over <c>maxLength</c> is discarded.
/// </summary>
internal sealed class GetIntoHandler(int maxLength) : ResponseHandler<ReceivedValue>
{
    private FrameHeader _header;
    private byte[]? _buffer;
    private byte[]? _error;

    public override Opcode Opcode => Opcode.Get;

    public override void OnHeader(in FrameHeader header)
    {
        _header = header;
        if (header.Status is not (StatusCode.Ok or StatusCode.NotFound))
        {
            _error = new byte[Math.Min(header.BodyLength, ResponseBody.MaxMessageBytes)];
        }
        else if (header.Status == StatusCode.Ok && header.BodyLength <= maxLength && header.BodyLength > 0)
        {
            _buffer = ArrayPool<byte>.Shared.Rent(header.BodyLength);
        }
    }

    public override Memory<byte> NextBuffer(int offset, int remaining)
    {
        if (_error is not null)
        {
            return offset < _error.Length ? _error.AsMemory(offset, Math.Min(remaining, _error.Length - offset)) : Memory<byte>.Empty;
        }

        return _buffer is null ? Memory<byte>.Empty : _buffer.AsMemory(offset, remaining);
    }

    public override void OnComplete()
    {
        if (_error is not null)
        {
            Fail(new CacheServerException(_header.Status, ResponseBody.ParseMessage(_error)));
        }
        else if (_header.Status == StatusCode.NotFound)
        {
            Deliver(new ReceivedValue(-1, null));
        }
        else
        {
            var buffer = _buffer;
            _buffer = null;
            Deliver(new ReceivedValue(_header.BodyLength <= maxLength ? _header.BodyLength : -2 - _header.BodyLength, buffer));
        }
    }

    public override void OnFailed(Exception error)
    {
        if (_buffer is not null)
        {
            ArrayPool<byte>.Shared.Return(_buffer);
            _buffer = null;
        }

        Fail(error);
    }

    protected override void ReleaseResult(ReceivedValue result) => result.Dispose();
}

/// <summary>
/// A GET result of <see cref="GetIntoHandler"/>: the value's length (-1 absent, -2 - length too long) and the pooled array
/// holding it. The receiver copies it out and disposes it.
/// </summary>
internal readonly struct ReceivedValue(int length, byte[]? buffer) : IDisposable
{
    public int Length => length;

    public void CopyTo(Span<byte> destination)
    {
        if (length > 0)
        {
            buffer.AsSpan(0, length).CopyTo(destination);
        }
    }

    public void Dispose()
    {
        if (buffer is not null)
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }
}
