using System.Net;
using System.Net.Sockets;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Engine;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Metrics;
using LMCacheSharp.Core.Storage;
using LMCacheSharp.Server;
using Microsoft.Extensions.Time.Testing;

namespace LMCacheSharp.Remote.Tests;

/// <summary><see cref="RemoteStorageTier"/> over <see cref="LmRemoteConnector"/> against a real in-process cache server.</summary>
public class LmRemoteTierTests
{
    private static async Task<CacheServer> StartServerAsync(int port = 0, ICacheStore? store = null)
    {
        var server = CacheServer.Create(new CacheServerOptions { Port = port, CapacityBytes = 256L << 20 }, store);
        await server.StartAsync(TestContext.Current.CancellationToken);
        return server;
    }

    // Whole chunks: the remote tier does not hold partial ones (token-exact tails live in memory).
    private static LMCacheOptions Options(string url, int timeoutMs = 2000) =>
        new() { RemoteUrl = url, RemoteTimeoutMs = timeoutMs, ChunkSize = 16, MaxLocalCpuSize = 0.05, TokenExactReuse = false };

    [Fact]
    public async Task Chunks_round_trip_bit_identical_and_the_prefix_lookup_is_one_call()
    {
        await using var server = await StartServerAsync();
        var pool = new KvBufferPool();
        using var metrics = new CacheMetrics();
        await using (var tier = RemoteTierFactory.Create(server.Url, Options(server.Url), pool, metrics))
        {
            var chunks = Enumerable.Range(0, 5).Select(i => TestChunks.Make(pool, TestChunks.Key(i), 16 + i, i)).ToArray();
            foreach (var chunk in chunks.Take(3))
            {
                Assert.True(await tier.PutAsync(chunk));
            }

            var keys = chunks.Select(c => c.Key).ToArray();
            var before = server.Metrics.Snapshot(server.Store.GetStats()).Single(p => p.Key == "requests_exists_prefix").Value;
            Assert.Equal(3, await tier.CountPrefixAsync(keys));
            Assert.Equal(before + 1, server.Metrics.Snapshot(server.Store.GetStats()).Single(p => p.Key == "requests_exists_prefix").Value);

            for (var i = 0; i < 3; i++)
            {
                var read = await tier.GetAsync(keys[i]);
                Assert.NotNull(read);
                Assert.Equal(chunks[i].Key, read.Key);
                Assert.Equal(chunks[i].TokenCount, read.TokenCount);
                Assert.Equal(chunks[i].Format, read.Format);
                Assert.Equal(chunks[i].Checksum, read.Checksum);
                Assert.True(read.Span.SequenceEqual(chunks[i].Span));
                read.Release();
            }

            Assert.Null(await tier.GetAsync(keys[4]));
            Assert.True(await tier.RemoveAsync(keys[0]));
            Assert.Equal(0, await tier.CountPrefixAsync(keys));
            foreach (var chunk in chunks)
            {
                chunk.Release();
            }
        }

        Assert.Equal(0, pool.RentedCount);
        pool.Dispose();
    }

    [Fact]
    public async Task A_corrupt_or_foreign_value_is_a_miss_counted_as_corrupt()
    {
        await using var server = await StartServerAsync();
        var pool = new KvBufferPool();
        using var metrics = new CacheMetrics();
        await using var tier = RemoteTierFactory.Create(server.Url, Options(server.Url), pool, metrics);
        await using var raw = new CacheClient(new CacheClientOptions { Port = server.EndPoint.Port });

        // Garbage, a valid envelope under the wrong key, and a valid envelope with one payload byte flipped.
        var key = TestChunks.Key(1);
        await raw.PutAsync(KeyBytes(key), TestChunks.Bytes(500, 1));
        Assert.Null(await tier.GetAsync(key));

        var other = TestChunks.Make(pool, TestChunks.Key(2), 16, 2);
        Assert.True(await tier.PutAsync(other));
        var envelope = (await raw.GetAsync(KeyBytes(other.Key)))!;
        await raw.PutAsync(KeyBytes(key), envelope);
        Assert.Null(await tier.GetAsync(key));

        envelope[^1] ^= 1;
        await raw.PutAsync(KeyBytes(other.Key), envelope);
        Assert.Null(await tier.GetAsync(other.Key));
        other.Release();

        Assert.Equal(3, metrics.Snapshot().CorruptChunks);
        Assert.Equal(0, metrics.Snapshot().TierErrors);
        Assert.Equal(0, pool.RentedCount);
    }

