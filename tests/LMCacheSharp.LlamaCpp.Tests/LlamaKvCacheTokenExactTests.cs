using LMCacheSharp.Core.Configuration;
using LMCacheSharp.LlamaCpp.Gguf;

namespace LMCacheSharp.LlamaCpp.Tests;

/// <summary>
/// Token-exact reuse through llama.cpp: a prompt that shares a prefix ending inside a chunk restores that prefix to the
/// token (the stored child chunk goes in whole and the cells past the common prefix are removed), and generation after
/// it equals generation after a prefill split at the same point.
/// </summary>
public sealed class LlamaKvCacheTokenExactTests(ITestOutputHelper output)
{
    private const int Chunk = 16;

    // FA on: the stored KV came from the source prompt's one-batch prefill, and llama.cpp's flash-attention kernel rounds
    // by batch shape (LlamaKvCacheTests.FlashAttentionBatchTolerance), so the logits are compared within that bound.
    private const float FlashAttentionBatchTolerance = 0.1f;

    public static TheoryData<bool, LlamaChunkLayout, int> Cases()
    {
        var data = new TheoryData<bool, LlamaChunkLayout, int>();
        foreach (var fa in new[] { false, true })
        {
            foreach (var layout in new[] { LlamaChunkLayout.StateBlob, LlamaChunkLayout.Portable })
            {
                foreach (var offset in new[] { 0, 1, (Chunk / 2) - 1, Chunk - 1 })
                {
                    data.Add(fa, layout, offset);
                }
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task A_prefix_ending_inside_a_chunk_restores_to_the_token_and_matches_a_split_prefill(bool flashAttention, LlamaChunkLayout layout,
        int offset)
    {
        using var lm = new LlamaTestModel(TestModels.Get(TestModels.Gqa(GgmlTensorType.Q8_0)), flashAttention);
        await using var cache = LlamaKvCache.CreateWithEngine(lm.Handle, GgufFingerprint.Compute(lm.Path),
            new LMCacheOptions { ChunkSize = Chunk, MaxLocalCpuSize = 0.05, TokenExactReuse = true }, new LlamaKvCacheOptions { Layout = layout });
        var text = lm.Tokenize(TestModels.Text);
        var source = text[..((4 * Chunk) + 8)];
        await new CachedGenerator(lm.Handle, cache).PrefillAsync(source);

        // Shares 2 whole chunks and `offset` tokens of the third, then goes elsewhere.
        var common = (2 * Chunk) + offset;
        var prompt = source[..common].Concat(text[^12..].Select(t => t == source[common] ? t + 1 : t)).ToArray();
        Assert.NotEqual(source[common], prompt[common]);

        var context = lm.CreateContext();
        await using var fresh = LlamaKvCache.Create(context.NativeHandle, cache.Engine, cache.ModelFingerprint, new LlamaKvCacheOptions { Layout = layout });
        var generator = new CachedGenerator(context.NativeHandle, fresh);
        var hit = await generator.PrefillAsync(prompt, captureLogits: true);
        Assert.Equal(common, hit.CachedTokens);
        var tokens = generator.ContinueGreedy(24);

        var split = lm.Reference(prompt, split: common, generate: 24);
        var whole = lm.Reference(prompt, generate: 24);
        var diffSplit = LlamaTestModel.MaxAbsDiff(split.Logits, hit.Logits!);
        var diffWhole = LlamaTestModel.MaxAbsDiff(whole.Logits, hit.Logits!);
        output.WriteLine($"FA {(flashAttention ? "on" : "off")}, {layout}, offset {offset}: max |logit diff| {diffSplit} vs a prefill split at {common}, {diffWhole} vs one batch");
        if (!flashAttention)
        {
            Assert.Equal(0f, diffSplit);
            Assert.Equal(0f, diffWhole);
            Assert.Equal(whole.Tokens, tokens);
        }
        else
        {
            Assert.InRange(diffSplit, 0f, FlashAttentionBatchTolerance);
            Assert.InRange(diffWhole, 0f, FlashAttentionBatchTolerance);
        }
    }

    [Fact]
    public async Task The_completion_is_stored_and_the_next_turn_restores_prompt_and_answer()
    {
        using var lm = new LlamaTestModel(TestModels.Get(TestModels.Gqa(GgmlTensorType.Q8_0)), flashAttention: false);
        await using var cache = LlamaKvCache.CreateWithEngine(lm.Handle, GgufFingerprint.Compute(lm.Path),
            new LMCacheOptions { ChunkSize = Chunk, MaxLocalCpuSize = 0.05 });
        var text = lm.Tokenize(TestModels.Text);
        var turn1 = text[..21]; // under two chunks: one whole, a 5-token tail
        var generator = new CachedGenerator(lm.Handle, cache);
        await generator.PrefillAsync(turn1);
        var answer = generator.ContinueGreedy(10);
        // The sequence now holds turn1 + answer[..^1] (the last token was sampled, not decoded).
        var exchange = turn1.Concat(answer.Take(answer.Count - 1)).ToArray();
        Assert.True(await cache.StoreAsync(generator.Sequence, exchange) > 0);

        var turn2 = exchange.Concat(text[40..47]).ToArray();
        var context = lm.CreateContext();
        await using var fresh = LlamaKvCache.Create(context.NativeHandle, cache.Engine, cache.ModelFingerprint);
        var hit = await new CachedGenerator(context.NativeHandle, fresh).PrefillAsync(turn2, captureLogits: true);
        Assert.Equal(exchange.Length, hit.CachedTokens);
        Assert.Equal(0f, LlamaTestModel.MaxAbsDiff(lm.Reference(turn2).Logits, hit.Logits!));
    }
}
