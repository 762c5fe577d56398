using System.Net.Sockets;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Metrics;
using LMCacheSharp.Protocol;
using Microsoft.Extensions.Time.Testing;

namespace LMCacheSharp.Remote.Tests;

/// <summary>What happens to a connection and to the caller's memory when a sent request is abandoned.</summary>
public class CacheClientAbandonTests
{
    private static readonly CancellationToken TestToken = TestContext.Current.CancellationToken;

    [Fact]
    public async Task A_get_cancelled_mid_response_closes_its_connection_and_the_next_get_on_the_pool_succeeds()
    {
        var firstRequestSeen = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = new ScriptedServer(async (index, socket, ct) =>
        {
            while (true)
            {
                var (header, _) = await ScriptedServer.ReadRequestAsync(socket, ct);
                if (index == 0)
                {
                    // The first connection stalls: it never answers, like a server stuck on a slow disk.
                    firstRequestSeen.TrySetResult();
                    await ScriptedServer.WaitForCloseAsync(socket, ct);
                    return;
                }

                await ScriptedServer.SendAsync(socket, ScriptedServer.Frame(header.Opcode, StatusCode.Ok, header.RequestId, [7, 7]), ct);
            }
        });
        await using var client = new CacheClient(server.ClientOptions(connections: 1)) { RequestTimeout = TimeSpan.FromSeconds(30) };
        using var cancel = new CancellationTokenSource();
        var stuck = client.GetAsync("k"u8.ToArray(), cancel.Token);
        await firstRequestSeen.Task.WaitAsync(TestToken);
        await cancel.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => stuck);

        // Well within the 30 s request timeout: the next GET does not queue behind the abandoned one.
        var next = await client.GetAsync("k"u8.ToArray(), TestToken).WaitAsync(TimeSpan.FromSeconds(10), TestToken);
        Assert.Equal([7, 7], next);
    }

    [Fact]
    public async Task A_cancelled_get_into_caller_memory_never_writes_there()
    {
        const int Length = 1 << 20;
        var halfSent = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var cancelled = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = new ScriptedServer(async (index, socket, ct) =>
        {
            while (true)
            {
                var (header, _) = await ScriptedServer.ReadRequestAsync(socket, ct);
                if (header.Opcode != Opcode.Get)
                {
                    await ScriptedServer.SendAsync(socket, ScriptedServer.Frame(header.Opcode, StatusCode.Ok, header.RequestId, []), ct);
                    continue;
                }

                var frame = ScriptedServer.Frame(Opcode.Get, StatusCode.Ok, header.RequestId, Enumerable.Repeat((byte)0xAB, Length).ToArray());
                await ScriptedServer.SendAsync(socket, frame.AsMemory(0, FrameHeader.Size + (Length / 2)), ct);
                halfSent.TrySetResult();
                await cancelled.Task.WaitAsync(ct);
                try
                {
                    await ScriptedServer.SendAsync(socket, frame.AsMemory(FrameHeader.Size + (Length / 2)), ct);
                }
                catch (SocketException)
                {
                    return; // the client closed the connection: fine
                }
            }
        });
        await using var client = new CacheClient(server.ClientOptions(connections: 1)) { RequestTimeout = TimeSpan.FromSeconds(30) };
        var destination = new byte[Length];
        using var cancel = new CancellationTokenSource();
        var get = client.GetAsync("k"u8.ToArray(), destination, cancel.Token);
        await halfSent.Task.WaitAsync(TestToken);
        await cancel.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => get);
        cancelled.SetResult();

        // A later request on the pool completes after anything the old connection could still have received.
        await client.PingAsync(TestToken).WaitAsync(TimeSpan.FromSeconds(10), TestToken);
        Assert.DoesNotContain(destination, b => b != 0);
    }

    [Fact]
    public async Task The_breaker_probe_never_goes_down_a_stuck_connection()
    {
        var stuckRequestSeen = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = new ScriptedServer(async (index, socket, ct) =>
        {
            while (true)
            {
                var (header, _) = await ScriptedServer.ReadRequestAsync(socket, ct);
                if (index == 0)
                {
                    stuckRequestSeen.TrySetResult();
                    await ScriptedServer.WaitForCloseAsync(socket, ct);
                    return;
                }

                await ScriptedServer.SendAsync(socket, ScriptedServer.Frame(header.Opcode, StatusCode.NotFound, header.RequestId, []), ct);
            }
        });
        var time = new FakeTimeProvider();
        var breaker = new CircuitBreaker(1, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(60), time);
        var pool = new KvBufferPool();
        using var metrics = new CacheMetrics();
        var client = new CacheClient(server.ClientOptions(connections: 1)) { RequestTimeout = TimeSpan.FromSeconds(20) };
        await using var tier = new RemoteStorageTier(new LmRemoteConnector(client, Core.Codecs.RawCodec.Instance, pool), TimeSpan.FromSeconds(30), metrics, breaker);

        var stuck = tier.GetAsync(TestChunks.Key(1), TestToken).AsTask(); // entered while closed; its connection never answers
        await stuckRequestSeen.Task.WaitAsync(TestToken);
        breaker.OnFailure(); // another caller's failure opens the circuit
        Assert.Equal(CircuitState.Open, breaker.State);
        time.Advance(TimeSpan.FromSeconds(1));

        // The probe: answered on a fresh connection, well within the 20 s request timeout, and it closes the circuit.
        Assert.Null(await tier.GetAsync(TestChunks.Key(2), TestToken).AsTask().WaitAsync(TimeSpan.FromSeconds(10), TestToken));
        Assert.Equal(CircuitState.Closed, breaker.State);
        Assert.Null(await stuck.WaitAsync(TimeSpan.FromSeconds(10), TestToken)); // failed with its connection: a miss
        Assert.Equal(0, pool.RentedCount);
    }

    [Fact]
    public void The_client_gives_up_before_the_tier_does()
    {
        var options = new Core.Configuration.LMCacheOptions { RemoteUrl = "lm://127.0.0.1:1", RemoteTimeoutMs = 1000 };
        using var pool = new KvBufferPool();
        var tier = (RemoteStorageTier)RemoteTierFactory.Create(options.RemoteUrl, options, pool);
        var client = ((LmRemoteConnector)tier.Connector).Client;
        Assert.True(client.RequestTimeout < tier.Timeout, $"client {client.RequestTimeout} vs tier {tier.Timeout}");
        Assert.True(client.Options.ConnectTimeout < tier.Timeout);
    }
}
