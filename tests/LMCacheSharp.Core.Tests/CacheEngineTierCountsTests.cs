using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Engine;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Metrics;
using LMCacheSharp.Core.Storage;

namespace LMCacheSharp.Core.Tests;

/// <summary><see cref="CacheEngine.CountByTierAsync"/>: where a prompt's leading tokens are cached, without pinning anything.</summary>
public sealed class CacheEngineTierCountsTests
{
    private const int Chunk = 16;

    [Fact]
    public async Task Memory_counts_the_run_and_a_token_exact_tail_without_pinning_or_counting_a_lookup()
    {
        await using var engine = CacheEngine.Create(new LMCacheOptions { ChunkSize = Chunk, MaxLocalCpuSize = 0.01, TokenExactReuse = true },
            TestData.Namespace());
        var stored = TestData.Tokens(40, 1); // two whole chunks and an 8-token tail
        await engine.StoreAsync(stored, new FakeSequence(TestData.SmallFormat, stored));
        var request = stored[..37].Concat(TestData.Tokens(9, 2).Select(t => t + 500)).ToArray();
        var lookups = engine.Metrics.Snapshot().LookupRequests;
        var rented = engine.Pool.RentedCount;

        var counts = await engine.CountByTierAsync(request, tiers: LookupTiers.Memory);

        Assert.Equal(new TierTokenCounts(37, null, null), counts);
        Assert.Equal(lookups, engine.Metrics.Snapshot().LookupRequests);
        Assert.Equal(rented, engine.Pool.RentedCount); // nothing pinned
        Assert.Equal(0, (await engine.CountByTierAsync(request, TestData.Namespace(salt: "other"))).Total); // another tenant sees nothing
    }

    [Fact]
    public async Task Each_tier_reports_what_it_adds_to_the_faster_ones()
    {
        var pool = new KvBufferPool();
        var metrics = new CacheMetrics();
        var options = new LMCacheOptions { ChunkSize = Chunk, MaxLocalCpuSize = 0.01, TokenExactReuse = false };
        var memory = new MemoryTier(options.MaxLocalCpuSizeBytes, metrics);
        var disk = new EnvelopeTier(pool, StorageTierKind.Disk);
        var remote = new EnvelopeTier(pool, StorageTierKind.Remote);
        await using (var engine = new CacheEngine(options, TestData.Namespace(), new StorageManager([memory, disk, remote], metrics), pool, metrics,
            ownsDependencies: true))
        {
            var tokens = TestData.Tokens(4 * Chunk + 5, 3);
            await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens));
            await engine.FlushAsync();
            var keys = engine.ComputeKeys(tokens);
            Assert.Equal(4, keys.Length);
            // memory holds chunk 0, disk chunks 0-1, the remote all four
            memory.Remove(keys[1]);
            memory.Remove(keys[2]);
            memory.Remove(keys[3]);
            disk.Values.TryRemove(keys[2], out _);
            disk.Values.TryRemove(keys[3], out _);

            Assert.Equal(new TierTokenCounts(Chunk, Chunk, 2 * Chunk), await engine.CountByTierAsync(tokens));
            Assert.Equal(new TierTokenCounts(Chunk, Chunk, null), await engine.CountByTierAsync(tokens, tiers: LookupTiers.Memory | LookupTiers.Disk));
            Assert.Equal(4 * Chunk, (await engine.CountByTierAsync(tokens)).Total);
            Assert.Equal(1, memory.Count); // nothing was promoted

            // Memory only never waits on a lower tier.
            remote.Delay = TimeSpan.FromSeconds(30);
            var quick = engine.CountByTierAsync(tokens, tiers: LookupTiers.Memory);
            Assert.True(quick.IsCompletedSuccessfully);
            Assert.Equal(new TierTokenCounts(Chunk, null, null), await quick);
            remote.Delay = TimeSpan.Zero;
        }

        Assert.Equal(0, pool.RentedCount);
    }

    [Fact]
    public void None_reports_zero_for_the_tiers_asked_and_null_for_the_others()
    {
        Assert.Equal(new TierTokenCounts(0, null, null), TierTokenCounts.None(LookupTiers.Memory));
        Assert.Equal(new TierTokenCounts(0, 0, null), TierTokenCounts.None(LookupTiers.Memory | LookupTiers.Disk));
        Assert.Equal(new TierTokenCounts(0, 0, 0), TierTokenCounts.None(LookupTiers.All));
    }
}
