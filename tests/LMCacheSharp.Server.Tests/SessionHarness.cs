using System.Buffers;
using System.IO.Pipelines;
using LMCacheSharp.Protocol;
using Microsoft.Extensions.Logging.Abstractions;

namespace LMCacheSharp.Server.Tests;

/// <summary>A <see cref="CacheSession"/> over in-memory pipes, with raw frame helpers for the client side.</summary>
internal sealed class SessionHarness : IAsyncDisposable
{
    private readonly Pipe _toServer = new();
    private readonly Pipe _toClient = new();
    private readonly CancellationTokenSource _stop = new();
    private uint _nextId;

    public SessionHarness(CacheServerOptions? options = null, MemoryCacheStore? store = null, TimeProvider? time = null, InFlightBudget? budget = null)
    {
        Options = options ?? new CacheServerOptions { Limits = new ProtocolLimits { MaxKeyBytes = 64, MaxValueBytes = 4 << 20, MaxKeysPerRequest = 256, MaxFrameBytes = 5 << 20 } };
        Store = store ?? new MemoryCacheStore(64 << 20);
        Session = new CacheSession(new Duplex(_toServer.Reader, _toClient.Writer), Store, Options, Metrics, NullLogger.Instance, budget, time);
        Running = Task.Run(() => Session.RunAsync(_stop.Token));
    }

    public CacheServerOptions Options { get; }

    public MemoryCacheStore Store { get; }

    public CacheServerMetrics Metrics { get; } = new();

    public CacheSession Session { get; }

    public Task Running { get; }

    public PipeWriter Input => _toServer.Writer;

    public uint NextId() => ++_nextId;

    public async Task SendAsync(Action<IBufferWriter<byte>> write)
    {
        write(_toServer.Writer);
        await _toServer.Writer.FlushAsync();
    }

    public async Task SendRawAsync(byte[] bytes)
    {
        await _toServer.Writer.WriteAsync(bytes);
    }

    /// <summary>The next response frame, or null when the server closed the connection.</summary>
    public async Task<(FrameHeader Header, byte[] Body)?> ReceiveAsync()
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        while (true)
        {
            var result = await _toClient.Reader.ReadAsync(timeout.Token);
            var buffer = result.Buffer;
            if (FrameReader.TryReadFrame(ref buffer, Options.Limits, isRequest: false, out var header, out var body))
            {
                var bytes = body.ToArray();
                _toClient.Reader.AdvanceTo(buffer.Start);
                return (header, bytes);
            }

            _toClient.Reader.AdvanceTo(buffer.Start, buffer.End);
            if (result.IsCompleted)
            {
                return null;
            }
        }
    }

    public async Task<(FrameHeader Header, byte[] Body)> ExpectAsync(uint id, StatusCode status)
    {
        var frame = await ReceiveAsync();
        Assert.NotNull(frame);
        Assert.Equal(id, frame.Value.Header.RequestId);
        Assert.Equal(status, frame.Value.Header.Status);
        return frame.Value;
    }

    public void Stop() => _stop.Cancel();

    public async ValueTask DisposeAsync()
    {
        await _toServer.Writer.CompleteAsync();
        await Running.WaitAsync(TimeSpan.FromSeconds(10));
        await _toClient.Reader.CompleteAsync();
        _stop.Dispose();
        Store.Dispose();
        Assert.Equal(0, Store.Pool.RentedCount);
    }

    private sealed class Duplex(PipeReader input, PipeWriter output) : IDuplexPipe
    {
        public PipeReader Input => input;

        public PipeWriter Output => output;
    }
}
