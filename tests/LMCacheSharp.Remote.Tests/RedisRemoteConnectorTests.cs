using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Engine;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Metrics;
using StackExchange.Redis;

namespace LMCacheSharp.Remote.Tests;

/// <summary>
/// Against a real redis-server and a real three-node Redis Cluster started by .ci/services (skipped with a message
/// when they are not running: run <c>.ci/services start</c>).
/// </summary>
public class RedisRemoteConnectorTests
{
    public static TheoryData<string> Targets => new() { "LMCACHE_TEST_REDIS_URL", "LMCACHE_TEST_REDIS_CLUSTER_URL" };

    private static async Task<string> UrlOrSkipAsync(string name)
    {
        var url = TestChunks.ServiceUrl(name);
        Assert.SkipUnless(await TestChunks.ReachableAsync(url), $"{name} is not set or not reachable: run .ci/services start (needs redis-server)");
        return url!;
    }

    private static string WithPrefix(string url) => url + "?prefix=lmtest-" + Guid.NewGuid().ToString("N")[..8] + ":";

    [Theory]
    [MemberData(nameof(Targets))]
    public async Task Round_trip_and_prefix_lookup(string target)
    {
        var url = WithPrefix(await UrlOrSkipAsync(target));
        var pool = new KvBufferPool();
        using var metrics = new CacheMetrics();
        await using (var tier = (RemoteStorageTier)RemoteTierFactory.Create(url, new LMCacheOptions { RemoteTimeoutMs = 5000 }, pool, metrics))
        {
            var chunks = Enumerable.Range(0, 40).Select(i => TestChunks.Make(pool, TestChunks.Key(i), 16, i)).ToArray();
            foreach (var chunk in chunks.Take(30))
            {
                Assert.True(await tier.PutAsync(chunk));
            }

            var keys = chunks.Select(c => c.Key).ToArray();
            Assert.Equal(30, await tier.CountPrefixAsync(keys));
            Assert.Equal(0, await tier.CountPrefixAsync(keys[30..]));
            foreach (var i in new[] { 0, 17, 29 })
            {
                var read = await tier.GetAsync(keys[i]);
                Assert.NotNull(read);
                Assert.True(read.Span.SequenceEqual(chunks[i].Span));
                Assert.Equal(chunks[i].Checksum, read.Checksum);
                read.Release();
            }

            Assert.Null(await tier.GetAsync(keys[35]));
            Assert.True(await tier.RemoveAsync(keys[5]));
            Assert.Equal(5, await tier.CountPrefixAsync(keys));
            await tier.ClearAsync();
            Assert.Equal(0, await tier.CountPrefixAsync(keys));
            Assert.Equal(0, metrics.Snapshot().TierErrors);
            foreach (var chunk in chunks)
            {
                chunk.Release();
            }
        }

        Assert.Equal(0, pool.RentedCount);
        pool.Dispose();
    }

    [Theory]
    [MemberData(nameof(Targets))]
    public async Task Store_in_one_engine_retrieve_in_another(string target)
    {
        var url = WithPrefix(await UrlOrSkipAsync(target));
        var options = new LMCacheOptions { RemoteUrl = url, RemoteTimeoutMs = 5000, ChunkSize = 16, MaxLocalCpuSize = 0.05 };
        var ns = new CacheNamespace("redis-test-model", TestChunks.Format);
        var tokens = Enumerable.Range(0, 64).Select(i => (i * 11) + 3).ToArray();
        await using (var first = CacheEngine.Create(options, ns, lowerTiers: RemoteTierFactory.LowerTiers(options)))
        {
            Assert.Equal(64, await first.StoreAsync(tokens, new FakeSequence(TestChunks.Format, tokens)));
            await first.FlushAsync(TestContext.Current.CancellationToken);
        }

        await using var second = CacheEngine.Create(options, ns, lowerTiers: RemoteTierFactory.LowerTiers(options));
        Assert.Equal(64, await second.LookupAsync(tokens));
        var sink = new FakeSequence(TestChunks.Format, tokens);
        Assert.Equal(64, await second.RetrieveAsync(tokens, sink));
        sink.AssertRestoredExactly(64);
        await second.Storage.ClearAsync(TestContext.Current.CancellationToken);
    }

    [Fact]
    public async Task A_corrupt_value_in_redis_is_a_miss()
    {
        var baseUrl = await UrlOrSkipAsync("LMCACHE_TEST_REDIS_URL");
        var prefix = "lmtest-" + Guid.NewGuid().ToString("N")[..8] + ":";
        var pool = new KvBufferPool();
        using var metrics = new CacheMetrics();
        await using var tier = RemoteTierFactory.Create(baseUrl + "?prefix=" + prefix, new LMCacheOptions(), pool, metrics);
        var key = TestChunks.Key(3);
        var redisKey = new byte[prefix.Length + ChunkHash.Size];
        System.Text.Encoding.ASCII.GetBytes(prefix, redisKey);
        key.WriteTo(redisKey.AsSpan(prefix.Length));
        var uri = new Uri(baseUrl);
        await using (var redis = await ConnectionMultiplexer.ConnectAsync($"{uri.Host}:{uri.Port}"))
        {
            await redis.GetDatabase().StringSetAsync(redisKey, TestChunks.Bytes(300, 3), TimeSpan.FromMinutes(1));
        }

        Assert.Null(await tier.GetAsync(key));
        Assert.Equal(1, metrics.Snapshot().CorruptChunks);
        Assert.Equal(0, pool.RentedCount);
    }

    [Fact]
    public async Task An_unreachable_redis_is_misses_not_errors()
    {
        var pool = new KvBufferPool();
        using var metrics = new CacheMetrics();
        // Port 1 on loopback: nothing listens there.
        await using var tier = (RemoteStorageTier)RemoteTierFactory.Create("redis://127.0.0.1:1", new LMCacheOptions { RemoteTimeoutMs = 300 }, pool, metrics);
        var started = DateTime.UtcNow;
        for (var i = 0; i < 5; i++)
        {
            Assert.Equal(0, await tier.CountPrefixAsync(new[] { TestChunks.Key(i) }));
            Assert.Null(await tier.GetAsync(TestChunks.Key(i)));
        }

        Assert.True(DateTime.UtcNow - started < TimeSpan.FromSeconds(5), $"took {DateTime.UtcNow - started}");
        Assert.Equal(CircuitState.Open, tier.Breaker.State);
    }
}
