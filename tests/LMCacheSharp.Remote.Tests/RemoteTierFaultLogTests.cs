using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Metrics;
using LMCacheSharp.Tests.Shared;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Time.Testing;

namespace LMCacheSharp.Remote.Tests;

/// <summary>A remote tier going down and coming back is logged once per change, with its URL and no secrets.</summary>
public sealed class RemoteTierFaultLogTests
{
    [Fact]
    public async Task Down_and_up_are_each_logged_once_without_credentials()
    {
        var time = new FakeTimeProvider();
        var logger = new ListLogger();
        using var metrics = new CacheMetrics { Faults = new FaultLog(logger, time) };
        var connector = new SwitchConnector();
        var url = RemoteTierFactory.WithoutCredentials("redis://user:secret@cache.example:6379");
        Assert.Equal("redis://cache.example:6379", url);
        await using var tier = new RemoteStorageTier(connector, TimeSpan.FromSeconds(5), metrics,
            new CircuitBreaker(2, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(5), time), url);
        var keys = new ChunkHash[] { new(new byte[32]) };
        Assert.Equal(1, await tier.CountPrefixAsync(keys));
        Assert.DoesNotContain(logger.Lines, l => l.Contains("remote tier", StringComparison.Ordinal)); // up at start: nothing to say

        connector.Fail = true;
        for (var i = 0; i < 5; i++)
        {
            Assert.Equal(0, await tier.CountPrefixAsync(keys));
        }

        var down = Assert.Single(logger.Lines, l => l.Contains("is down", StringComparison.Ordinal));
        Assert.Contains("redis://cache.example:6379", down, StringComparison.Ordinal);
        Assert.DoesNotContain("secret", string.Join("\n", logger.Lines), StringComparison.Ordinal);

        connector.Fail = false;
        time.Advance(TimeSpan.FromSeconds(2));
        Assert.Equal(1, await tier.CountPrefixAsync(keys)); // the probe
        Assert.Equal(1, await tier.CountPrefixAsync(keys));
        Assert.Single(logger.Lines, l => l.Contains("is up", StringComparison.Ordinal));
    }

    private sealed class SwitchConnector : IRemoteConnector
    {
        public volatile bool Fail;

        public string Name => "switch";

        public Task<int> CountPrefixAsync(ReadOnlyMemory<ChunkHash> keys, CancellationToken cancellationToken) =>
            Fail ? Task.FromException<int>(new IOException("connection refused")) : Task.FromResult(keys.Length);

        public Task<RemoteRead> GetAsync(ChunkHash key, CancellationToken cancellationToken) => Task.FromResult(RemoteRead.Miss);

        public Task<bool> PutAsync(KvChunk chunk, CancellationToken cancellationToken) => Task.FromResult(true);

        public Task<bool> RemoveAsync(ChunkHash key, CancellationToken cancellationToken) => Task.FromResult(false);

        public Task ClearAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}
