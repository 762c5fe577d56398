using LLama.Common;

namespace LMCacheSharp.LlamaCpp;

/// <summary>
/// Model and context parameters that suit the cache: explicit thread counts (LLamaSharp's default is half the cores),
/// a unified KV cache (needed to move chunks through a scratch sequence) and one sequence more than the caller serves
/// (the scratch sequence, the last id); or, on request, a KV stream per sequence and no scratch sequence.
/// </summary>
public static class LlamaContextSettings
{
    /// <summary>Creates parameters for <paramref name="modelPath"/>.</summary>
    /// <param name="modelPath">The GGUF file.</param>
    /// <param name="contextSize">KV cells of the context (all sequences together).</param>
    /// <param name="flashAttention">Flash attention on or off (changes V's layout and the numerics; part of the namespace).</param>
    /// <param name="sequences">Sequences the caller decodes (0..sequences-1); one more is added for scratch.</param>
    /// <param name="threads">Compute threads, default all cores.</param>
    /// <param name="batchSize">Tokens per decode call (n_batch) and per micro-batch (n_ubatch). Default 512.</param>
    /// <param name="kvUnified">True (default): one KV cache shared by all sequences, plus the scratch sequence the cache
    /// moves chunks through. False: a KV stream per sequence (each holds <paramref name="contextSize"/> / <paramref name="sequences"/>
    /// cells, and attention runs over its own cells only), no scratch sequence; use <see cref="LlamaKvCacheOptions.PerSequenceKv"/>.</param>
    /// <param name="gpuLayers">Layers offloaded to the GPU (llama.cpp's n_gpu_layers; more than the model has offloads all).
    /// Default 0; range 0..<see cref="MaxGpuLayers"/>. Needs a GPU build of llama.cpp (<see cref="LlamaNativeLibrary"/>);
    /// the CPU build ignores it.</param>
    public static ModelParams Create(string modelPath, uint contextSize, bool flashAttention, int sequences = 1, int? threads = null, uint batchSize = 512,
        int gpuLayers = 0, bool kvUnified = true)
    {
        ArgumentException.ThrowIfNullOrEmpty(modelPath);
        ArgumentOutOfRangeException.ThrowIfLessThan(sequences, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(gpuLayers);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(gpuLayers, MaxGpuLayers);
        var t = threads ?? Environment.ProcessorCount;
        return new ModelParams(modelPath)
        {
            ContextSize = contextSize,
            FlashAttention = flashAttention,
            SeqMax = kvUnified ? (uint)sequences + 1 : (uint)sequences,
            KVUnified = kvUnified,
            Threads = t,
            BatchThreads = t,
            BatchSize = batchSize,
            UBatchSize = batchSize,
            GpuLayerCount = gpuLayers,
        };
    }

    /// <summary>The largest layer count accepted for offloading; any number above a model's layers offloads them all.</summary>
    public const int MaxGpuLayers = 10_000;
}
