using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using LLama;
using LLama.Native;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.LlamaCpp;
using LMCacheSharp.LlamaCpp.Gguf;

namespace LMCacheSharp.Benchmarks;

/// <summary>
/// Real KV for the codec and disk-tier benchmarks: a llama.cpp model (a generated one, or stories260K from the shared
/// folder, checked against its SHA-256), a prompt prefilled into sequence 0, and the prompt's chunks in the connector's
/// portable layout (plain K/V rows: what the lossy codecs can quantize). Also the generation-quality probe of a codec:
/// the prompt stored through a disk tier with that codec, restored by a fresh engine over the same directory, and 64
/// greedy steps compared with the exact run (teacher-forced: both sides are fed the exact run's tokens).
/// </summary>
internal sealed class CodecKvModel : IDisposable
{
    public const int GeneratedSteps = 64;
    private const string StoriesSha256 = "270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d";
    private const string StoryText =
        "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. One day, " +
        "she saw a big red ball under a tree. She ran to the ball and picked it up. Her mom said it was time to go home, so Lily " +
        "gave the ball to a boy who was sad. The boy smiled and said thank you. Lily felt happy and went home with her mom. ";

    private readonly string _dir;
    private readonly LLamaWeights _weights;
    private readonly LLamaBatch _batch = new();

    private CodecKvModel(string name, string modelPath, bool flashAttention, int chunkSize, int promptChunks, string dir)
    {
        Name = name;
        _dir = dir;
        ChunkSize = chunkSize;
        var p = LlamaContextSettings.Create(modelPath, (uint)((chunkSize * promptChunks) + GeneratedSteps + 16), flashAttention, sequences: 1);
        _weights = LLamaWeights.LoadFromFile(p);
        Context = _weights.CreateContext(p);
        Fingerprint = GgufFingerprint.Compute(modelPath);
        var promptLength = (chunkSize * promptChunks) + 1; // the last token is always decoded, for its logits
        Prompt = name == "stories260K" ? Tokenize(promptLength) : RandomPrompt(promptLength);
    }

    public string Name { get; }

    public LLamaContext Context { get; }

    public string Fingerprint { get; }

    public int ChunkSize { get; }

    public int[] Prompt { get; }

    public int StoredTokens => Prompt.Length - 1;

    public static IReadOnlyList<string> Names { get; } = ["generated", "stories260K"];

    /// <summary>
    /// "generated": 8 layers x 512, MHA 8 x 64, f16, flash attention on, 4 chunks of 256 tokens (16 KiB of f16 KV per token: 4 MiB
    /// chunks). "stories260K": the shared trained model (5 layers x 64, GQA 8/4 heads of 8, flash attention off as its head
    /// size needs on CPU), 3 chunks of 128 tokens of a story. Null (with the reason) when stories260K is absent or altered.
    /// </summary>
    public static CodecKvModel? Open(string name, out string reason)
    {
        NativeLogConfig.llama_log_set((level, message) => { });
        reason = "";
        var dir = Directory.CreateTempSubdirectory("lmcache-bench-codec-").FullName;
        if (name == "generated")
        {
            var path = Path.Combine(dir, "model.gguf");
            GgufModelWriter.Write(new LlamaModelSpec(8, 512, 8, 8, 1408, 4096, 4096, GgmlTensorType.F16), path);
            return new CodecKvModel(name, path, flashAttention: true, chunkSize: 256, promptChunks: 4, dir);
        }

        var stories = FindStories260K(out reason);
        if (stories is null)
        {
            Directory.Delete(dir, recursive: true);
            return null;
        }

        return new CodecKvModel(name, stories, flashAttention: false, chunkSize: 128, promptChunks: 3, dir);
    }

    /// <summary>The shared stories260K model: LMCACHE_STORIES260K, else ../shared/models/ from the repository root; null unless its SHA-256 matches.</summary>
    public static string? FindStories260K(out string reason)
    {
        var path = Environment.GetEnvironmentVariable("LMCACHE_STORIES260K");
        if (string.IsNullOrEmpty(path))
        {
            var root = RepositoryRoot();
            path = root is null ? null : Path.GetFullPath(Path.Combine(root, "..", "shared", "models", "stories260K.gguf"));
        }

        if (path is null || !File.Exists(path))
        {
            reason = $"stories260K.gguf not found ({path ?? "repository root not found"}); set LMCACHE_STORIES260K";
            return null;
        }

        using var stream = File.OpenRead(path);
        var sha = Convert.ToHexStringLower(SHA256.HashData(stream));
        if (sha != StoriesSha256)
        {
            reason = $"{path}: SHA-256 {sha} does not match SHA256SUMS ({StoriesSha256})";
            return null;
        }

        reason = "";
        return path;
    }

