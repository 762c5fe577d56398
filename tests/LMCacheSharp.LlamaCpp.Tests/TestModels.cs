using System.Collections.Concurrent;
using System.Security.Cryptography;
using LLama;
using LLama.Native;
using LMCacheSharp.LlamaCpp.Gguf;

namespace LMCacheSharp.LlamaCpp.Tests;

/// <summary>Generated test models (cached in a temp folder per spec) and the shared stories260K model.</summary>
internal static class TestModels
{
    public const string StoriesSha256 = LMCacheSharp.Tests.Shared.SharedModels.Stories260KSha256;

    public const string Text =
        "The quick brown fox jumps over the lazy dog. Once upon a time there was a cache that kept the keys and values " +
        "of every prompt it saw, so that nobody had to compute them twice. Zebras, quartz and jackdaws vex big nymphs!";

    private static readonly ConcurrentDictionary<LlamaModelSpec, string> Paths = new();

    static TestModels()
    {
        // llama.cpp logs every load at info level; tests only want errors.
        NativeLogConfig.llama_log_set((level, message) =>
        {
            if (level == LLamaLogLevel.Error)
            {
                Console.Error.Write(message);
            }
        });
    }

    public static string Directory { get; } = Path.Combine(Path.GetTempPath(), "lmcachesharp-tests", "models");

    /// <summary>Shapes used by the correctness tests: MHA and GQA, several layer counts and head sizes.</summary>
    public static LlamaModelSpec Mha(GgmlTensorType type) => new(2, 64, 4, 4, 128, 320, 1024, type, 7);

    public static LlamaModelSpec Gqa(GgmlTensorType type) => new(3, 128, 8, 2, 256, 400, 1024, type, 11);

    public static LlamaModelSpec GqaWideHeads(GgmlTensorType type) => new(1, 64, 2, 1, 96, 300, 1024, type, 13);

    public static LlamaModelSpec Shape(string name, GgmlTensorType type) => name switch
    {
        "mha" => Mha(type),
        "gqa" => Gqa(type),
        "gqa-wide" => GqaWideHeads(type),
        _ => throw new ArgumentException(name),
    };

    /// <summary>The path of the generated model for <paramref name="spec"/> (written once per machine).</summary>
    public static string Get(LlamaModelSpec spec) => Paths.GetOrAdd(spec, s =>
    {
        var name = $"l{s.Layers}-e{s.EmbeddingLength}-h{s.HeadCount}-kv{s.KvHeadCount}-f{s.FeedForwardLength}-v{s.VocabSize}-c{s.ContextLength}-{s.WeightType}-s{s.Seed}.gguf";
        var path = Path.Combine(Directory, name);
        if (!File.Exists(path))
        {
            GgufModelWriter.Write(s, path);
        }

        return path;
    });

    /// <summary>../shared/models/stories260K.gguf when present with the right sha256, else null and why.</summary>
    public static string? Stories260K(out string reason) => LMCacheSharp.Tests.Shared.SharedModels.Stories260K(out reason);
}

/// <summary>
/// A loaded model that makes fresh contexts (sequences 0..sequences-1 plus the scratch sequence), with reference runs.
/// llama.cpp sums attention over KV cells in the order they sit in the cache, so runs compared bit for bit each use a
/// fresh context with the same allocation history.
/// </summary>
internal sealed class LlamaTestModel : IDisposable
{
    private readonly LLamaWeights _weights;
    private readonly LLama.Common.ModelParams _params;
    private readonly List<LLamaContext> _contexts = [];
    private LLamaContext? _context;

    public LlamaTestModel(string path, bool flashAttention, int sequences = 2, uint contextSize = 1024, bool kvUnified = true)
    {
        Path = path;
        _params = LlamaContextSettings.Create(path, contextSize, flashAttention, sequences, threads: Environment.ProcessorCount, kvUnified: kvUnified);
        _weights = LLamaWeights.LoadFromFile(_params);
    }

    public string Path { get; }

    /// <summary>The model's first context (created on first use).</summary>
    public LLamaContext Context => _context ??= CreateContext();

    public SafeLLamaContextHandle Handle => Context.NativeHandle;

    /// <summary>A fresh context, disposed with the model.</summary>
    public LLamaContext CreateContext()
    {
        var context = _weights.CreateContext(_params);
        _contexts.Add(context);
        return context;
    }

    public int[] Tokenize(string text, int? count = null)
    {
        var tokens = Context.Tokenize(text, true).Select(t => (int)t).ToArray();
        if (count is { } n)
        {
            Assert.True(tokens.Length >= n, $"text has {tokens.Length} tokens, {n} wanted");
            return tokens[..n];
        }

        return tokens;
    }

    /// <summary>
    /// Uncached run in a fresh context: decode the prompt (in two batches split at <paramref name="split"/> when given),
    /// return the next-token logits and the greedy continuation of <paramref name="generate"/> tokens.
    /// </summary>
    public (float[] Logits, IReadOnlyList<int> Tokens) Reference(int[] prompt, int? split = null, int generate = 32)
    {
        using var context = _weights.CreateContext(_params);
        var handle = context.NativeHandle;
        var seq = LLamaSeqId.Zero;
        var batch = new LLamaBatch();
        var cuts = split is { } s ? new[] { s, prompt.Length } : new[] { prompt.Length };
        var from = 0;
        foreach (var to in cuts)
        {
            batch.Clear();
            for (var i = from; i < to; i++)
            {
                batch.Add(prompt[i], i, seq, i == prompt.Length - 1);
            }

            Assert.Equal(DecodeResult.Ok, handle.Decode(batch));
            from = to;
        }

        var logits = handle.GetLogitsIth(batch.TokenCount - 1).ToArray();
        var tokens = new List<int> { CachedGenerator.ArgMax(logits) };
        var pos = prompt.Length;
        while (tokens.Count < generate && !((LLamaToken)tokens[^1]).IsEndOfGeneration(handle.ModelHandle.Vocab))
        {
            batch.Clear();
            batch.Add(tokens[^1], pos++, seq, true);
            Assert.Equal(DecodeResult.Ok, handle.Decode(batch));
            tokens.Add(CachedGenerator.ArgMax(handle.GetLogitsIth(0)));
        }

        return (logits, tokens);
    }

    public static float MaxAbsDiff(float[] a, float[] b)
    {
        Assert.Equal(a.Length, b.Length);
        var max = 0f;
        for (var i = 0; i < a.Length; i++)
        {
            max = Math.Max(max, Math.Abs(a[i] - b[i]));
        }

        return max;
    }

    public void Dispose()
    {
        foreach (var context in _contexts)
        {
            context.Dispose();
        }

        _weights.Dispose();
    }
}
