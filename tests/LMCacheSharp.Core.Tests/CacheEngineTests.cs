using CsCheck;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Engine;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Storage;

namespace LMCacheSharp.Core.Tests;

public class CacheEngineTests
{
    // Whole-chunk semantics unless a test asks for token-exact reuse (CacheEngineTokenExactTests covers that).
    private static LMCacheOptions Options(int chunk = 16, bool partial = false, double gib = 0.01, bool exact = false) =>
        new() { ChunkSize = chunk, SaveUnfullChunk = partial, MaxLocalCpuSize = gib, TokenExactReuse = exact };

    [Fact]
    public async Task Store_then_retrieve_is_bit_identical_and_lookup_matches()
    {
        await using var engine = CacheEngine.Create(Options(), TestData.Namespace());
        var tokens = TestData.Tokens(100, 1);
        var seq = new FakeSequence(TestData.SmallFormat, tokens);

        Assert.Equal(0, await engine.LookupAsync(tokens));
        Assert.Equal(96, await engine.StoreAsync(tokens, seq));
        Assert.Equal(96, await engine.LookupAsync(tokens));

        var target = new FakeSequence(TestData.SmallFormat, tokens);
        Assert.Equal(96, await engine.RetrieveAsync(tokens, target));
        Assert.Equal(6, target.Writes);
        target.AssertRestoredExact();
    }

    [Fact]
    public async Task Stores_and_restores_complete_once_and_a_sink_that_fails_at_completion_restores_nothing()
    {
        await using var engine = CacheEngine.Create(Options(), TestData.Namespace());
        var tokens = TestData.Tokens(100, 3);
        var source = new FakeSequence(TestData.SmallFormat, tokens);
        Assert.Equal(96, await engine.StoreAsync(tokens, source));
        Assert.Equal(1, source.ReadsCompleted); // once per store, after every chunk was read

        var target = new FakeSequence(TestData.SmallFormat, tokens);
        Assert.Equal(96, await engine.RetrieveAsync(tokens, target));
        Assert.Equal(1, target.WritesCompleted);

        var failing = new FakeSequence(TestData.SmallFormat, tokens) { CompleteWriteResult = false };
        Assert.Equal(0, await engine.RetrieveAsync(tokens, failing));
        Assert.Equal(6, failing.Writes);
        using (var prefix = await engine.PinAsync(tokens))
        {
            Assert.Equal(0, engine.Restore(prefix, failing));
        }

        Assert.Equal(2, failing.WritesCompleted);
        var other = TestData.Tokens(100, 99);
        var miss = new FakeSequence(TestData.SmallFormat, other);
        Assert.Equal(0, await engine.RetrieveAsync(other, miss));
        Assert.Equal(0, miss.WritesCompleted); // nothing accepted: nothing to complete
    }

    [Fact]
    public async Task Property_random_prompts_restore_exactly_their_longest_stored_prefix()
    {
        var gen = Gen.Int[0, 40].Array[0, 120].Select(Gen.Int[0, 120]);
        await gen.SampleAsync(async (tokens, storedLength) =>
        {
            await using var engine = CacheEngine.Create(Options(chunk: 8), TestData.Namespace());
            storedLength = Math.Min(storedLength, tokens.Length);
            var stored = tokens[..storedLength];
            await engine.StoreAsync(stored, new FakeSequence(TestData.SmallFormat, stored));

            // A query that extends the stored prompt (shares its prefix) hits exactly the stored full chunks.
            var expected = storedLength / 8 * 8;
            Assert.Equal(expected, await engine.LookupAsync(tokens));
            var target = new FakeSequence(TestData.SmallFormat, tokens);
            Assert.Equal(expected, await engine.RetrieveAsync(tokens, target));
            target.AssertRestoredExact();
        }, iter: 100);
    }

    [Fact]
    public async Task Lookup_of_a_diverging_prompt_stops_at_the_first_different_chunk()
    {
        await using var engine = CacheEngine.Create(Options(), TestData.Namespace());
        var a = TestData.Tokens(64, 2);
        await engine.StoreAsync(a, new FakeSequence(TestData.SmallFormat, a));
        var b = (int[])a.Clone();
        b[40] ^= 1; // chunk 2 differs, so chunks 2 and 3 are different keys
        Assert.Equal(32, await engine.LookupAsync(b));
    }

