using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Engine;
using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Core.Tests;

/// <summary><see cref="CacheEngine.PinPrefixAsync"/> and <see cref="CacheEngine.UnpinPrefix"/>: a prefix kept in memory, exempt from eviction.</summary>
public sealed class CacheEnginePinTests
{
    // 16-token chunks of the small format take one 4 KiB buffer each: a memory tier of 6 chunks, at most 3 pinned.
    private static LMCacheOptions Options => new() { ChunkSize = 16, MaxLocalCpuSize = 6 * 4096.0 / (1 << 30) };

    [Fact]
    public async Task A_pinned_prefix_is_promoted_from_a_lower_tier_and_survives_pressure_until_unpinned()
    {
        var pool = new KvBufferPool();
        var remote = new EnvelopeTier(pool);
        await using (var engine = TestData.EngineOver(remote, pool, Options))
        {
            var tokens = TestData.Tokens(48, 1);
            await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens));
            await engine.FlushAsync();
            await engine.Storage.Memory!.ClearAsync(); // only the lower tier has it now

            var pin = await engine.PinPrefixAsync(tokens);
            Assert.Equal((48, 3, 48, 3), (pin.PromptTokens, pin.PromptChunks, pin.Tokens, pin.Memory.Changed));
            Assert.Equal(3 * 4096, pin.Memory.Totals.Bytes);
            await Pressure(engine, seed: 100);
            var keys = engine.ComputeKeys(tokens);
            Assert.All(keys, k => Assert.True(engine.Storage.Memory.Contains(k)));
            Assert.Equal(48, (await engine.CountByTierAsync(tokens, tiers: LookupTiers.Memory)).Memory);

            var unpin = engine.UnpinPrefix(tokens);
            Assert.Equal((3, 0), (unpin.Memory.Changed, unpin.Tokens));
            await Pressure(engine, seed: 200);
            Assert.All(keys, k => Assert.False(engine.Storage.Memory.Contains(k)));
        }

        Assert.Equal(0, pool.RentedCount);
    }

    [Fact]
    public async Task A_prefix_pinned_twice_needs_two_unpins_and_a_salt_is_its_own_prefix()
    {
        var pool = new KvBufferPool();
        await using (var engine = TestData.EngineOver(new EnvelopeTier(pool), pool, Options))
        {
            var salted = TestData.Namespace(salt: "tenant-a");
            var tokens = TestData.Tokens(40, 2); // two whole chunks and a partial one (token-exact tail, not pinned)
            await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens), ns: salted);
            Assert.Equal(32, (await engine.PinPrefixAsync(tokens, salted)).Tokens);
            Assert.Equal(32, (await engine.PinPrefixAsync(tokens, salted)).Tokens);
            Assert.Equal(2, engine.Metrics.Pinned.Chunks);

            Assert.Equal(0, engine.UnpinPrefix(tokens).Memory.Changed); // no salt: other keys
            Assert.Equal(32, engine.UnpinPrefix(tokens, salted).Tokens); // one pin left on each
            var last = engine.UnpinPrefix(tokens, salted);
            Assert.Equal((2, 0), (last.Memory.Changed, last.Tokens));
            Assert.Equal(0, engine.Metrics.Pinned.Chunks);
        }

        Assert.Equal(0, pool.RentedCount);
    }

    [Fact]
    public async Task A_prefix_over_the_pin_limit_is_refused_whole_and_a_missing_prefix_pins_nothing()
    {
        var pool = new KvBufferPool();
        await using (var engine = TestData.EngineOver(new EnvelopeTier(pool), pool, Options))
        {
            var tokens = TestData.Tokens(64, 3); // 4 chunks: over the limit of 3
            await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens));
            var refused = await engine.PinPrefixAsync(tokens);
            Assert.True(refused.Memory.OverLimit);
            Assert.Equal((0, 0, 4 * 4096L), (refused.Tokens, refused.Memory.Changed, refused.Memory.RequestedBytes));
            Assert.Equal(0, engine.Metrics.Pinned.Chunks);

            var missing = await engine.PinPrefixAsync(TestData.Tokens(64, 4));
            Assert.Equal((0, 0, false), (missing.Tokens, missing.Memory.Changed, missing.Memory.OverLimit));
        }

        Assert.Equal(0, pool.RentedCount);
    }

    private static async Task Pressure(CacheEngine engine, int seed)
    {
        for (var i = 0; i < 8; i++)
        {
            var other = TestData.Tokens(32, seed + i);
            await engine.StoreAsync(other, new FakeSequence(TestData.SmallFormat, other));
        }
    }
}
