using LLama.Native;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.LlamaCpp.Gguf;

namespace LMCacheSharp.LlamaCpp.Tests;

/// <summary>
/// The cache over a context with a KV stream per sequence (<c>KVUnified = false</c>, <see cref="LlamaKvCacheOptions.PerSequenceKv"/>):
/// no scratch sequence; a store cuts chunks from one snapshot of the whole sequence and a restore writes every chunk with
/// one <c>llama_state_seq_set_data</c>. The KV and the generation after a restore must be what they are in the unified mode.
/// </summary>
public sealed class LlamaKvCachePerSequenceTests
{
    private const int Chunk = 16;
    private const int Sequences = 3;
    private const float FlashAttentionBatchTolerance = 0.1f; // as LlamaKvCacheTests

    public static TheoryData<bool, LlamaChunkLayout> Modes()
    {
        var data = new TheoryData<bool, LlamaChunkLayout>();
        foreach (var fa in new[] { false, true })
        {
            foreach (var layout in new[] { LlamaChunkLayout.StateBlob, LlamaChunkLayout.Portable })
            {
                data.Add(fa, layout);
            }
        }

        return data;
    }

    private static LlamaTestModel Model(bool flashAttention) =>
        new(TestModels.Get(TestModels.Gqa(GgmlTensorType.Q8_0)), flashAttention, sequences: Sequences, contextSize: 3 * 256, kvUnified: false);

    private static LlamaKvCache CreateCache(SafeLLamaContextHandle context, string model, LlamaChunkLayout layout, bool tokenExact = false) =>
        LlamaKvCache.CreateWithEngine(context, GgufFingerprint.Compute(model),
            new LMCacheOptions { ChunkSize = Chunk, MaxLocalCpuSize = 0.05, TokenExactReuse = tokenExact },
            new LlamaKvCacheOptions { Layout = layout, PerSequenceKv = true });

    [Theory]
    [MemberData(nameof(Modes))]
    public async Task Chunks_stored_from_one_stream_restore_into_another_and_generation_matches_a_prefill(bool flashAttention, LlamaChunkLayout layout)
    {
        using var lm = Model(flashAttention);
        await using var cache = CreateCache(lm.Handle, lm.Path, layout);
        Assert.True(cache.IsEnabled, cache.DisabledReason);
        Assert.Null(cache.ScratchSequence);
        var prompt = lm.Tokenize(TestModels.Text, (3 * Chunk) + 5);

        // Stored from the last sequence (its own stream, not stream 0): FA on stores a one-batch prefill of the chunks only.
        var stored = flashAttention ? prompt[..(3 * Chunk)] : prompt;
        var cold = await new CachedGenerator(lm.Handle, cache, (LLamaSeqId)(Sequences - 1)).PrefillAsync(stored);
        Assert.Equal(3 * Chunk, cold.StoredTokens);

        var context = lm.CreateContext();
        await using var fresh = LlamaKvCache.Create(context.NativeHandle, cache.Engine, cache.ModelFingerprint,
            new LlamaKvCacheOptions { Layout = layout, PerSequenceKv = true });
        Assert.Equal(cache.Namespace, fresh.Namespace);
        var generator = new CachedGenerator(context.NativeHandle, fresh, (LLamaSeqId)1);
        var hit = await generator.PrefillAsync(prompt, captureLogits: true);
        Assert.Equal(3 * Chunk, hit.CachedTokens);
        var tokens = generator.ContinueGreedy(24);

        var reference = lm.Reference(prompt, split: flashAttention ? 3 * Chunk : null, generate: 24);
        Assert.Equal(0f, LlamaTestModel.MaxAbsDiff(reference.Logits, hit.Logits!));
        Assert.Equal(reference.Tokens, tokens);
        if (flashAttention)
        {
            Assert.InRange(LlamaTestModel.MaxAbsDiff(lm.Reference(prompt).Logits, hit.Logits!), 0f, FlashAttentionBatchTolerance);
        }
    }

