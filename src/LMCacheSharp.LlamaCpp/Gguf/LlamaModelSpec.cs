using System.Globalization;

namespace LMCacheSharp.LlamaCpp.Gguf;

/// <summary>
/// The shape of a Llama-architecture model for <see cref="GgufModelWriter"/>. Head size is
/// <see cref="EmbeddingLength"/> / <see cref="HeadCount"/>; <see cref="KvHeadCount"/> below <see cref="HeadCount"/> makes
/// grouped-query attention.
/// </summary>
/// <param name="Layers">Transformer blocks (1..512).</param>
/// <param name="EmbeddingLength">Hidden size (a multiple of <paramref name="HeadCount"/>; of 32 for q8_0).</param>
/// <param name="HeadCount">Attention heads.</param>
/// <param name="KvHeadCount">Key/value heads (divides <paramref name="HeadCount"/>).</param>
/// <param name="FeedForwardLength">FFN hidden size (a multiple of 32 for q8_0).</param>
/// <param name="VocabSize">Vocabulary size (at least 259: 3 special tokens and 256 byte tokens).</param>
/// <param name="ContextLength">Trained context length written to the file.</param>
/// <param name="WeightType">Type of the 2-D weight tensors (norms are always f32).</param>
/// <param name="Seed">Seed of the random weights: same spec and seed give a byte-identical file.</param>
public sealed record LlamaModelSpec(
    int Layers,
    int EmbeddingLength,
    int HeadCount,
    int KvHeadCount,
    int FeedForwardLength,
    int VocabSize,
    int ContextLength,
    GgmlTensorType WeightType = GgmlTensorType.F16,
    ulong Seed = 42)
{
    /// <summary>Preset names accepted by <see cref="FromPreset"/>.</summary>
    public static IReadOnlyList<string> PresetNames { get; } = ["tiny", "small", "bench"];

    /// <summary>Size of one attention head.</summary>
    public int HeadSize => EmbeddingLength / HeadCount;

    /// <summary>
    /// A named shape: <c>tiny</c> (2 layers x 64, 4 heads / 2 KV heads, vocab 512: about 0.1M parameters, for tests),
    /// <c>small</c> (4 x 256, 8/4 heads, vocab 2048: about 4M), <c>bench</c> (16 x 1024, MHA 16 x 64, FFN 2816, vocab 8192,
    /// context 16384: about 222M, the TTFT benchmark model of DESIGN section 6).
    /// </summary>
    public static LlamaModelSpec FromPreset(string name, GgmlTensorType type = GgmlTensorType.F16, ulong seed = 42) =>
        name?.ToLowerInvariant() switch
        {
            "tiny" => new LlamaModelSpec(2, 64, 4, 2, 128, 512, 2048, type, seed),
            "small" => new LlamaModelSpec(4, 256, 8, 4, 768, 2048, 4096, type, seed),
            "bench" => new LlamaModelSpec(16, 1024, 16, 16, 2816, 8192, 16384, type, seed),
            _ => throw new ArgumentException($"unknown preset '{name}': use one of {string.Join(", ", PresetNames)}", nameof(name)),
        };

    /// <summary>Weights in the model (all tensors, output included).</summary>
    public long ParameterCount
    {
        get
        {
            long e = EmbeddingLength, kv = (long)KvHeadCount * HeadSize, f = FeedForwardLength;
            var perLayer = (2 * e) + (e * e * 2) + (2 * e * kv) + (3 * e * f);
            return (2L * VocabSize * e) + e + (Layers * perLayer);
        }
    }

    /// <summary>Every problem with the shape, empty when valid.</summary>
    public IReadOnlyList<string> GetErrors()
    {
        var errors = new List<string>();
        if (Layers is < 1 or > 512)
        {
            errors.Add($"--layers must be 1..512, got {Layers}");
        }

        if (HeadCount < 1 || EmbeddingLength < 1 || EmbeddingLength % HeadCount != 0)
        {
            errors.Add($"--embd ({EmbeddingLength}) must be a positive multiple of --heads ({HeadCount})");
        }

        if (KvHeadCount < 1 || HeadCount % Math.Max(KvHeadCount, 1) != 0)
        {
            errors.Add($"--kv-heads ({KvHeadCount}) must divide --heads ({HeadCount})");
        }

        if (FeedForwardLength < 1)
        {
            errors.Add($"--ffn must be positive, got {FeedForwardLength}");
        }

        if (VocabSize is < 259 or > 1_000_000)
        {
            errors.Add($"--vocab must be 259..1000000 (3 special + 256 byte tokens at least), got {VocabSize}");
        }

        if (ContextLength is < 16 or > 1 << 20)
        {
            errors.Add($"--ctx must be 16..1048576, got {ContextLength}");
        }

        if (WeightType == GgmlTensorType.Q8_0 && (EmbeddingLength % 32 != 0 || FeedForwardLength % 32 != 0))
        {
            errors.Add($"q8_0 needs --embd and --ffn to be multiples of 32, got {EmbeddingLength} and {FeedForwardLength}");
        }

        if (WeightType is not (GgmlTensorType.F16 or GgmlTensorType.Q8_0 or GgmlTensorType.F32))
        {
            errors.Add($"--type must be f16, q8_0 or f32, got {WeightType}");
        }

        return errors;
    }

    /// <summary>Throws <see cref="ArgumentException"/> listing every problem.</summary>
    public void Validate()
    {
        var errors = GetErrors();
        if (errors.Count > 0)
        {
            throw new ArgumentException("Invalid model shape: " + string.Join("; ", errors));
        }
    }

    /// <summary>Parses <c>f16</c>, <c>q8_0</c> or <c>f32</c>.</summary>
    public static GgmlTensorType ParseType(string text) => text?.ToLowerInvariant() switch
    {
        "f16" => GgmlTensorType.F16,
        "q8_0" or "q8" => GgmlTensorType.Q8_0,
        "f32" => GgmlTensorType.F32,
        _ => throw new ArgumentException($"unknown weight type '{text}': use f16, q8_0 or f32", nameof(text)),
    };

    /// <inheritdoc />
    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"llama {Layers}L x {EmbeddingLength}, heads {HeadCount}/{KvHeadCount} (head {HeadSize}), ffn {FeedForwardLength}, vocab {VocabSize}, ctx {ContextLength}, {WeightType.ToString().ToLowerInvariant()}, {ParameterCount / 1e6:F1}M params, seed {Seed}");
}
