using System.Collections.Concurrent;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Engine;
using LMCacheSharp.Core.Events;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Metrics;
using LMCacheSharp.Core.Storage;

namespace LMCacheSharp.Core.Tests;

/// <summary>The KV events an engine's tiers raise: what the ZeroMQ publisher turns into vLLM's format.</summary>
public class CacheEngineKvEventsTests
{
    private const int Chunk = 16;

    // Room for exactly three chunks (each buffer is one 4 KiB page) in the memory tier.
    private static LMCacheOptions Options(string? disk = null, bool exact = false) => new()
    {
        ChunkSize = Chunk,
        MaxLocalCpuSize = 3.0 * KvBufferPool.Alignment / (1L << 30),
        TokenExactReuse = exact,
        LocalDisk = disk,
        MaxLocalDiskSize = disk is null ? 0 : 0.01,
    };

    private sealed class RecordingSink : IKvEventSink
    {
        public ConcurrentQueue<KvEvent> Events { get; } = new();

        public void Publish(in KvEvent kvEvent) => Events.Enqueue(kvEvent);

        public List<KvEvent> Of(KvMedium medium) => [.. Events.Where(e => e.Kind != KvEventKind.AllCleared && e.Medium == medium)];
    }

    private sealed class ThrowingSink : IKvEventSink
    {
        public void Publish(in KvEvent kvEvent) => throw new InvalidOperationException("broken sink");
    }