    [Fact]
    public async Task A_missing_middle_chunk_cuts_the_run_there()
    {
        await using var engine = CacheEngine.Create(Options(), TestData.Namespace());
        var tokens = TestData.Tokens(64, 3);
        await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens));
        var keys = engine.ComputeKeys(tokens);
        await engine.Storage.RemoveAsync(keys[1]);

        Assert.Equal(16, await engine.LookupAsync(tokens));
        var target = new FakeSequence(TestData.SmallFormat, tokens);
        Assert.Equal(16, await engine.RetrieveAsync(tokens, target));
        Assert.Single(target.WrittenRanges);
    }

    [Fact]
    public async Task A_different_salt_or_model_never_hits()
    {
        await using var engine = CacheEngine.Create(Options(), TestData.Namespace());
        var tokens = TestData.Tokens(64, 4);
        await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens), ns: TestData.Namespace(salt: "tenant-a"));

        Assert.Equal(64, await engine.LookupAsync(tokens, TestData.Namespace(salt: "tenant-a")));
        Assert.Equal(0, await engine.LookupAsync(tokens, TestData.Namespace(salt: "tenant-b")));
        Assert.Equal(0, await engine.LookupAsync(tokens));
        Assert.Equal(0, await engine.LookupAsync(tokens, TestData.Namespace(model: "model-b", salt: "tenant-a")));
        Assert.Equal(0, await engine.RetrieveAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens), TestData.Namespace(salt: "tenant-b")));
    }

    [Fact]
    public async Task Partial_last_chunk_is_stored_only_when_configured()
    {
        var tokens = TestData.Tokens(40, 5);
        await using (var off = CacheEngine.Create(Options(partial: false), TestData.Namespace()))
        {
            Assert.Equal(32, await off.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens)));
            Assert.Equal(32, await off.LookupAsync(tokens));
        }

        await using var on = CacheEngine.Create(Options(partial: true), TestData.Namespace());
        Assert.Equal(40, await on.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens)));
        Assert.Equal(40, await on.LookupAsync(tokens));
        var target = new FakeSequence(TestData.SmallFormat, tokens);
        Assert.Equal(40, await on.RetrieveAsync(tokens, target));
        target.AssertRestoredExact();
        // A longer prompt does not reuse the partial chunk (its key covers only 8 tokens) but reuses the full ones.
        var longer = tokens.Concat(TestData.Tokens(10, 6)).ToArray();
        Assert.Equal(32, await on.LookupAsync(longer));
    }

    [Fact]
    public async Task Store_skips_chunks_already_cached_or_inside_skip_tokens()
    {
        await using var engine = CacheEngine.Create(Options(), TestData.Namespace());
        var tokens = TestData.Tokens(64, 7);
        var first = new FakeSequence(TestData.SmallFormat, tokens);
        Assert.Equal(32, await engine.StoreAsync(tokens[..32], first));
        var second = new FakeSequence(TestData.SmallFormat, tokens);
        Assert.Equal(32, await engine.StoreAsync(tokens, second));
        Assert.Equal(2, second.Reads); // chunks 0 and 1 were in memory already
        var third = new FakeSequence(TestData.SmallFormat, tokens);
        await engine.Storage.ClearAsync();
        Assert.Equal(16, await engine.StoreAsync(tokens, third, skipTokens: 48));
        Assert.Equal(1, third.Reads);
    }

    [Fact]
    public async Task Retrieve_stops_where_the_sink_refuses()
    {
        await using var engine = CacheEngine.Create(Options(), TestData.Namespace());
        var tokens = TestData.Tokens(64, 8);
        await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens));
        var target = new FakeSequence(TestData.SmallFormat, tokens) { RefuseWritesFrom = 32 };
        Assert.Equal(32, await engine.RetrieveAsync(tokens, target));
    }

    [Fact]
    public async Task Eviction_keeps_memory_within_capacity_and_lookups_consistent()
    {
        // 16-token chunks of 2x(8+8) bytes/token = 512 B payload, 4 KiB buffers: capacity for 5 chunks.
        var options = Options(gib: 5 * 4096.0 / (1L << 30));
        await using var engine = CacheEngine.Create(options, TestData.Namespace());
        var tokens = TestData.Tokens(16 * 8, 9);
        Assert.Equal(16 * 8, await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens)));
        Assert.Equal(5, engine.Storage.Memory!.Count);
        Assert.True(engine.Storage.Memory.UsedBytes <= options.MaxLocalCpuSizeBytes);
        // The first chunks were evicted first, so the prefix run is empty: LRU keeps the latest chunks.
        Assert.Equal(0, await engine.LookupAsync(tokens));
        Assert.Equal(3, engine.Metrics.Snapshot().Evictions);
    }

    [Fact]
    public async Task Many_threads_storing_and_retrieving_leave_the_pool_empty()
    {
        var engine = CacheEngine.Create(Options(gib: 64 * 4096.0 / (1L << 30)), TestData.Namespace());
        var prompts = Enumerable.Range(0, 8).Select(i => TestData.Tokens(96, 100 + i)).ToArray();
        await Parallel.ForAsync(0, 400, new ParallelOptions { MaxDegreeOfParallelism = 4 }, async (i, ct) =>
        {
            var tokens = prompts[i % prompts.Length];
            if (i % 2 == 0)
            {
                await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens), cancellationToken: ct);
            }
            else
            {
                var target = new FakeSequence(TestData.SmallFormat, tokens);
                await engine.RetrieveAsync(tokens, target, cancellationToken: ct);
                target.AssertRestoredExact();
            }
        });
        var pool = engine.Pool;
        await engine.DisposeAsync();
        Assert.Equal(0, pool.RentedCount);
    }

    [Fact]
    public async Task A_lower_tier_hit_is_promoted_and_a_failing_tier_is_a_miss_not_an_error()
    {
        var pool = new KvBufferPool();
        var metrics = new Metrics.CacheMetrics();
        var remote = new EnvelopeTier(pool);
        var options = Options();
        var tiers = new IStorageTier[] { new MemoryTier(options.MaxLocalCpuSizeBytes, metrics), remote };
        await using (var engine = new CacheEngine(options, TestData.Namespace(), new StorageManager(tiers, metrics), pool, metrics, ownsDependencies: true))
        {
            var tokens = TestData.Tokens(64, 10);
            await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens));
            await engine.FlushAsync();
            Assert.Equal(4, remote.Values.Count);

            await engine.Storage.Memory!.ClearAsync();
            Assert.Equal(64, await engine.LookupAsync(tokens));
            var target = new FakeSequence(TestData.SmallFormat, tokens);
            Assert.Equal(64, await engine.RetrieveAsync(tokens, target));
            target.AssertRestoredExact();
            Assert.Equal(4, engine.Storage.Memory.Count); // promoted

            await engine.Storage.Memory.ClearAsync();
            remote.Throw = true;
            Assert.Equal(0, await engine.LookupAsync(tokens));
            Assert.Equal(0, await engine.RetrieveAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens)));
            Assert.True(metrics.Snapshot().TierErrors >= 2);
        }

        Assert.Equal(0, pool.RentedCount);
    }

    [Fact]
    public async Task A_corrupted_lower_tier_chunk_is_a_miss()
    {
        var pool = new KvBufferPool();
        var remote = new EnvelopeTier(pool);
        await using (var engine = TestData.EngineOver(remote, pool, Options()))
        {
            var tokens = TestData.Tokens(48, 11);
            await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens));
            await engine.FlushAsync();
            await engine.Storage.Memory!.ClearAsync();
            var keys = engine.ComputeKeys(tokens);
            remote.Values[keys[1]][ChunkEnvelope.HeaderSize + 3] ^= 0xFF; // flip payload bits of chunk 1

            var target = new FakeSequence(TestData.SmallFormat, tokens);
            Assert.Equal(16, await engine.RetrieveAsync(tokens, target));
            target.AssertRestoredExact();
        }

        Assert.Equal(0, pool.RentedCount);
    }

    [Fact]
    public async Task A_full_write_queue_drops_and_counts_instead_of_waiting()
    {
        var pool = new KvBufferPool();
        var metrics = new Metrics.CacheMetrics();
        using var gate = new ManualResetEventSlim();
        var slow = new EnvelopeTier(pool) { PutGate = gate }; // the writer holds in its first write
        var options = Options();
        await using (var engine = new CacheEngine(options, TestData.Namespace(),
            new StorageManager([new MemoryTier(options.MaxLocalCpuSizeBytes, metrics), slow], metrics, writeQueueChunks: 1), pool, metrics, ownsDependencies: true))
        {
            var tokens = TestData.Tokens(160, 12);
            Assert.Equal(160, await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens)));
            Assert.InRange(metrics.Snapshot().DroppedStores, 8, 9); // 10 chunks: one in the tier, at most one queued
            gate.Set();
            await engine.FlushAsync();
            Assert.Equal(10, slow.Puts + metrics.Snapshot().DroppedStores);
        }

        Assert.Equal(0, pool.RentedCount);
    }

    [Fact]
    public async Task Retrieve_allocates_nothing_on_memory_hits()
    {
#if DEBUG
        Assert.Skip("Debug builds compile async state machines as classes; run in Release (as CI does) to check allocations.");
#endif
        await using var engine = CacheEngine.Create(Options(chunk: 16), TestData.Namespace());
        var tokens = TestData.Tokens(256, 13);
        var sink = new FakeSequence(TestData.SmallFormat, tokens);
        await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens));
        var nullSink = new NullSink();
        for (var i = 0; i < 100; i++)
        {
            await engine.RetrieveAsync(tokens, nullSink); // warm up JIT tiers and pools
        }

        var before = GC.GetAllocatedBytesForCurrentThread();
        var restored = await engine.RetrieveAsync(tokens, nullSink);
        var after = GC.GetAllocatedBytesForCurrentThread();
        Assert.Equal(256, restored);
        Assert.Equal(0, after - before);
    }

    private sealed class NullSink : IKvSink
    {
        public bool TryWriteKv(int startToken, int tokenCount, ReadOnlySpan<byte> payload) => true;
    }
}