    [Theory]
    [MemberData(nameof(Modes))]
    public async Task Restored_kv_reads_back_bit_identical_to_the_stored_chunks(bool flashAttention, LlamaChunkLayout layout)
    {
        using var lm = Model(flashAttention);
        await using var cache = CreateCache(lm.Handle, lm.Path, layout);
        var prompt = lm.Tokenize(TestModels.Text, (3 * Chunk) + 1);
        await new CachedGenerator(lm.Handle, cache).PrefillAsync(prompt);
        var keys = cache.Engine.ComputeKeys(prompt, cache.Namespace);

        var context = lm.CreateContext();
        await using var other = LlamaKvCache.Create(context.NativeHandle, cache.Engine, cache.ModelFingerprint,
            new LlamaKvCacheOptions { Layout = layout, PerSequenceKv = true });
        Assert.Equal(3 * Chunk, await other.RestoreAsync((LLamaSeqId)2, prompt));
        Assert.Equal(-1, context.NativeHandle.MemorySequenceMaxPosition((LLamaSeqId)1).Value); // the other streams are untouched
        using var connector = new LlamaKvConnector(context.NativeHandle, other.Shape, layout, null, Sequences) { Sequence = (LLamaSeqId)2 };
        var readBack = new byte[cache.Format.PayloadLength(Chunk)];
        for (var i = 0; i < keys.Length; i++)
        {
            var chunk = cache.Engine.Storage.Memory!.TryGet(keys[i])!;
            try
            {
                Assert.True(connector.TryReadKv(i * Chunk, Chunk, readBack));
                Assert.True(chunk.Span.SequenceEqual(readBack), $"chunk {i} differs after a restore");
            }
            finally
            {
                chunk.Release();
            }
        }

        connector.CompleteRead();
        Assert.False(connector.TryReadKv(3 * Chunk, Chunk, readBack)); // positions the sequence does not hold
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(Chunk - 1)]
    public async Task A_token_exact_tail_restores_to_the_token_and_matches_a_split_prefill(int offset)
    {
        using var lm = Model(flashAttention: false);
        await using var cache = CreateCache(lm.Handle, lm.Path, LlamaChunkLayout.StateBlob, tokenExact: true);
        var text = lm.Tokenize(TestModels.Text);
        var source = text[..((4 * Chunk) + 8)];
        await new CachedGenerator(lm.Handle, cache).PrefillAsync(source);
        var common = (2 * Chunk) + offset;
        var prompt = source[..common].Concat(text[^12..].Select(t => t == source[common] ? t + 1 : t)).ToArray();

        var context = lm.CreateContext();
        await using var fresh = LlamaKvCache.Create(context.NativeHandle, cache.Engine, cache.ModelFingerprint,
            new LlamaKvCacheOptions { Layout = LlamaChunkLayout.StateBlob, PerSequenceKv = true });
        var generator = new CachedGenerator(context.NativeHandle, fresh, (LLamaSeqId)1);
        var hit = await generator.PrefillAsync(prompt, captureLogits: true);
        Assert.Equal(common, hit.CachedTokens);
        var reference = lm.Reference(prompt, split: common, generate: 24);
        Assert.Equal(0f, LlamaTestModel.MaxAbsDiff(reference.Logits, hit.Logits!));
        Assert.Equal(reference.Tokens, generator.ContinueGreedy(24));
    }

    [Fact]
    public async Task A_per_sequence_context_without_the_option_disables_the_cache_and_says_why()
    {
        using var lm = Model(flashAttention: false);
        await using var cache = LlamaKvCache.CreateWithEngine(lm.Handle, GgufFingerprint.Compute(lm.Path), new LMCacheOptions { ChunkSize = Chunk, MaxLocalCpuSize = 0.05 },
            new LlamaKvCacheOptions { ScratchSequence = (LLamaSeqId)(Sequences - 1) });
        Assert.False(cache.IsEnabled);
        Assert.Contains("PerSequenceKv", cache.DisabledReason, StringComparison.Ordinal);
    }
}