    [Fact]
    public async Task A_killed_server_is_misses_then_hits_again_once_it_is_back()
    {
        using var store = new MemoryCacheStore(64L << 20); // outlives the server, like a restart with a disk tier
        var server = await StartServerAsync(store: store);
        var port = server.EndPoint.Port;
        var pool = new KvBufferPool();
        using var metrics = new CacheMetrics();
        var time = new FakeTimeProvider();
        var (tier, connector) = TierOnAFakeClock(server.Url, 500, pool, metrics, time);
        var chunk = TestChunks.Make(pool, TestChunks.Key(7), 16, 7);
        Assert.True(await tier.PutAsync(chunk));
        Assert.Equal(1, await tier.CountPrefixAsync(new[] { chunk.Key }));

        await server.DisposeAsync(); // killed mid-run
        var before = connector.Calls;
        for (var i = 0; i < 10; i++)
        {
            Assert.Equal(0, await tier.CountPrefixAsync(new[] { chunk.Key }));
            Assert.Null(await tier.GetAsync(chunk.Key));
        }

        Assert.False(await tier.PutAsync(chunk));
        // A dead server does not stall callers: three failed calls open the circuit, the other 18 never reach the network.
        Assert.Equal(3, connector.Calls - before);
        Assert.Equal(CircuitState.Open, tier.Breaker.State);
        Assert.True(metrics.Snapshot().TierErrors >= 3);

        await using var restarted = await StartServerAsync(port, store);
        Assert.Null(await tier.GetAsync(chunk.Key)); // still open: no probe before the open period has passed
        time.Advance(tier.Breaker.MinOpenTime);
        var hit = await tier.GetAsync(chunk.Key); // the probe resets the pool and reaches the restarted server
        Assert.NotNull(hit);
        Assert.True(hit.Span.SequenceEqual(chunk.Span));
        Assert.Equal(CircuitState.Closed, tier.Breaker.State);
        hit.Release();
        chunk.Release();
        await tier.DisposeAsync();
        Assert.Equal(0, pool.RentedCount);
    }

    [Fact]
    public async Task A_server_that_accepts_but_never_answers_is_a_miss_within_the_timeout()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var accepted = new List<Socket>();
        _ = Task.Run(async () =>
        {
            while (true)
            {
                try
                {
                    accepted.Add(await listener.AcceptSocketAsync());
                }
                catch (Exception e) when (e is SocketException or ObjectDisposedException)
                {
                    return;
                }
            }
        }, TestContext.Current.CancellationToken);
        var url = $"lm://127.0.0.1:{((IPEndPoint)listener.LocalEndpoint).Port}";
        var pool = new KvBufferPool();
        using var metrics = new CacheMetrics();
        var (tier, connector) = TierOnAFakeClock(url, 200, pool, metrics, new FakeTimeProvider());
        await using (tier)
        {
            Assert.Equal(0, await tier.CountPrefixAsync(new[] { TestChunks.Key(1) }));
            Assert.Null(await tier.GetAsync(TestChunks.Key(1)));
            Assert.Null(await tier.GetAsync(TestChunks.Key(2)));
            Assert.Equal(3, connector.Calls); // each ended by the 200 ms timeout, not by an answer
            Assert.Equal(CircuitState.Open, tier.Breaker.State);
            Assert.Null(await tier.GetAsync(TestChunks.Key(3))); // the breaker is open now: immediate, no call
            Assert.Equal(3, connector.Calls);
            Assert.Equal(3, metrics.Snapshot().TierErrors);
        }