public class CacheEnginePrefetchTests
{
    [Fact]
    public async Task Prefetch_brings_lower_tier_chunks_into_memory_up_to_the_first_miss()
    {
        var pool = new KvBufferPool();
        var remote = new EnvelopeTier(pool);
        await using (var engine = TestData.EngineOver(remote, pool, new LMCacheOptions { ChunkSize = 16, MaxLocalCpuSize = 0.01 }))
        {
            var tokens = TestData.Tokens(64, 20);
            await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens));
            await engine.FlushAsync();
            await engine.Storage.Memory!.ClearAsync();
            remote.Values.TryRemove(engine.ComputeKeys(tokens)[2], out _);

            Assert.Equal(32, await engine.PrefetchAsync(tokens));
            Assert.Equal(2, engine.Storage.Memory.Count);
            remote.Throw = true; // retrieve now needs only memory
            Assert.Equal(32, await engine.RetrieveAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens)));
        }

        Assert.Equal(0, pool.RentedCount);
    }

    [Fact]
    public async Task Pinned_chunks_restore_without_any_tier_even_after_eviction()
    {
        var pool = new KvBufferPool();
        var remote = new EnvelopeTier(pool);
        await using (var engine = TestData.EngineOver(remote, pool, new LMCacheOptions { ChunkSize = 16, MaxLocalCpuSize = 0.01 }))
        {
            var tokens = TestData.Tokens(64, 21);
            await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens));
            await engine.FlushAsync();
            await engine.Storage.Memory!.ClearAsync();
            remote.Values.TryRemove(engine.ComputeKeys(tokens)[3], out _);

            using var prefix = await engine.PinAsync(tokens);
            Assert.Equal(48, prefix.Tokens);
            await engine.Storage.Memory.ClearAsync(); // evicted while the request waited
            remote.Throw = true;                     // and no lower tier answers
            var target = new FakeSequence(TestData.SmallFormat, tokens);
            Assert.Equal(48, engine.Restore(prefix, target));
            Assert.Equal([(0, 16), (16, 16), (32, 16)], target.WrittenRanges);
        }

        Assert.Equal(0, pool.RentedCount);
    }

    [Fact]
    public async Task A_corrupt_pinned_chunk_ends_the_run_and_its_lower_tier_delete_does_not_wait()
    {
        var pool = new KvBufferPool();
        var remote = new EnvelopeTier(pool);
        await using (var engine = TestData.EngineOver(remote, pool, new LMCacheOptions { ChunkSize = 16, MaxLocalCpuSize = 0.01 }))
        {
            var tokens = TestData.Tokens(64, 22);
            await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens));
            await engine.FlushAsync();
            var keys = engine.ComputeKeys(tokens);
            // Memory holds a chunk under key 1 that does not match what the key promises (15 tokens, not 16).
            engine.Storage.Memory!.Remove(keys[1]);
            using (var bad = pool.Rent((int)TestData.SmallFormat.PayloadLength(15)))
            {
                bad.Key = keys[1];
                bad.TokenCount = 15;
                bad.Format = TestData.SmallFormat;
                bad.SealChecksum();
                Assert.True(engine.Storage.Memory.Put(bad));
            }

            using var prefix = await engine.PinAsync(tokens);
            Assert.Equal(64, prefix.Tokens);
            using var gate = new SemaphoreSlim(0);
            remote.RemoveGate = gate;        // the remote delete blocks until released
            var target = new FakeSequence(TestData.SmallFormat, tokens);
            Assert.Equal(16, engine.Restore(prefix, target)); // returns at once: the delete is queued
            Assert.False(engine.Storage.ContainsInMemory(keys[1]));
            Assert.True(remote.Values.ContainsKey(keys[1]));
            gate.Release();
            await engine.FlushAsync();
            Assert.False(remote.Values.ContainsKey(keys[1]));
        }

        Assert.Equal(0, pool.RentedCount);
    }

    [Fact]
    public async Task Restore_also_takes_the_chunks_stored_in_memory_after_the_lookup()
    {
        var pool = new KvBufferPool();
        var metrics = new Metrics.CacheMetrics();
        var options = new LMCacheOptions { ChunkSize = 16, MaxLocalCpuSize = 0.01 };
        await using (var engine = new CacheEngine(options, TestData.Namespace(),
            new StorageManager([new MemoryTier(options.MaxLocalCpuSizeBytes, metrics)], metrics), pool, metrics, ownsDependencies: true))
        {
            var tokens = TestData.Tokens(64, 23);
            using var prefix = await engine.PinAsync(tokens);
            Assert.Equal(0, prefix.Tokens); // looked up before the previous request stored its chunks
            await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens));
            var target = new FakeSequence(TestData.SmallFormat, tokens);
            Assert.Equal(64, engine.Restore(prefix, target));
            Assert.Equal(64, prefix.Tokens);
        }

        Assert.Equal(0, pool.RentedCount);
    }

    [Fact]
    public async Task A_pinned_prefix_counts_the_tokens_it_fetched_from_a_lower_tier()
    {
        var pool = new KvBufferPool();
        var remote = new EnvelopeTier(pool);
        await using (var engine = TestData.EngineOver(remote, pool, new LMCacheOptions { ChunkSize = 16, MaxLocalCpuSize = 0.01 }))
        {
            var tokens = TestData.Tokens(64, 25);
            await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens));
            await engine.FlushAsync();
            using (var inMemory = await engine.PinAsync(tokens))
            {
                Assert.Equal((64, 0), (inMemory.Tokens, inMemory.LowerTierTokens));
            }

            await engine.Storage.Memory!.ClearAsync();
            using (var half = await engine.PinAsync(tokens.AsMemory(0, 32)))
            {
                Assert.Equal((32, 32), (half.Tokens, half.LowerTierTokens)); // both chunks from the remote, now promoted
            }

            using var mixed = await engine.PinAsync(tokens);
            Assert.Equal((64, 32), (mixed.Tokens, mixed.LowerTierTokens)); // two chunks in memory, two from the remote
        }

        Assert.Equal(0, pool.RentedCount);
    }

    [Fact]
    public async Task Pinning_fetches_every_lower_tier_chunk_of_a_prompt_at_once()
    {
        var pool = new KvBufferPool();
        var remote = new EnvelopeTier(pool);
        await using (var engine = TestData.EngineOver(remote, pool, new LMCacheOptions { ChunkSize = 16, MaxLocalCpuSize = 0.01, TokenExactReuse = false }))
        {
            var tokens = TestData.Tokens(96, 24);
            await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens));
            await engine.FlushAsync();
            await engine.Storage.Memory!.ClearAsync();
            remote.Delay = TimeSpan.FromMilliseconds(50); // every remote call takes a while: they overlap or they add up
            using var prefix = await engine.PinAsync(tokens);
            Assert.Equal(96, prefix.Tokens);
            Assert.Equal(6, remote.MaxConcurrentGets); // all six chunk reads in flight together (pipelined), not one by one
        }

        Assert.Equal(0, pool.RentedCount);
    }
}
