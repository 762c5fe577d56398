using System.Buffers.Binary;
using System.Diagnostics;
using System.Globalization;
using LLama;
using LLama.Native;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Storage;
using LMCacheSharp.LlamaCpp.Gguf;

namespace LMCacheSharp.LlamaCpp.Tests;

public sealed class LlamaKvCacheTests
{
    private const int Chunk = 16;

    // With flash attention on, llama.cpp's CPU attention kernel rounds differently depending on how many query rows a
    // decode call holds, so even an uncached prefill split in two batches differs from a one-batch prefill by ~1e-2 in
    // the logits (DESIGN section 6 saw the same). The exact check for FA on is therefore against an uncached prefill
    // split at the same boundary (bit-identical KV gives bit-identical logits); against the one-batch prefill the
    // difference must stay within this bound (measured 0.02-0.03 on these shapes).
    private const float FlashAttentionBatchTolerance = 0.1f;

    public static TheoryData<string, string, bool, LlamaChunkLayout> Shapes()
    {
        var data = new TheoryData<string, string, bool, LlamaChunkLayout>();
        foreach (var shape in new[] { "mha", "gqa", "gqa-wide" })
        {
            foreach (var type in new[] { "f16", "q8_0" })
            {
                foreach (var fa in new[] { false, true })
                {
                    data.Add(shape, type, fa, LlamaChunkLayout.StateBlob);
                }
            }
        }

        data.Add("gqa", "q8_0", false, LlamaChunkLayout.Portable);
        data.Add("gqa", "f16", true, LlamaChunkLayout.Portable);
        data.Add("mha", "q8_0", true, LlamaChunkLayout.Portable);
        return data;
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public async Task RestoringKChunksThenPrefillingGivesTheLogitsAndTokensOfAFullPrefill(string shape, string type, bool flashAttention,
        LlamaChunkLayout layout)
    {
        using var lm = new LlamaTestModel(TestModels.Get(TestModels.Shape(shape, LlamaModelSpec.ParseType(type))), flashAttention);
        await using var cache = CreateCache(lm, layout);
        Assert.True(cache.IsEnabled, cache.DisabledReason);
        Assert.Equal(flashAttention, cache.Shape.FlashAttention);
        Assert.Equal(layout == LlamaChunkLayout.Portable ? (flashAttention ? KvLayout.LayerKV : KvLayout.LayerKTransposedV) : KvLayout.LlamaCppSequenceState,
            cache.Format.Layout);

        var full = lm.Tokenize(TestModels.Text, (4 * Chunk) + 8);
        var cold = await new CachedGenerator(lm.Handle, cache).PrefillAsync(full, captureLogits: true);
        Assert.Equal(0, cold.CachedTokens);
        Assert.Equal(4 * Chunk, cold.StoredTokens);

        for (var k = 1; k <= 4; k++)
        {
            var prompt = full[..((k * Chunk) + 3)];
            var source = cache;
            LlamaKvCache? perK = null;
            if (flashAttention)
            {
                // With FA on, a chunk's KV depends on the batch it was computed in (see FlashAttentionBatchTolerance): store
                // the k chunks from a one-batch prefill of exactly those tokens, which the split reference reproduces.
                var perKContext = lm.CreateContext().NativeHandle;
                perK = CreateCache(perKContext, lm.Path, layout);
                Assert.Equal(k * Chunk, (await new CachedGenerator(perKContext, perK).PrefillAsync(full[..(k * Chunk)])).StoredTokens);
                source = perK;
            }

            var (hit, tokens) = await HitInFreshContextAsync(lm, source, prompt);
            Assert.Equal(k * Chunk, hit.CachedTokens);
            Assert.Equal(0, hit.StoredTokens);
            var reference = lm.Reference(prompt, split: flashAttention ? k * Chunk : null);
            Assert.Equal(0f, LlamaTestModel.MaxAbsDiff(reference.Logits, hit.Logits!));
            Assert.Equal(reference.Tokens, tokens);
            if (flashAttention)
            {
                Assert.InRange(LlamaTestModel.MaxAbsDiff(lm.Reference(prompt).Logits, hit.Logits!), 0f, FlashAttentionBatchTolerance);
                await perK!.DisposeAsync();
            }
        }
    }

    [Theory]
    [InlineData(false, LlamaChunkLayout.StateBlob)]
    [InlineData(true, LlamaChunkLayout.StateBlob)]
    [InlineData(false, LlamaChunkLayout.Portable)]
    [InlineData(true, LlamaChunkLayout.Portable)]
    public async Task RestoredKvIsBitIdenticalToTheStoredChunks(bool flashAttention, LlamaChunkLayout layout)
    {
        using var lm = new LlamaTestModel(TestModels.Get(TestModels.Gqa(GgmlTensorType.Q8_0)), flashAttention);
        await using var cache = CreateCache(lm, layout);
        var prompt = lm.Tokenize(TestModels.Text, (3 * Chunk) + 1);
        await new CachedGenerator(lm.Handle, cache).PrefillAsync(prompt);
        var keys = cache.Engine.ComputeKeys(prompt, cache.Namespace);
        Assert.Equal(3, keys.Length);

        // Restore into sequence 1 of another context, then read every chunk back out of it through a connector.
        var context = lm.CreateContext();
        await using var other = LlamaKvCache.Create(context.NativeHandle, cache.Engine, cache.ModelFingerprint, new LlamaKvCacheOptions { Layout = layout });
        Assert.Equal(3 * Chunk, await other.RestoreAsync((LLamaSeqId)1, prompt));
        using var connector = new LlamaKvConnector(context.NativeHandle, other.Shape, layout, other.ScratchSequence) { Sequence = (LLamaSeqId)1 };
        var readBack = new byte[cache.Format.PayloadLength(Chunk)];
        for (var i = 0; i < keys.Length; i++)
        {
            var stored = cache.Engine.Storage.Memory!.TryGet(keys[i])!;
            try
            {
                Assert.True(connector.TryReadKv(i * Chunk, Chunk, readBack));
                Assert.True(stored.Span.SequenceEqual(readBack), $"chunk {i} differs after a restore");
            }
            finally
            {
                stored.Release();
            }
        }
    }

    [Fact]
    public async Task ThePromptsLastTokenIsNeverRestored()
    {
        using var lm = new LlamaTestModel(TestModels.Get(TestModels.Mha(GgmlTensorType.F16)), flashAttention: false);
        await using var cache = CreateCache(lm, LlamaChunkLayout.StateBlob);
        var prompt = lm.Tokenize(TestModels.Text, 2 * Chunk);
        Assert.Equal(2 * Chunk, (await new CachedGenerator(lm.Handle, cache).PrefillAsync(prompt)).StoredTokens);
        var (hit, _) = await HitInFreshContextAsync(lm, cache, prompt);
        Assert.Equal(Chunk, hit.CachedTokens); // the second chunk holds the last token: it is decoded, not restored
        Assert.Equal(0f, LlamaTestModel.MaxAbsDiff(lm.Reference(prompt).Logits, hit.Logits!));
    }

    [Fact]
    public async Task SeveralSequencesOfOneContextRestoreAndDecodeTogether()
    {
        using var lm = new LlamaTestModel(TestModels.Get(TestModels.Gqa(GgmlTensorType.Q8_0)), flashAttention: false, sequences: 4);
        await using var cache = CreateCache(lm, LlamaChunkLayout.StateBlob);
        Assert.Equal(4, cache.ScratchSequence!.Value.Value);
        var a = lm.Tokenize(TestModels.Text, (3 * Chunk) + 5);
        var b = lm.Tokenize("Another prompt entirely, about rivers and mountains and the long roads between them all.", (2 * Chunk) + 2);
        await new CachedGenerator(lm.Handle, cache, (LLamaSeqId)0).PrefillAsync(a);
        await new CachedGenerator(lm.Handle, cache, (LLamaSeqId)0).PrefillAsync(b);

        var seqA = (LLamaSeqId)2;
        var seqB = (LLamaSeqId)3;
        float[] Run(LLamaContext context, bool restored)
        {
            var handle = context.NativeHandle;
            var batch = new LLamaBatch();
            if (!restored)
            {
                // Reference: the same cells in the same order, computed instead of restored.
                foreach (var (tokens, seq, cached) in new[] { (a, seqA, 3 * Chunk), (b, seqB, 2 * Chunk) })
                {
                    batch.Clear();
                    for (var i = 0; i < cached; i++)
                    {
                        batch.Add(tokens[i], i, seq, false);
                    }

                    Assert.Equal(DecodeResult.Ok, handle.Decode(batch));
                }
            }

            // One batch decodes the uncached suffixes of both sequences, as a server would.
            batch.Clear();
            for (var i = 3 * Chunk; i < a.Length; i++)
            {
                batch.Add(a[i], i, seqA, i == a.Length - 1);
            }

            var indexA = batch.TokenCount - 1;
            for (var i = 2 * Chunk; i < b.Length; i++)
            {
                batch.Add(b[i], i, seqB, i == b.Length - 1);
            }

            Assert.Equal(DecodeResult.Ok, handle.Decode(batch));
            return [.. handle.GetLogitsIth(indexA).ToArray(), .. handle.GetLogitsIth(batch.TokenCount - 1).ToArray()];
        }

        var context = lm.CreateContext();
        await using var second = LlamaKvCache.Create(context.NativeHandle, cache.Engine, cache.ModelFingerprint);
        Assert.Equal(3 * Chunk, await second.RestoreAsync(seqA, a));
        Assert.Equal(2 * Chunk, await second.RestoreAsync(seqB, b));
        var cachedLogits = Run(context, restored: true);
        var referenceLogits = Run(lm.CreateContext(), restored: false);
        Assert.Equal(0f, LlamaTestModel.MaxAbsDiff(referenceLogits, cachedLogits));
    }

    [Fact]
    public async Task TheScratchSequenceIsRefused()
    {
        using var lm = new LlamaTestModel(TestModels.Get(TestModels.Mha(GgmlTensorType.F16)), flashAttention: false);
        await using var cache = CreateCache(lm, LlamaChunkLayout.StateBlob);
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(async () => await cache.RestoreAsync(cache.ScratchSequence!.Value, new int[40]));
    }

    public static TheoryData<string> HeaderFields() => ["magic", "n_stream", "cell_count", "pos", "n_seq_id", "v_trans", "n_layer", "k_type", "k_row"];

    [Theory]
    [MemberData(nameof(HeaderFields))]
    public async Task AChunkWithAnUnexpectedStateHeaderIsAMissAndTheOutputStaysCorrect(string field)
    {
        using var lm = new LlamaTestModel(TestModels.Get(TestModels.Gqa(GgmlTensorType.F16)), flashAttention: false);
        await using var cache = CreateCache(lm, LlamaChunkLayout.StateBlob);
        var prompt = lm.Tokenize(TestModels.Text, (3 * Chunk) + 4);
        var generator = new CachedGenerator(lm.Handle, cache);
        await generator.PrefillAsync(prompt);

        // Replace chunk 1 in the memory tier with a damaged copy under a valid checksum, so only the connector's checks
        // can catch it (a stored chunk is sealed: its bytes and metadata never change in place).
        var key = cache.Engine.ComputeKeys(prompt, cache.Namespace)[1];
        var stored = cache.Engine.Storage.Memory!.TryGet(key)!;
        var damaged = cache.Engine.Pool.Rent(stored.Length);
        try
        {
            stored.Span.CopyTo(damaged.Span);
            var span = damaged.Span;
            var layersOffset = LlamaStateBlob.PrefixBytes + 4 + (12 * Chunk) + 4;
            switch (field)
            {
                case "magic": span[0] ^= 1; break;
                case "n_stream": BinaryPrimitives.WriteUInt32LittleEndian(span[8..], 2); break;
                case "cell_count": BinaryPrimitives.WriteUInt32LittleEndian(span[12..], Chunk - 1); break;
                case "pos": BinaryPrimitives.WriteInt32LittleEndian(span[(16 + (12 * 5))..], 3); break;
                case "n_seq_id": BinaryPrimitives.WriteUInt32LittleEndian(span[(16 + 4)..], 2); break;
                case "v_trans": BinaryPrimitives.WriteUInt32LittleEndian(span[(layersOffset - 4)..], 0); break;
                case "n_layer": BinaryPrimitives.WriteUInt32LittleEndian(span[layersOffset..], 2); break;
                case "k_type": BinaryPrimitives.WriteUInt32LittleEndian(span[(layersOffset + 4)..], 0); break;
                case "k_row": BinaryPrimitives.WriteUInt64LittleEndian(span[(layersOffset + 8)..], 32); break;
                default: throw new ArgumentException(field);
            }

            damaged.Key = stored.Key;
            damaged.TokenCount = stored.TokenCount;
            damaged.Format = stored.Format;
            damaged.SealChecksum();
            Assert.True(cache.Engine.Storage.Memory.Remove(key));
            Assert.True(cache.Engine.Storage.Memory.Put(damaged));
        }
        finally
        {
            stored.Release();
            damaged.Release();
        }

        var (hit, tokens) = await HitInFreshContextAsync(lm, cache, prompt);
        Assert.Equal(Chunk, hit.CachedTokens); // chunk 0 restored, chunk 1 refused, the rest recomputed
        var reference = lm.Reference(prompt);
        Assert.Equal(0f, LlamaTestModel.MaxAbsDiff(reference.Logits, hit.Logits!));
        Assert.Equal(reference.Tokens, tokens);
    }

    [Fact]
    public async Task AChunkFromAContextOfAnotherShapeIsRefusedAndLeavesTheSequenceEmpty()
    {
        using var on = new LlamaTestModel(TestModels.Get(TestModels.Mha(GgmlTensorType.F16)), flashAttention: true);
        var prompt = on.Tokenize(TestModels.Text, Chunk + 4);
        await using var cacheOn = CreateCache(on, LlamaChunkLayout.StateBlob);
        await new CachedGenerator(on.Handle, cacheOn).PrefillAsync(prompt);
        var stored = cacheOn.Engine.Storage.Memory!.TryGet(cacheOn.Engine.ComputeKeys(prompt, cacheOn.Namespace)[0])!;
        var payload = stored.Span.ToArray();
        stored.Release();

        using var off = new LlamaTestModel(on.Path, flashAttention: false);
        await using var cacheOff = CreateCache(off, LlamaChunkLayout.StateBlob);
        Assert.NotEqual(cacheOn.Namespace, cacheOff.Namespace); // FA mode is part of the namespace
        using var connector = new LlamaKvConnector(off.Handle, cacheOff.Shape, LlamaChunkLayout.StateBlob, cacheOff.ScratchSequence)
        {
            Sequence = LLamaSeqId.Zero,
        };
        Assert.Equal(payload.Length, cacheOff.Format.PayloadLength(Chunk)); // same size, other V layout
        Assert.False(connector.TryWriteKv(0, Chunk, payload));
        Assert.Equal(-1, off.Handle.MemorySequenceMaxPosition(LLamaSeqId.Zero).Value);
        Assert.Equal(-1, off.Handle.MemorySequenceMaxPosition(cacheOff.ScratchSequence!.Value).Value);
    }

    [Fact]
    public async Task ACorruptedChunkFileIsAMissAndTheOutputStaysCorrect()
    {
        var dir = Directory.CreateTempSubdirectory("lmcache-kv-").FullName;
        try
        {
            using var lm = new LlamaTestModel(TestModels.Get(TestModels.Gqa(GgmlTensorType.Q8_0)), flashAttention: false);
            var prompt = lm.Tokenize(TestModels.Text, (4 * Chunk) + 2);
            var options = new LMCacheOptions { ChunkSize = Chunk, LocalCpu = false, LocalDisk = dir, MaxLocalDiskSize = 1 };
            await using var cache = LlamaKvCache.CreateWithEngine(lm.Handle, "test-model", options,
                new LlamaKvCacheOptions { Layout = LlamaChunkLayout.Portable });
            var disk = cache.Engine.Storage.Tiers.OfType<DiskTier>().Single();
            var generator = new CachedGenerator(lm.Handle, cache);
            await generator.PrefillAsync(prompt);
            await cache.Engine.FlushAsync();

            var file = disk.PathOf(cache.Engine.ComputeKeys(prompt, cache.Namespace)[2]);
            var bytes = await File.ReadAllBytesAsync(file);
            bytes[DiskTier.HeaderBlockSize + 100] ^= 0x40; // one bit of KV
            await File.WriteAllBytesAsync(file, bytes);

            var (hit, tokens) = await HitInFreshContextAsync(lm, cache, prompt);
            Assert.Equal(2 * Chunk, hit.CachedTokens);
            Assert.Equal(1, cache.Engine.Metrics.Snapshot().CorruptChunks);
            var reference = lm.Reference(prompt);
            Assert.Equal(0f, LlamaTestModel.MaxAbsDiff(reference.Logits, hit.Logits!));
            Assert.Equal(reference.Tokens, tokens);

            // The corrupt file was deleted and the recomputed chunks stored again: the cache heals.
            await cache.Engine.FlushAsync();
            var (again, _) = await HitInFreshContextAsync(lm, cache, prompt);
            Assert.Equal(4 * Chunk, again.CachedTokens);
            Assert.Equal(0f, LlamaTestModel.MaxAbsDiff(reference.Logits, again.Logits!));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Theory]
    [InlineData(false, LlamaChunkLayout.StateBlob)]
    [InlineData(true, LlamaChunkLayout.Portable)]
    public async Task KvStoredByAnotherProcessRestoresHere(bool flashAttention, LlamaChunkLayout layout)
    {
        var dir = Directory.CreateTempSubdirectory("lmcache-kv-").FullName;
        try
        {
            var model = TestModels.Get(TestModels.Gqa(GgmlTensorType.F16));
            int[] prompt;
            using (var probe = new LlamaTestModel(model, flashAttention))
            {
                prompt = probe.Tokenize(TestModels.Text, (3 * Chunk) + 7);
            }

            // The other process: this test executable in worker mode.
            var exe = typeof(KvWorker).Assembly.Location;
            var apphost = Path.ChangeExtension(exe, null);
            var start = File.Exists(apphost) ? new ProcessStartInfo(apphost) : new ProcessStartInfo("dotnet") { ArgumentList = { "exec", exe } };
            foreach (var a in new[] { KvWorker.Verb, "store", model, flashAttention.ToString(), layout.ToString(), Chunk.ToString(CultureInfo.InvariantCulture), dir,
                string.Join(',', prompt) })
            {
                start.ArgumentList.Add(a);
            }

            start.RedirectStandardOutput = true;
            start.RedirectStandardError = true;
            using var worker = Process.Start(start)!;
            var stdout = await worker.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
            var stderr = await worker.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
            await worker.WaitForExitAsync(TestContext.Current.CancellationToken);
            Assert.True(worker.ExitCode == 0, $"worker exited {worker.ExitCode}: {stdout} {stderr}");
            Assert.Equal((3 * Chunk).ToString(CultureInfo.InvariantCulture), stdout.Trim());

            using var lm = new LlamaTestModel(model, flashAttention);
            var options = new LMCacheOptions { ChunkSize = Chunk, MaxLocalCpuSize = 0.05, LocalDisk = dir, MaxLocalDiskSize = 1 };
            await using var cache = LlamaKvCache.CreateWithEngine(lm.Handle, GgufFingerprint.Compute(model), options,
                new LlamaKvCacheOptions { Layout = layout });
            using (var pinned = await cache.PrefetchAsync(prompt))
            {
                Assert.Equal(3 * Chunk, pinned.Tokens);
            }

            var generator = new CachedGenerator(lm.Handle, cache);
            var hit = await generator.PrefillAsync(prompt, captureLogits: true);
            Assert.Equal(3 * Chunk, hit.CachedTokens);
            var reference = lm.Reference(prompt, split: flashAttention ? 3 * Chunk : null);
            Assert.Equal(0f, LlamaTestModel.MaxAbsDiff(reference.Logits, hit.Logits!));
            Assert.Equal(reference.Tokens, generator.ContinueGreedy(32));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public async Task AnotherNamespaceNeverHits()
    {
        using var lm = new LlamaTestModel(TestModels.Get(TestModels.Mha(GgmlTensorType.F16)), flashAttention: false);
        await using var cache = CreateCache(lm, LlamaChunkLayout.StateBlob);
        var prompt = lm.Tokenize(TestModels.Text, (2 * Chunk) + 3);
        var generator = new CachedGenerator(lm.Handle, cache);
        await generator.PrefillAsync(prompt, cache.Namespace.WithSalt("tenant-a"));
        Assert.Equal(0, (await generator.PrefillAsync(prompt, cache.Namespace.WithSalt("tenant-b"))).CachedTokens);
        Assert.Equal(2 * Chunk, (await generator.PrefillAsync(prompt, cache.Namespace.WithSalt("tenant-a"))).CachedTokens);
        Assert.Equal(0, await cache.LookupAsync(prompt)); // the default namespace has no salt
    }

    [Fact]
    public async Task ALossyDiskCodecKeysTheConnectorsChunksApartFromExactKv()
    {
        var dir = Directory.CreateTempSubdirectory("lmcache-kv-").FullName;
        try
        {
            using var lm = new LlamaTestModel(TestModels.Get(TestModels.Mha(GgmlTensorType.F16)), flashAttention: false);
            var prompt = lm.Tokenize(TestModels.Text, (2 * Chunk) + 3);
            var lossy = new LMCacheOptions { ChunkSize = Chunk, LocalCpu = false, LocalDisk = dir, MaxLocalDiskSize = 1, LocalDiskSerde = "int8" };
            await using (var cache = LlamaKvCache.CreateWithEngine(lm.Handle, "test-model", lossy,
                new LlamaKvCacheOptions { Layout = LlamaChunkLayout.Portable }))
            {
                Assert.Equal("lossy=int8", cache.Namespace.Variant);
                await new CachedGenerator(lm.Handle, cache).PrefillAsync(prompt);
                await cache.Engine.FlushAsync();
                var (hit, _) = await HitInFreshContextAsync(lm, cache, prompt);
                Assert.Equal(2 * Chunk, hit.CachedTokens); // int8 KV restores (approximately) under its own keys
            }

            // The same directory read without the lossy codec: exact KV is wanted, the int8 chunks never match.
            lm.Handle.MemoryClear(true);
            var exact = new LMCacheOptions { ChunkSize = Chunk, LocalCpu = false, LocalDisk = dir, MaxLocalDiskSize = 1 };
            await using var exactCache = LlamaKvCache.CreateWithEngine(lm.Handle, "test-model", exact,
                new LlamaKvCacheOptions { Layout = LlamaChunkLayout.Portable });
            Assert.Null(exactCache.Namespace.Variant);
            Assert.Equal(0, await exactCache.LookupAsync(prompt));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public async Task Stories260KKeepsItsKnownContinuationWithAndWithoutACacheHit()
    {
        var path = TestModels.Stories260K(out var reason);
        Assert.SkipWhen(path is null, "stories260K check skipped: " + reason);
        using var lm = new LlamaTestModel(path!, flashAttention: false); // head size 8: FA off on CPU (models/README.md)
        var options = new LMCacheOptions { ChunkSize = 2, MaxLocalCpuSize = 0.01 };
        await using var cache = LlamaKvCache.CreateWithEngine(lm.Handle, GgufFingerprint.Compute(path!), options);
        var prompt = lm.Tokenize("Once upon a time");
        var generator = new CachedGenerator(lm.Handle, cache);
        const string expected = "Once upon a time, there was a little girl named Lily.";
        foreach (var expectHit in new[] { false, true })
        {
            var (result, tokens) = await generator.GenerateAsync(prompt, 16);
            Assert.Equal(expectHit, result.CachedTokens > 0);
            var decoder = new LLama.StreamingTokenDecoder(lm.Context);
            foreach (var t in prompt.Concat(tokens))
            {
                decoder.Add(t);
            }

            var text = decoder.Read();
            Assert.StartsWith(expected, text.TrimStart(), StringComparison.Ordinal);
        }
    }

    /// <summary>Prefill and 32 greedy tokens in a fresh context whose cache shares <paramref name="cache"/>'s engine.</summary>
    private static async Task<(PromptResult Result, IReadOnlyList<int> Tokens)> HitInFreshContextAsync(LlamaTestModel lm, LlamaKvCache cache, int[] prompt)
    {
        var context = lm.CreateContext();
        await using var fresh = LlamaKvCache.Create(context.NativeHandle, cache.Engine, cache.ModelFingerprint,
            new LlamaKvCacheOptions { Layout = cache.Layout });
        Assert.Equal(cache.Namespace, fresh.Namespace);
        var generator = new CachedGenerator(context.NativeHandle, fresh);
        var result = await generator.PrefillAsync(prompt, captureLogits: true);
        return (result, generator.ContinueGreedy(32));
    }

    private static LlamaKvCache CreateCache(LlamaTestModel lm, LlamaChunkLayout layout) => CreateCache(lm.Handle, lm.Path, layout);

    // Whole chunks: these tests count chunk-aligned hits. LlamaKvCacheTokenExactTests covers token-exact reuse.
    private static LlamaKvCache CreateCache(SafeLLamaContextHandle context, string model, LlamaChunkLayout layout) =>
        LlamaKvCache.CreateWithEngine(context, GgufFingerprint.Compute(model),
            new LMCacheOptions { ChunkSize = Chunk, MaxLocalCpuSize = 0.05, TokenExactReuse = false }, new LlamaKvCacheOptions { Layout = layout });
}
