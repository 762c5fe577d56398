using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Remote.Tests;

/// <summary><see cref="RemoteStorageTier"/> over a scripted connector (gates, no server).</summary>
public class RemoteStorageTierTests
{
    [Fact]
    public async Task A_slow_call_that_succeeds_after_the_circuit_opened_does_not_close_it()
    {
        var connector = new ScriptedConnector();
        await using var tier = new RemoteStorageTier(connector, TimeSpan.FromMinutes(1), breaker: new CircuitBreaker(2, TimeSpan.FromMinutes(10), TimeSpan.FromMinutes(10)));
        var slowGate = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        connector.Next.Enqueue(slowGate.Task);
        var slow = tier.CountPrefixAsync(new[] { TestChunks.Key(1) }, TestContext.Current.CancellationToken).AsTask();

        connector.Next.Enqueue(Task.FromException<int>(new IOException("down")));
        connector.Next.Enqueue(Task.FromException<int>(new IOException("down")));
        Assert.Equal(0, await tier.CountPrefixAsync(new[] { TestChunks.Key(2) }, TestContext.Current.CancellationToken));
        Assert.Equal(0, await tier.CountPrefixAsync(new[] { TestChunks.Key(3) }, TestContext.Current.CancellationToken));
        Assert.Equal(CircuitState.Open, tier.Breaker.State);

        slowGate.SetResult(1); // the call that entered while the circuit was closed answers now
        Assert.Equal(1, await slow);
        Assert.Equal(CircuitState.Open, tier.Breaker.State);
    }

    /// <summary>Answers CountPrefixAsync with the queued tasks, in order.</summary>
    private sealed class ScriptedConnector : IRemoteConnector
    {
        public System.Collections.Concurrent.ConcurrentQueue<Task<int>> Next { get; } = new();

        public string Name => "scripted";

        public Task<int> CountPrefixAsync(ReadOnlyMemory<ChunkHash> keys, CancellationToken cancellationToken) =>
            Next.TryDequeue(out var next) ? next : Task.FromResult(0);

        public Task<RemoteRead> GetAsync(ChunkHash key, CancellationToken cancellationToken) => Task.FromResult(RemoteRead.Miss);

        public Task<bool> PutAsync(KvChunk chunk, CancellationToken cancellationToken) => Task.FromResult(false);

        public Task<bool> RemoveAsync(ChunkHash key, CancellationToken cancellationToken) => Task.FromResult(false);

        public Task ClearAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}