    /// <summary>The directory holding LMCacheSharp.slnx above the running assembly, or null.</summary>
    public static string? RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "LMCacheSharp.slnx")))
            {
                return dir.FullName;
            }
        }

        return null;
    }

    /// <summary>The engine options of a disk-only cache (no memory tier: every hit reads the disk) in <paramref name="directory"/>.</summary>
    public LMCacheOptions DiskOnlyOptions(string directory, string codec) => new()
    {
        ChunkSize = ChunkSize,
        LocalCpu = false,
        LocalDisk = directory,
        MaxLocalDiskSize = 4,
        LocalDiskSerde = codec,
        WriteQueueChunks = 64,
    };

    /// <summary>Clears sequence 0 and prefills the whole prompt; returns the last token's logits.</summary>
    public float[] ColdPrefill()
    {
        Context.NativeHandle.MemorySequenceRemove(LLamaSeqId.Zero, -1, -1);
        return DecodePrompt(0);
    }

    /// <summary>Decodes Prompt[from..] into sequence 0 (the first <paramref name="from"/> positions are in place); returns the last token's logits.</summary>
    public float[] DecodePrompt(int from)
    {
        var batchSize = (int)Context.BatchSize;
        for (var i = from; i < Prompt.Length; i += batchSize)
        {
            _batch.Clear();
            var end = Math.Min(Prompt.Length, i + batchSize);
            for (var j = i; j < end; j++)
            {
                _batch.Add(Prompt[j], j, LLamaSeqId.Zero, j == Prompt.Length - 1);
            }

            Decode();
        }

        return Context.NativeHandle.GetLogitsIth(_batch.TokenCount - 1).ToArray();
    }

    /// <summary>
    /// Feeds <paramref name="tokens"/> one by one after the prompt (positions Prompt.Length..), returning the logits after each.
    /// With <paramref name="tokens"/> null the model picks its own greedy tokens, starting from <paramref name="first"/>'s argmax.
    /// </summary>
    public (int[] Tokens, float[][] Logits) Continue(float[] first, int[]? tokens)
    {
        var chosen = new int[GeneratedSteps];
        var logits = new float[GeneratedSteps + 1][];
        logits[0] = first;
        for (var step = 0; step < GeneratedSteps; step++)
        {
            chosen[step] = tokens?[step] ?? CachedGenerator.ArgMax(logits[step]);
            _batch.Clear();
            _batch.Add(chosen[step], Prompt.Length + step, LLamaSeqId.Zero, true);
            Decode();
            logits[step + 1] = Context.NativeHandle.GetLogitsIth(0).ToArray();
        }

        return (chosen, logits);
    }

    /// <summary>The prompt's chunks in the portable layout (copied out of a memory-only engine).</summary>
    public (KvFormat Format, byte[][] Chunks) PortableChunks()
    {
        ColdPrefill();
        var options = new LMCacheOptions { ChunkSize = ChunkSize, MaxLocalCpuSize = 1 };
        var cache = LlamaKvCache.CreateWithEngine(Context.NativeHandle, Fingerprint, options, new LlamaKvCacheOptions { Layout = LlamaChunkLayout.Portable });
        try
        {
            var stored = cache.StoreAsync(LLamaSeqId.Zero, Prompt.AsMemory(0, StoredTokens)).AsTask().GetAwaiter().GetResult();
            if (stored != StoredTokens)
            {
                throw new InvalidOperationException($"{Name}: stored {stored} of {StoredTokens} tokens ({cache.DisabledReason})");
            }

            var chunks = new List<byte[]>();
            foreach (var key in cache.Engine.ComputeKeys(Prompt.AsSpan(0, StoredTokens), cache.Namespace))
            {
                using var chunk = cache.Engine.Storage.Memory!.TryGet(key) ?? throw new InvalidOperationException("chunk missing from memory");
                chunks.Add(chunk.Span.ToArray());
            }

            return (cache.Format, [.. chunks]);
        }
        finally
        {
            Close(cache);
        }
    }

    /// <summary>
    /// The codec's effect on generation: the prompt stored through a disk tier with <paramref name="codec"/>, restored by a
    /// fresh engine over the same directory, then the 64 steps of the exact run fed to both. Returns the maximum absolute
    /// logit difference over the 65 positions (after the prompt's last token and after each of the 64 tokens) and how many
    /// of the 64 greedy picks (the argmax after the prompt and after each of the first 63 tokens) agree, plus the first
    /// step where free-running generation leaves the exact run's tokens.
    /// </summary>
    public CodecQuality MeasureQuality(string codec)
    {
        var exactFirst = ColdPrefill();
        var (exactTokens, exactLogits) = Continue(exactFirst, null);
        var dir = Path.Combine(_dir, "quality-" + codec);
        var options = DiskOnlyOptions(dir, codec);
        var layout = new LlamaKvCacheOptions { Layout = LlamaChunkLayout.Portable };
        StoreThroughDisk(dir, codec);
        Context.NativeHandle.MemorySequenceRemove(LLamaSeqId.Zero, -1, -1);
        var reader = LlamaKvCache.CreateWithEngine(Context.NativeHandle, Fingerprint, options, layout);
        try
        {
            var restored = reader.RestoreAsync(LLamaSeqId.Zero, Prompt, reader.Engine.Namespace).AsTask().GetAwaiter().GetResult();
            if (restored != StoredTokens)
            {
                throw new InvalidOperationException($"{Name}/{codec}: restored {restored} of {StoredTokens} tokens from disk");
            }

            var first = DecodePrompt(restored);
            var (_, logits) = Continue(first, exactTokens);
            var maxDiff = 0.0;
            var agree = 0;
            for (var i = 0; i <= GeneratedSteps; i++)
            {
                for (var v = 0; v < logits[i].Length; v++)
                {
                    maxDiff = Math.Max(maxDiff, Math.Abs(logits[i][v] - exactLogits[i][v]));
                }

                if (i < GeneratedSteps && CachedGenerator.ArgMax(logits[i]) == CachedGenerator.ArgMax(exactLogits[i]))
                {
                    agree++;
                }
            }

            // Free-running: restore again and let the model choose; where does it first leave the exact run's tokens?
            Context.NativeHandle.MemorySequenceRemove(LLamaSeqId.Zero, -1, -1);
            restored = reader.RestoreAsync(LLamaSeqId.Zero, Prompt, reader.Engine.Namespace).AsTask().GetAwaiter().GetResult();
            var (free, _) = Continue(DecodePrompt(restored), null);
            var firstDivergence = Enumerable.Range(0, GeneratedSteps).FirstOrDefault(i => free[i] != exactTokens[i], -1);
            return new CodecQuality(Name, codec, maxDiff, agree, firstDivergence);
        }
        finally
        {
            Close(reader);
        }
    }

    /// <summary>Prefills the prompt and stores its chunks (portable layout) through a disk-only engine over <paramref name="dir"/>.</summary>
    public void StoreThroughDisk(string dir, string codec)
    {
        ColdPrefill();
        var writer = LlamaKvCache.CreateWithEngine(Context.NativeHandle, Fingerprint, DiskOnlyOptions(dir, codec),
            new LlamaKvCacheOptions { Layout = LlamaChunkLayout.Portable });
        try
        {
            var stored = writer.StoreAsync(LLamaSeqId.Zero, Prompt.AsMemory(0, StoredTokens), 0, writer.Engine.Namespace).AsTask().GetAwaiter().GetResult();
            writer.Engine.FlushAsync().GetAwaiter().GetResult();
            if (stored != StoredTokens)
            {
                throw new InvalidOperationException($"{Name}/{codec}: stored {stored} of {StoredTokens} tokens");
            }
        }
        finally
        {
            Close(writer);
        }
    }

    public static void Close(LlamaKvCache cache) => cache.DisposeAsync().AsTask().GetAwaiter().GetResult();

    public void Dispose()
    {
        Context.Dispose();
        _weights.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    private int[] Tokenize(int count)
    {
        var text = new StringBuilder();
        while (true)
        {
            text.Append(StoryText);
            var tokens = Context.Tokenize(text.ToString(), true).Select(t => (int)t).ToArray();
            if (tokens.Length >= count)
            {
                return tokens[..count];
            }
        }
    }

    private static int[] RandomPrompt(int count)
    {
        var random = new Random(3);
        return [.. Enumerable.Range(0, count).Select(i => i == 0 ? 1 : random.Next(259, 4096))];
    }

    private void Decode()
    {
        var result = Context.NativeHandle.Decode(_batch);
        if (result != DecodeResult.Ok)
        {
            throw new InvalidOperationException($"llama_decode failed: {result}");
        }
    }
}

/// <summary>A lossy codec's effect on generation (see <see cref="CodecKvModel.MeasureQuality"/>).</summary>
internal sealed record CodecQuality(string Model, string Codec, double MaxLogitDiff, int AgreeingTokens, int FirstFreeRunDivergence)
{
    public string ToRow() => string.Create(CultureInfo.InvariantCulture,
        $"| {Model} | {Codec} | {MaxLogitDiff:G4} | {AgreeingTokens}/{CodecKvModel.GeneratedSteps} | {(FirstFreeRunDivergence < 0 ? "none" : FirstFreeRunDivergence.ToString(CultureInfo.InvariantCulture))} |");
}
