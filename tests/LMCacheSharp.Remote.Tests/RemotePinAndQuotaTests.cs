using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Engine;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Metrics;
using LMCacheSharp.Core.Storage;
using LMCacheSharp.Protocol;
using LMCacheSharp.Server;

namespace LMCacheSharp.Remote.Tests;

/// <summary>
/// The remote tier's pins (<see cref="IPinnableTier"/> over PIN and UNPIN) and quota groups (each salted chunk PUT in its
/// salt's group) against a real cache server, an older server, and Redis (which cannot pin).
/// </summary>
public class RemotePinAndQuotaTests
{
    private static CancellationToken Token => TestContext.Current.CancellationToken;

    private static async Task<CacheServer> StartServerAsync(Action<CacheServerOptions>? configure = null)
    {
        var options = new CacheServerOptions { Port = 0, CapacityBytes = 64L << 20 };
        configure?.Invoke(options);
        var server = CacheServer.Create(options);
        await server.StartAsync(Token);
        return server;
    }

    private static int[] Tokens(int count, int seed)
    {
        var random = new Random(seed);
        return [.. Enumerable.Range(0, count).Select(_ => random.Next(1, 30000))];
    }

    private static LMCacheOptions Options(string url) =>
        new() { RemoteUrl = url, RemoteTimeoutMs = 5000, ChunkSize = 16, MaxLocalCpuSize = 0.05, TokenExactReuse = false };

    [Fact]
    public async Task The_remote_tier_pins_and_unpins_on_the_cache_server_and_pinned_chunks_survive_pressure()
    {
        await using var server = await StartServerAsync(o => o.CapacityBytes = 1L << 20);
        var pool = new KvBufferPool();
        using var metrics = new CacheMetrics();
        await using (var tier = (RemoteStorageTier)RemoteTierFactory.Create(server.Url, Options(server.Url), pool, metrics))
        {
            Assert.True(tier.CanPin);
            var keys = Enumerable.Range(0, 3).Select(TestChunks.Key).ToArray();
            foreach (var key in keys.Take(2))
            {
                using var chunk = TestChunks.Make(pool, key, 16, 1);
                Assert.True(await tier.PutAsync(chunk, Token));
            }

            Assert.Equal(new TierPinOutcome(TierPinStatus.Ok, 2), await tier.PinAsync(keys, Token)); // the third is absent
            for (var i = 100; i < 400; i++)
            {
                using var filler = TestChunks.Make(pool, TestChunks.Key(i), 16, i); // 8 KiB each: 1 MiB turns over twice
                await tier.PutAsync(filler, Token);
            }

            Assert.Equal(2, await tier.CountPrefixAsync(keys, Token));
            Assert.Equal(2, server.Store.GetStats().PinnedItems);
            Assert.Equal(new TierPinOutcome(TierPinStatus.Ok, 2), await tier.UnpinAsync(keys, Token));
            Assert.Equal(0, server.Store.GetStats().PinnedItems);

            var over = Enumerable.Range(1000, 80).Select(TestChunks.Key).ToArray(); // 80 x 8 KiB: over the half of 1 MiB
            foreach (var key in over)
            {
                using var chunk = TestChunks.Make(pool, key, 16, 2);
                await tier.PutAsync(chunk, Token);
            }

            var refused = await tier.PinAsync(over, Token);
            Assert.Equal(TierPinStatus.OverLimit, refused.Status);
            Assert.Contains("limit", refused.Message, StringComparison.Ordinal);
            Assert.Equal(CircuitState.Closed, tier.Breaker.State); // a refusal is an answer, not a failure
        }

        Assert.Equal(0, pool.RentedCount);
    }

