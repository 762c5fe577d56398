using System.Net;
using System.Net.Sockets;
using LMCacheSharp.Protocol;

namespace LMCacheSharp.Remote.Tests;

/// <summary>
/// A fake cache server on loopback whose every connection runs a script (the stalled-server harness): the script gets the
/// connection's index (0 for the first accepted) and its socket. Tests drive it with gates, never with sleeps.
/// </summary>
internal sealed class ScriptedServer : IAsyncDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly CancellationTokenSource _stop = new();
    private readonly List<Socket> _sockets = [];
    private readonly List<Task> _scripts = [];
    private readonly Task _accept;

    public ScriptedServer(Func<int, Socket, CancellationToken, Task> script)
    {
        _listener.Start();
        _accept = Task.Run(async () =>
        {
            for (var index = 0; ; index++)
            {
                Socket socket;
                try
                {
                    socket = await _listener.AcceptSocketAsync(_stop.Token);
                }
                catch (Exception e) when (e is SocketException or ObjectDisposedException or OperationCanceledException)
                {
                    return;
                }

                lock (_sockets)
                {
                    _sockets.Add(socket);
                    var i = index;
                    _scripts.Add(Task.Run(async () =>
                    {
                        try
                        {
                            await script(i, socket, _stop.Token);
                        }
                        catch (Exception e) when (e is SocketException or ObjectDisposedException or OperationCanceledException or EndOfStreamException)
                        {
                            // The client went away or the test ended.
                        }
                    }));
                }
            }
        });
    }

    public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

    public CacheClientOptions ClientOptions(int connections = 1) => new() { Host = "127.0.0.1", Port = Port, Connections = connections };

    /// <summary>Reads one request frame (header and body); throws <see cref="EndOfStreamException"/> when the client closed.</summary>
    public static async Task<(FrameHeader Header, byte[] Body)> ReadRequestAsync(Socket socket, CancellationToken cancellationToken)
    {
        var head = new byte[FrameHeader.Size];
        await ReadExactlyAsync(socket, head, cancellationToken);
        var header = FrameHeader.Parse(head, ProtocolLimits.Default, isRequest: true);
        var body = new byte[header.BodyLength];
        await ReadExactlyAsync(socket, body, cancellationToken);
        return (header, body);
    }

    /// <summary>Completes when the client closes the connection (reads and drops anything else it sends).</summary>
    public static async Task WaitForCloseAsync(Socket socket, CancellationToken cancellationToken)
    {
        var scratch = new byte[4096];
        while (await socket.ReceiveAsync(scratch, SocketFlags.None, cancellationToken) > 0)
        {
        }
    }

    public static async Task SendAsync(Socket socket, ReadOnlyMemory<byte> bytes, CancellationToken cancellationToken)
    {
        while (!bytes.IsEmpty)
        {
            bytes = bytes[await socket.SendAsync(bytes, SocketFlags.None, cancellationToken)..];
        }
    }

    public static byte[] Frame(Opcode opcode, StatusCode status, uint id, ReadOnlySpan<byte> body)
    {
        var writer = new System.Buffers.ArrayBufferWriter<byte>();
        FrameWriter.WriteResponse(writer, opcode, status, id, body);
        return writer.WrittenSpan.ToArray();
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _listener.Stop();
        await _accept;
        Task[] scripts;
        lock (_sockets)
        {
            _sockets.ForEach(s => s.Dispose());
            scripts = [.. _scripts];
        }

        await Task.WhenAll(scripts);
        _stop.Dispose();
    }

    private static async Task ReadExactlyAsync(Socket socket, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        while (!buffer.IsEmpty)
        {
            var n = await socket.ReceiveAsync(buffer, SocketFlags.None, cancellationToken);
            if (n == 0)
            {
                throw new EndOfStreamException();
            }

            buffer = buffer[n..];
        }
    }
}