        listener.Stop();
        accepted.ForEach(s => s.Dispose());
    }

    /// <summary>The lm:// tier the factory builds, with its connector counted and its breaker on <paramref name="time"/>.</summary>
    private static (RemoteStorageTier Tier, CountingConnector Connector) TierOnAFakeClock(string url, int timeoutMs, KvBufferPool pool,
        CacheMetrics metrics, TimeProvider time)
    {
        var built = (RemoteStorageTier)RemoteTierFactory.Create(url, Options(url, timeoutMs), pool, metrics);
        var connector = new CountingConnector(built.Connector);
        var tier = new RemoteStorageTier(connector, built.Timeout, metrics,
            new CircuitBreaker(minOpenTime: built.Breaker.MinOpenTime, maxOpenTime: built.Breaker.MaxOpenTime, probeTimeout: built.Breaker.ProbeTimeout, timeProvider: time));
        return (tier, connector);
    }

    private sealed class CountingConnector(IRemoteConnector inner) : IRemoteConnector
    {
        private int _calls;

        public int Calls => Volatile.Read(ref _calls);

        public string Name => inner.Name;

        public Task<int> CountPrefixAsync(ReadOnlyMemory<ChunkHash> keys, CancellationToken cancellationToken) => Count(inner.CountPrefixAsync(keys, cancellationToken));

        public Task<RemoteRead> GetAsync(ChunkHash key, CancellationToken cancellationToken) => Count(inner.GetAsync(key, cancellationToken));

        public Task<bool> PutAsync(KvChunk chunk, CancellationToken cancellationToken) => Count(inner.PutAsync(chunk, cancellationToken));

        public Task<bool> RemoveAsync(ChunkHash key, CancellationToken cancellationToken) => Count(inner.RemoveAsync(key, cancellationToken));

        public Task ClearAsync(CancellationToken cancellationToken) => Count(inner.ClearAsync(cancellationToken));

        public void ResetConnections() => inner.ResetConnections();

        public ValueTask DisposeAsync() => inner.DisposeAsync();

        private T Count<T>(T task)
        {
            Interlocked.Increment(ref _calls);
            return task;
        }
    }

    [Fact]
    public async Task Store_in_one_engine_retrieve_in_another_with_an_empty_memory_tier()
    {
        await using var server = await StartServerAsync();
        var options = Options(server.Url);
        var ns = new CacheNamespace("model-fingerprint", TestChunks.Format);
        var tokens = Enumerable.Range(0, 100).Select(i => (i * 37) % 1000).ToArray();

        await using (var first = CacheEngine.Create(options, ns, lowerTiers: RemoteTierFactory.LowerTiers(options)))
        {
            Assert.Equal(96, await first.StoreAsync(tokens, new FakeSequence(TestChunks.Format, tokens)));
            await first.FlushAsync(TestContext.Current.CancellationToken);
        }

        Assert.Equal(6, server.Store.GetStats().Items);
        await using var second = CacheEngine.Create(options, ns, lowerTiers: RemoteTierFactory.LowerTiers(options));
        Assert.Equal(0, second.Storage.Memory!.Count);
        Assert.Equal(96, await second.LookupAsync(tokens));
        var sink = new FakeSequence(TestChunks.Format, tokens);
        Assert.Equal(96, await second.RetrieveAsync(tokens, sink));
        sink.AssertRestoredExactly(96);
        Assert.Equal(6, second.Storage.Memory.Count); // promoted into memory

        // Another tenant (salt) never sees it.
        var salted = new CacheNamespace("model-fingerprint", TestChunks.Format, salt: "tenant-b");
        Assert.Equal(0, await second.LookupAsync(tokens, salted));
    }

    private static byte[] KeyBytes(ChunkHash key)
    {
        var bytes = new byte[ChunkHash.Size];
        key.WriteTo(bytes);
        return bytes;
    }
}
