using CsCheck;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Engine;
using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Core.Tests;

/// <summary>Token-exact reuse (DESIGN section 10): the tail past the last whole-chunk hit is matched by tokens.</summary>
public sealed class CacheEngineTokenExactTests
{
    private const int Chunk = 16;

    private static CacheEngine NewEngine(double gib = 0.01) =>
        CacheEngine.Create(new LMCacheOptions { ChunkSize = Chunk, MaxLocalCpuSize = gib, TokenExactReuse = true }, TestData.Namespace());

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(7)]
    [InlineData(15)]
    public async Task The_common_prefix_is_restored_to_the_token_at_every_offset_inside_a_chunk(int offset)
    {
        await using var engine = NewEngine();
        var stored = TestData.Tokens(48, 1);
        await engine.StoreAsync(stored, new FakeSequence(TestData.SmallFormat, stored));
        var common = (2 * Chunk) + offset; // ends inside chunk 2 (a whole stored chunk of the other prompt)
        var request = stored[..common].Concat(TestData.Tokens(30, 2).Select(t => t + 1000)).ToArray();

        using var prefix = await engine.PinAsync(request);
        Assert.Equal(common, prefix.Tokens);
        var sink = new RecordingSink(TestData.SmallFormat);
        Assert.Equal(common, engine.Restore(prefix, sink));
        sink.AssertMatches(request, common);
    }

    [Fact]
    public async Task A_prompt_shorter_than_a_chunk_hits_through_the_seeds_children()
    {
        await using var engine = NewEngine();
        var first = TestData.Tokens(10, 3);
        await engine.StoreAsync(first, new FakeSequence(TestData.SmallFormat, first));
        var request = first.Concat(TestData.Tokens(5, 4)).ToArray();
        using var prefix = await engine.PinAsync(request);
        Assert.Equal(10, prefix.Tokens);
        Assert.Equal(0, prefix.RunTokens);
        var sink = new RecordingSink(TestData.SmallFormat);
        Assert.Equal(10, engine.Restore(prefix, sink));
        sink.AssertMatches(request, 10);
    }

    [Fact]
    public async Task A_child_whose_first_token_differs_is_never_used()
    {
        await using var engine = NewEngine();
        var stored = TestData.Tokens(40, 5);
        await engine.StoreAsync(stored, new FakeSequence(TestData.SmallFormat, stored));
        var request = stored[..32].Append(stored[32] + 1).Concat(stored[33..]).ToArray();
        using var prefix = await engine.PinAsync(request);
        Assert.Equal(32, prefix.Tokens);
        Assert.Equal(0, prefix.TailTokens);
    }

    [Fact]
    public async Task A_longer_stored_sequence_replaces_the_partial_chunk_it_extends()
    {
        await using var engine = NewEngine();
        var conversation = TestData.Tokens(60, 6);
        var prompt = conversation[..20];
        await engine.StoreAsync(prompt, new FakeSequence(TestData.SmallFormat, conversation));
        var memory = engine.Storage.Memory!;
        Assert.Equal(2, memory.Count); // chunk 0 and the 4-token tail
        await engine.StoreAsync(conversation[..28], new FakeSequence(TestData.SmallFormat, conversation)); // prompt + completion
        Assert.Equal(2, memory.Count); // the 12-token tail replaced the 4-token one

        var next = conversation[..28].Concat(TestData.Tokens(9, 7)).ToArray(); // the next turn
        using var prefix = await engine.PinAsync(next);
        Assert.Equal(28, prefix.Tokens);
        var sink = new RecordingSink(TestData.SmallFormat);
        Assert.Equal(28, engine.Restore(prefix, sink));
        sink.AssertMatches(next, 28);
    }

    [Fact]
    public async Task A_child_stored_after_the_lookup_is_taken_at_restore()
    {
        await using var engine = NewEngine();
        var tokens = TestData.Tokens(40, 8);
        using var prefix = await engine.PinAsync(tokens);
        Assert.Equal(0, prefix.Tokens);
        await engine.StoreAsync(tokens[..37], new FakeSequence(TestData.SmallFormat, tokens)); // the previous turn ends now
        Assert.Equal(37, engine.ExtendInMemory(prefix));
        var sink = new RecordingSink(TestData.SmallFormat);
        Assert.Equal(37, engine.Restore(prefix, sink));
        sink.AssertMatches(tokens, 37);
    }

    [Fact]
    public async Task Salts_keep_their_children_apart()
    {
        await using var engine = NewEngine();
        var tokens = TestData.Tokens(12, 9);
        await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens), ns: TestData.Namespace(salt: "a"));
        using var other = await engine.PinAsync(tokens, TestData.Namespace(salt: "b"));
        Assert.Equal(0, other.Tokens);
        using var same = await engine.PinAsync(tokens, TestData.Namespace(salt: "a"));
        Assert.Equal(12, same.Tokens);
    }

    [Fact]
    public async Task Property_restore_covers_the_longest_common_prefix_with_anything_stored()
    {
        var gen = Gen.Int[0, 3].Array[1, 70].Array[1, 5].Select(Gen.Int[0, 3].Array[1, 70]);
        await gen.SampleAsync(async (storedSet, request) =>
        {
            await using var engine = NewEngine(gib: 0.1);
            foreach (var s in storedSet)
            {
                await engine.StoreAsync(s, new FakeSequence(TestData.SmallFormat, s));
            }

            var expected = storedSet.Max(s => request.AsSpan().CommonPrefixLength(s));
            using var prefix = await engine.PinAsync(request);
            var sink = new RecordingSink(TestData.SmallFormat);
            var restored = engine.Restore(prefix, sink);
            Assert.Equal(expected, restored);
            sink.AssertMatches(request, restored);
        }, iter: 300);
    }

    [Fact]
    public async Task Partial_chunks_survive_a_restart_through_the_disk_tier()
    {
        var dir = Directory.CreateTempSubdirectory("lmcache-tail-disk-").FullName;
        try
        {
            var options = new LMCacheOptions { ChunkSize = Chunk, MaxLocalCpuSize = 0.01, LocalDisk = dir, MaxLocalDiskSize = 0.01, TokenExactReuse = true };
            var stored = TestData.Tokens(40, 12); // two whole chunks and an 8-token tail
            await using (var first = CacheEngine.Create(options, TestData.Namespace()))
            {
                await first.StoreAsync(stored, new FakeSequence(TestData.SmallFormat, stored));
                await first.FlushAsync();
            }

            var request = stored[..37].Concat(TestData.Tokens(9, 13).Select(t => t + 500)).ToArray();
            await using var second = CacheEngine.Create(options, TestData.Namespace()); // a restarted process: memory is empty
            Assert.Equal(0, second.Storage.Memory!.Count);
            using var prefix = await second.PinAsync(request);
            Assert.Equal(37, prefix.Tokens);
            var sink = new RecordingSink(TestData.SmallFormat);
            Assert.Equal(37, second.Restore(prefix, sink));
            sink.AssertMatches(request, 37);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public async Task A_forged_lineage_on_disk_never_serves_other_tokens()
    {
        var dir = Directory.CreateTempSubdirectory("lmcache-tail-forged-").FullName;
        try
        {
            var options = new LMCacheOptions { ChunkSize = Chunk, MaxLocalCpuSize = 0.01, LocalDisk = dir, MaxLocalDiskSize = 0.01, TokenExactReuse = true };
            var stored = TestData.Tokens(40, 15);
            await using (var first = CacheEngine.Create(options, TestData.Namespace()))
            {
                await first.StoreAsync(stored, new FakeSequence(TestData.SmallFormat, stored));
                await first.FlushAsync();
            }

            // Rewrite the 8-token tail's lineage to claim other tokens, with a valid lineage checksum.
            var request = stored[..32].Concat(stored[32..].Select(t => t + 1)).Append(1).ToArray();
            var forgedFiles = 0;
            foreach (var file in Directory.EnumerateFiles(dir, "*.kv", SearchOption.AllDirectories))
            {
                var bytes = File.ReadAllBytes(file);
                if (ChunkLineage.TryRead(bytes.AsSpan(ChunkEnvelope.HeaderSize), 8) is { } lineage)
                {
                    Assert.True(new ChunkLineage(lineage.Parent, request[32..40]).TryWrite(bytes.AsSpan(ChunkEnvelope.HeaderSize)));
                    File.WriteAllBytes(file, bytes);
                    forgedFiles++;
                }
            }

            Assert.Equal(1, forgedFiles);
            var metrics = new Metrics.CacheMetrics();
            await using var second = CacheEngine.Create(options, TestData.Namespace(), metrics);
            using var prefix = await second.PinAsync(request);
            Assert.Equal(32, prefix.Tokens); // the whole chunks; the forged child is not believed
            Assert.Equal(1, metrics.Snapshot().CorruptChunks);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public async Task Partial_chunks_never_reach_a_remote_tier()
    {
        var pool = new KvBufferPool();
        var remote = new EnvelopeTier(pool);
        await using (var engine = TestData.EngineOver(remote, pool, new LMCacheOptions { ChunkSize = Chunk, MaxLocalCpuSize = 0.01, TokenExactReuse = true }))
        {
            var tokens = TestData.Tokens(40, 14);
            await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens));
            await engine.FlushAsync();
            Assert.Equal(2, remote.Values.Count); // the whole chunks only
            using var prefix = await engine.PinAsync(tokens);
            Assert.Equal(40, prefix.Tokens); // the tail from memory
        }

        Assert.Equal(0, pool.RentedCount);
    }

    /// <summary>Records what restore writes and checks every restored position's rows against the request's own KV.</summary>
    private sealed class RecordingSink(KvFormat format) : IKvSink
    {
        private readonly List<(int Start, int Count, byte[] Payload)> _writes = [];

        public bool TryWriteKv(int startToken, int tokenCount, ReadOnlySpan<byte> payload)
        {
            Assert.Equal(format.PayloadLength(tokenCount), payload.Length);
            _writes.Add((startToken, tokenCount, payload.ToArray()));
            return true;
        }

        public void AssertMatches(int[] request, int restored)
        {
            var covered = 0;
            foreach (var (start, count, payload) in _writes)
            {
                Assert.Equal(covered, start); // in order, no gap
                for (var i = 0; i < count && start + i < restored; i++)
                {
                    var expected = new byte[format.PayloadLength(1)];
                    FakeSequence.ExpectedKv(format, request, start + i, 1, expected);
                    Assert.True(Rows(payload, count, i).SequenceEqual(expected), $"position {start + i} differs");
                    covered = start + i + 1;
                }
            }

            Assert.Equal(restored, covered);
        }

        // LayerKV: per layer, K rows of the chunk's tokens, then V rows.
        private byte[] Rows(byte[] payload, int count, int index)
        {
            var k = format.KBytesPerToken;
            var v = format.VBytesPerToken;
            var rows = new List<byte>();
            for (var layer = 0; layer < format.Layers; layer++)
            {
                var layerStart = layer * count * (k + v);
                rows.AddRange(payload.AsSpan(layerStart + (index * k), k).ToArray());
                rows.AddRange(payload.AsSpan(layerStart + (count * k) + (index * v), v).ToArray());
            }

            return [.. rows];
        }
    }
}
