using BenchmarkDotNet.Attributes;
using LLama.Native;
using LMCacheSharp.LlamaCpp;

namespace LMCacheSharp.Benchmarks;

/// <summary>
/// The disk tier under the llama.cpp connector, per codec, on a generated model and on stories260K:
/// <list type="bullet">
/// <item>time to first token of a cold prefill (the baseline) against a warm disk cache read by a freshly opened engine
/// (directory scan, chunk reads, decoding, restore into llama.cpp, decode of the last prompt token): what a restarted
/// process pays for a prompt it saw before. The engine has no memory tier, so every restore reads the disk (the files are
/// in the page cache: this is the warm-restart case, not a cold disk);</item>
/// <item>in the global setup, each codec's effect on generation (max logit difference over 65 positions, greedy-token
/// agreement over 64 teacher-forced steps, first divergence when free-running), printed and appended to
/// BenchmarkDotNet.Artifacts/codec-quality.md under the repository root.</item>
/// </list>
/// Run: dotnet run -c Release --project bench/LMCacheSharp.Benchmarks -- --filter '*CodecGenerationBenchmarks*'
/// </summary>
[SimpleJob(launchCount: 1, warmupCount: 1, iterationCount: 7)]
[MedianColumn]
public class CodecGenerationBenchmarks
{
    private CodecKvModel? _model;
    private string _dir = "";

    [ParamsSource(nameof(Models))]
    public string Model { get; set; } = "";

    [Params("naive", "lz4", "zstd", "int8", "fp8")]
    public string Codec { get; set; } = "";

    public static IEnumerable<string> Models => CodecKvModel.Names;

    [GlobalSetup]
    public void Setup()
    {
        _model = CodecKvModel.Open(Model, out var reason);
        if (_model is null)
        {
            Console.WriteLine($"// {Model}: skipped: {reason}");
            return;
        }

        var quality = _model.MeasureQuality(Codec);
        Console.WriteLine($"// codec quality: {quality.ToRow()}");
        if (CodecKvModel.RepositoryRoot() is { } root)
        {
            var file = Path.Combine(root, "BenchmarkDotNet.Artifacts", "codec-quality.md");
            Directory.CreateDirectory(Path.GetDirectoryName(file)!);
            File.AppendAllText(file, quality.ToRow() + Environment.NewLine);
        }

        _dir = Directory.CreateTempSubdirectory("lmcache-bench-ttft-").FullName;
        _model.StoreThroughDisk(_dir, Codec);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _model?.Dispose();
        if (_dir.Length > 0)
        {
            Directory.Delete(_dir, recursive: true);
        }
    }

    [Benchmark(Baseline = true, Description = "TTFT cold prefill")]
    public int ColdPrefill() => _model is null ? 0 : CachedGenerator.ArgMax(_model.ColdPrefill());

    [Benchmark(Description = "TTFT fresh engine, warm disk")]
    public int WarmDisk()
    {
        if (_model is null)
        {
            return 0;
        }

        _model.Context.NativeHandle.MemorySequenceRemove(LLamaSeqId.Zero, -1, -1);
        var cache = LlamaKvCache.CreateWithEngine(_model.Context.NativeHandle, _model.Fingerprint, _model.DiskOnlyOptions(_dir, Codec),
            new LlamaKvCacheOptions { Layout = LlamaChunkLayout.Portable });
        try
        {
            var restored = cache.RestoreAsync(LLamaSeqId.Zero, _model.Prompt, cache.Engine.Namespace).AsTask().GetAwaiter().GetResult();
            if (restored != _model.StoredTokens)
            {
                throw new InvalidOperationException($"restored {restored} of {_model.StoredTokens} tokens");
            }

            return CachedGenerator.ArgMax(_model.DecodePrompt(restored));
        }
        finally
        {
            CodecKvModel.Close(cache);
        }
    }
}