    [Fact]
    public async Task Memory_stores_carry_parents_and_tokens_and_evictions_follow_in_order()
    {
        var sink = new RecordingSink();
        await using var engine = CacheEngine.Create(Options(), TestData.Namespace(), events: sink);
        var tokens = TestData.Tokens(5 * Chunk, 1);
        var keys = engine.ComputeKeys(tokens);
        Assert.Equal(5 * Chunk, await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens)));

        var events = sink.Of(KvMedium.Cpu);
        var expected = new List<(KvEventKind, ChunkHash)>
        {
            (KvEventKind.Stored, keys[0]), (KvEventKind.Stored, keys[1]), (KvEventKind.Stored, keys[2]),
            (KvEventKind.Removed, keys[0]), (KvEventKind.Stored, keys[3]),
            (KvEventKind.Removed, keys[1]), (KvEventKind.Stored, keys[4]),
        };
        Assert.Equal(expected, events.Select(e => (e.Kind, e.Key)));
        var stores = events.Where(e => e.Kind == KvEventKind.Stored).ToList();
        Assert.Null(stores[0].Parent); // the first chunk: its parent is the namespace seed, published as none
        for (var i = 0; i < stores.Count; i++)
        {
            Assert.Equal(tokens.AsSpan(i * Chunk, Chunk).ToArray(), stores[i].Tokens);
            if (i > 0)
            {
                Assert.Equal(keys[i - 1], stores[i].Parent);
            }
        }

        // A prompt whose chunks are all held stores nothing: no event.
        sink.Events.Clear();
        Assert.Equal(0, await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens), skipTokens: 2 * Chunk));
        Assert.Empty(sink.Events);
    }

    [Fact]
    public async Task Disk_stores_promotions_and_a_clear_are_reported_per_tier()
    {
        var dir = Directory.CreateTempSubdirectory("lmcache-events-disk-").FullName;
        try
        {
            var sink = new RecordingSink();
            await using var engine = CacheEngine.Create(Options(dir), TestData.Namespace(), events: sink);
            var tokens = TestData.Tokens(5 * Chunk, 2);
            var keys = engine.ComputeKeys(tokens);
            await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens));
            await engine.FlushAsync();

            var disk = sink.Of(KvMedium.Disk);
            Assert.Equal(keys, disk.Select(e => e.Key));
            Assert.All(disk, e => Assert.Equal(KvEventKind.Stored, e.Kind));
            Assert.Null(disk[0].Parent);
            Assert.Equal(keys[..4], disk.Skip(1).Select(e => e.Parent!.Value));

            // Chunk 0 was evicted from memory; a retrieve promotes it back from disk, with the lineage the file kept.
            sink.Events.Clear();
            Assert.Equal(5 * Chunk, await engine.RetrieveAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens)));
            var promoted = sink.Of(KvMedium.Cpu).Where(e => e.Kind == KvEventKind.Stored).ToList();
            Assert.Equal(keys[0], promoted[0].Key);
            Assert.Null(promoted[0].Parent);
            Assert.Equal(tokens[..Chunk], promoted[0].Tokens);

            sink.Events.Clear();
            await engine.Storage.ClearAsync();
            var cleared = sink.Events.ToList();
            Assert.Equal(KvEventKind.AllCleared, cleared[^1].Kind);
            Assert.Equal(3, cleared.Count(e => e.Kind == KvEventKind.Removed && e.Medium == KvMedium.Cpu));
            Assert.Equal(keys.Order(Comparer<ChunkHash>.Create((a, b) => string.CompareOrdinal(a.ToString(), b.ToString()))),
                cleared.Where(e => e.Medium == KvMedium.Disk && e.Kind == KvEventKind.Removed).Select(e => e.Key)
                    .Order(Comparer<ChunkHash>.Create((a, b) => string.CompareOrdinal(a.ToString(), b.ToString()))));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public async Task Stores_this_instance_makes_to_a_remote_tier_are_reported_but_partial_chunks_stay_local()
    {
        var sink = new RecordingSink();
        var remote = new DictionaryRemoteTier();
        await using var engine = CacheEngine.Create(Options(exact: true), TestData.Namespace(), events: sink, lowerTiers: (_, _) => [remote]);
        var tokens = TestData.Tokens((2 * Chunk) + 5, 3);
        var keys = engine.ComputeKeys(tokens);
        await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens));
        await engine.FlushAsync();

        var stored = sink.Of(KvMedium.Remote);
        Assert.Equal(keys[..2], stored.Select(e => e.Key));
        Assert.Equal(keys[0], stored[1].Parent);
        // The 5-token tail is in memory (token-exact reuse) with its 5 tokens, never sent to the remote store.
        var tail = sink.Of(KvMedium.Cpu).Single(e => e.Tokens?.Length == 5);
        Assert.Equal(tokens[^5..], tail.Tokens);
        Assert.Equal(keys[1], tail.Parent);

        await engine.Storage.RemoveAsync(keys[0]);
        Assert.Contains(sink.Events, e => e.Kind == KvEventKind.Removed && e.Medium == KvMedium.Remote && e.Key == keys[0]);
    }

    [Fact]
    public async Task A_full_event_queue_never_blocks_a_store_and_counts_the_drops()
    {
        using var metrics = new CacheMetrics();
        var queue = new KvEventQueue(capacity: 2, metrics); // nobody reads it
        var options = Options();
        options.MaxLocalCpuSize = 0.01;
        await using var engine = CacheEngine.Create(options, TestData.Namespace(), metrics, events: queue);
        var tokens = TestData.Tokens(20 * Chunk, 4);
        Assert.Equal(20 * Chunk, await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens)));
        Assert.Equal(2, queue.Count);
        Assert.Equal(18, queue.Dropped);
        Assert.Equal(18, metrics.Snapshot().DroppedKvEvents);
        Assert.Equal(20 * Chunk, await engine.LookupAsync(tokens)); // the cache itself lost nothing
    }

    [Fact]
    public async Task A_sink_that_throws_never_fails_the_cache()
    {
        using var metrics = new CacheMetrics();
        await using var engine = CacheEngine.Create(Options(), TestData.Namespace(), metrics, events: new ThrowingSink());
        var tokens = TestData.Tokens(4 * Chunk, 5);
        Assert.Equal(4 * Chunk, await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens)));
        await engine.Storage.ClearAsync();
        Assert.True(metrics.Snapshot().DroppedKvEvents >= 4);
    }

    /// <summary>A remote tier in a dictionary (its own references on the chunks it holds).</summary>
    private sealed class DictionaryRemoteTier : IStorageTier
    {
        private readonly ConcurrentDictionary<ChunkHash, KvChunk> _chunks = new();

        public string Name => "remote";

        public StorageTierKind Kind => StorageTierKind.Remote;

        public ValueTask<int> CountPrefixAsync(ReadOnlyMemory<ChunkHash> keys, CancellationToken cancellationToken = default)
        {
            var n = 0;
            while (n < keys.Length && _chunks.ContainsKey(keys.Span[n]))
            {
                n++;
            }

            return ValueTask.FromResult(n);
        }

        public ValueTask<KvChunk?> GetAsync(ChunkHash key, CancellationToken cancellationToken = default) =>
            ValueTask.FromResult(_chunks.TryGetValue(key, out var c) ? c.AddRef() : null);

        public ValueTask<bool> PutAsync(KvChunk chunk, CancellationToken cancellationToken = default)
        {
            if (!_chunks.TryAdd(chunk.Key, chunk.AddRef()))
            {
                chunk.Release();
            }

            return ValueTask.FromResult(true);
        }

        public ValueTask<bool> RemoveAsync(ChunkHash key, CancellationToken cancellationToken = default)
        {
            if (_chunks.TryRemove(key, out var c))
            {
                c.Release();
                return ValueTask.FromResult(true);
            }

            return ValueTask.FromResult(false);
        }

        public async ValueTask ClearAsync(CancellationToken cancellationToken = default)
        {
            foreach (var key in _chunks.Keys)
            {
                await RemoveAsync(key, cancellationToken);
            }
        }

        public StorageTierStats GetStats() => new(_chunks.Count, 0, -1);

        public async ValueTask DisposeAsync() => await ClearAsync();
    }
}
