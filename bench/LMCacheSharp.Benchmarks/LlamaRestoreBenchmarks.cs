using BenchmarkDotNet.Attributes;
using LLama;
using LLama.Native;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.LlamaCpp;
using LMCacheSharp.LlamaCpp.Gguf;

namespace LMCacheSharp.Benchmarks;

/// <summary>
/// The llama.cpp connector's hot paths next to llama.cpp alone: restoring 1024 cached tokens into a sequence through the
/// cache (state-blob and portable chunk layouts, 256-token chunks from the memory tier) against one
/// <c>llama_state_seq_set_data</c> of a prepared blob of the same tokens (the ceiling), and storing them (reading the KV
/// out of llama.cpp into chunks) against one <c>llama_state_seq_get_data</c>.
/// Model: generated, 8 layers x 512, MHA 8 x 64, f16, flash attention on (32 KiB of KV per token: 32 MiB restored).
/// Run: dotnet run -c Release --project bench/LMCacheSharp.Benchmarks -- --filter '*LlamaRestoreBenchmarks*'
/// </summary>
[MemoryDiagnoser]
public unsafe class LlamaRestoreBenchmarks
{
    private const int Tokens = 1024;
    private readonly LLamaSeqId _seq = LLamaSeqId.Zero;
    private LLamaWeights _weights = null!;
    private LLamaContext _context = null!;
    private LlamaKvCache _blobCache = null!;
    private LlamaKvCache _portableCache = null!;
    private int[] _prompt = null!;
    private byte[] _blob = null!;
    private string _dir = null!;

    [GlobalSetup]
    public void Setup()
    {
        NativeLogConfig.llama_log_set((level, message) => { });
        _dir = Directory.CreateTempSubdirectory("lmcache-bench-").FullName;
        var path = Path.Combine(_dir, "model.gguf");
        GgufModelWriter.Write(new LlamaModelSpec(8, 512, 8, 8, 1408, 4096, 4096, GgmlTensorType.F16), path);
        var p = LlamaContextSettings.Create(path, 2048, flashAttention: true, sequences: 1);
        _weights = LLamaWeights.LoadFromFile(p);
        _context = _weights.CreateContext(p);
        var options = new LMCacheOptions { ChunkSize = 256, MaxLocalCpuSize = 0.5 };
        _blobCache = LlamaKvCache.CreateWithEngine(_context.NativeHandle, "bench", options, new LlamaKvCacheOptions { Layout = LlamaChunkLayout.StateBlob });
        _portableCache = LlamaKvCache.CreateWithEngine(_context.NativeHandle, "bench", options, new LlamaKvCacheOptions { Layout = LlamaChunkLayout.Portable });
        var random = new Random(3);
        _prompt = [.. Enumerable.Range(0, Tokens + 1).Select(i => i == 0 ? 1 : random.Next(259, 4096))];
        var batch = new LLamaBatch();
        for (var i = 0; i < Tokens; i += 512)
        {
            batch.Clear();
            for (var j = i; j < i + 512; j++)
            {
                batch.Add(_prompt[j], j, _seq, false);
            }

            _context.NativeHandle.Decode(batch);
        }

        StoreStateBlob();
        StorePortable();
        var size = _context.NativeHandle.GetStateSize(_seq);
        _blob = GC.AllocateUninitializedArray<byte>((int)size, pinned: true);
        fixed (byte* b = _blob)
        {
            _context.NativeHandle.GetState(b, size, _seq);
        }
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _blobCache.DisposeAsync().AsTask().GetAwaiter().GetResult();
        _portableCache.DisposeAsync().AsTask().GetAwaiter().GetResult();
        _context.Dispose();
        _weights.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    [Benchmark(Baseline = true, Description = "llama.cpp set_data, 1024 tokens")]
    public nuint RawSetData()
    {
        _context.NativeHandle.MemorySequenceRemove(_seq, -1, -1);
        fixed (byte* b = _blob)
        {
            return _context.NativeHandle.SetState(b, (nuint)_blob.Length, _seq);
        }
    }

    [Benchmark(Description = "restore 4 chunks, state-blob layout")]
    public int RestoreStateBlob() => Check(_blobCache.RestoreAsync(_seq, _prompt).AsTask().GetAwaiter().GetResult());

    [Benchmark(Description = "restore 4 chunks, portable layout")]
    public int RestorePortable() => Check(_portableCache.RestoreAsync(_seq, _prompt).AsTask().GetAwaiter().GetResult());

    [Benchmark(Description = "llama.cpp get_data, 1024 tokens")]
    public nuint RawGetData()
    {
        fixed (byte* b = _blob)
        {
            return _context.NativeHandle.GetState(b, (nuint)_blob.Length, _seq);
        }
    }

    [Benchmark(Description = "store 4 chunks, state-blob layout")]
    public int StoreStateBlob()
    {
        _blobCache.Engine.Storage.ClearAsync().AsTask().GetAwaiter().GetResult();
        return Check(_blobCache.StoreAsync(_seq, _prompt.AsMemory(0, Tokens)).AsTask().GetAwaiter().GetResult());
    }

    [Benchmark(Description = "store 4 chunks, portable layout")]
    public int StorePortable()
    {
        _portableCache.Engine.Storage.ClearAsync().AsTask().GetAwaiter().GetResult();
        return Check(_portableCache.StoreAsync(_seq, _prompt.AsMemory(0, Tokens)).AsTask().GetAwaiter().GetResult());
    }

    private static int Check(int tokens) => tokens == Tokens ? tokens : throw new InvalidOperationException($"moved {tokens} tokens, expected {Tokens}");
}