    [Fact]
    public async Task Two_salts_sharing_a_server_each_evict_only_their_own_chunks_and_unsalted_ones_are_unaffected()
    {
        await using var server = await StartServerAsync(o =>
        {
            o.CapacityBytes = 8L << 20;
            o.SaltQuotas["tenant-a"] = 4 * 8192; // four chunks of 16 tokens (8 KiB buffers)
            o.SaltQuotas["tenant-b"] = 64 * 8192;
        });
        var options = Options(server.Url);
        var ns = new CacheNamespace("model", TestChunks.Format);
        var (a, b) = (ns.WithSalt("tenant-a"), ns.WithSalt("tenant-b"));
        await using (var engine = CacheEngine.Create(options, ns, lowerTiers: RemoteTierFactory.LowerTiers(options)))
        {
            var plain = Tokens(64, 1);
            await engine.StoreAsync(plain, new FakeSequence(TestChunks.Format, plain), cancellationToken: Token);
            var tenantB = Tokens(64, 2);
            await engine.StoreAsync(tenantB, new FakeSequence(TestChunks.Format, tenantB), ns: b, cancellationToken: Token);
            var tenantA = new List<int[]>();
            for (var i = 0; i < 3; i++)
            {
                tenantA.Add(Tokens(64, 10 + i)); // 12 chunks for a quota of 4
                await engine.StoreAsync(tenantA[i], new FakeSequence(TestChunks.Format, tenantA[i]), ns: a, cancellationToken: Token);
                await engine.FlushAsync(Token);
            }

            var remote = engine.Storage.Tiers.Single(t => t.Kind == StorageTierKind.Remote);
            Assert.Equal(4, await remote.CountPrefixAsync(engine.ComputeKeys(plain), Token));
            Assert.Equal(4, await remote.CountPrefixAsync(engine.ComputeKeys(tenantB, b), Token));
            Assert.Equal(4, await remote.CountPrefixAsync(engine.ComputeKeys(tenantA[2], a), Token)); // the newest of tenant-a
            Assert.Equal(0, await remote.CountPrefixAsync(engine.ComputeKeys(tenantA[0], a), Token)); // evicted by its own quota
            var groups = server.Store.GetGroupStats().ToDictionary(g => g.Group);
            Assert.Equal((4L * 8192, 8L), (groups[a.QuotaGroup!].UsedBytes, groups[a.QuotaGroup!].Evictions));
            Assert.Equal((4L * 8192, 0L), (groups[b.QuotaGroup!].UsedBytes, groups[b.QuotaGroup!].Evictions));
            Assert.Equal(8, server.Store.GetStats().Evictions); // no global eviction
        }
    }

    [Fact]
    public async Task An_older_server_that_does_not_know_put_in_group_gets_plain_puts_and_says_so_for_pins()
    {
        var puts = 0;
        var grouped = 0;
        await using var old = new ScriptedServer(async (_, socket, ct) =>
        {
            while (true)
            {
                var (header, body) = await ScriptedServer.ReadRequestAsync(socket, ct);
                // An older server: every opcode it does not know is UnknownOpcode (its body skipped), the connection stays.
                var status = header.Opcode switch
                {
                    Opcode.Put => StatusCode.Ok,
                    _ => StatusCode.UnknownOpcode,
                };
                Interlocked.Increment(ref header.Opcode == Opcode.Put ? ref puts : ref grouped);
                await ScriptedServer.SendAsync(socket, ScriptedServer.Frame(header.Opcode, status, header.RequestId,
                    status == StatusCode.Ok ? [] : "unknown opcode"u8), ct);
            }
        });
        await using var client = new CacheClient(old.ClientOptions());
        var group = "0123456789abcdef"u8.ToArray();
        Assert.True(await client.PutAsync("k1"u8.ToArray(), new System.Buffers.ReadOnlySequence<byte>(new byte[10]), group, Token));
        Assert.True(client.QuotaGroupsUnsupported);
        Assert.True(await client.PutAsync("k2"u8.ToArray(), new System.Buffers.ReadOnlySequence<byte>(new byte[10]), group, Token));
        Assert.Equal((2, 1), (puts, grouped)); // one PUT-IN-GROUP refused, then plain PUTs only

        var pool = new KvBufferPool();
        await using var connector = new LmRemoteConnector(new CacheClient(old.ClientOptions()), Core.Codecs.RawCodec.Instance, pool);
        var outcome = await connector.PinAsync(new[] { TestChunks.Key(1) }, Token);
        Assert.Equal(TierPinStatus.Unsupported, outcome.Status);
        Assert.Contains("older", outcome.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_redis_remote_cannot_pin_and_says_why_without_a_round_trip()
    {
        var pool = new KvBufferPool();
        using var metrics = new CacheMetrics();
        // Nothing listens on port 1: a pin must not even try.
        await using var tier = (RemoteStorageTier)RemoteTierFactory.Create("redis://127.0.0.1:1", new LMCacheOptions { RemoteTimeoutMs = 300 }, pool, metrics);
        Assert.False(tier.CanPin);
        var outcome = await tier.PinAsync(new[] { TestChunks.Key(1) }, Token);
        Assert.Equal(TierPinStatus.Unsupported, outcome.Status);
        Assert.Contains("Redis has no per-key exemption", outcome.Message, StringComparison.Ordinal);
        Assert.Equal(TierPinStatus.Unsupported, (await tier.UnpinAsync(new[] { TestChunks.Key(1) }, Token)).Status);
        Assert.Equal(0, metrics.Snapshot().TierErrors);
    }
}
