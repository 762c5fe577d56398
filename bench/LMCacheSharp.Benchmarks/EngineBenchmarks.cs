using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Engine;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Benchmarks;

/// <summary>
/// Core hot paths: hashing a prompt into chunk keys, looking up a 32k-token prompt (128 chunks), and retrieving / storing
/// 8 MiB chunks through the memory tier, next to a plain memory copy of the same bytes (the baseline).
/// Run: dotnet run -c Release --project bench/LMCacheSharp.Benchmarks -- --filter '*EngineBenchmarks*'
/// </summary>
[MemoryDiagnoser]
[MedianColumn]
public class EngineBenchmarks
{
    private const int ChunkTokens = 256;
    private const int PromptTokens = 32768; // 128 chunks
    private const int ChunksMoved = 16; // 128 MiB per retrieve/store operation
    private static readonly KvFormat Format = new(1, 16384, 16384, KvDataType.F16, KvLayout.LayerKV); // 32 KiB/token: 8 MiB chunks

    private CacheEngine _engine = null!;
    private int[] _prompt = null!;
    private int[] _moved = null!;
    private ChunkHash[] _keys = null!;
    private NativeKv _kv = null!;
    private NativeKv _target = null!;

    [GlobalSetup]
    public void Setup()
    {
        var options = new LMCacheOptions { ChunkSize = ChunkTokens, MaxLocalCpuSize = 1 };
        _engine = CacheEngine.Create(options, new CacheNamespace("bench", Format));
        var random = new Random(1);
        _prompt = Enumerable.Range(0, PromptTokens).Select(_ => random.Next(32000)).ToArray();
        _moved = _prompt[..(ChunksMoved * ChunkTokens)];
        _keys = new ChunkHash[PromptTokens / ChunkTokens];
        _kv = new NativeKv(Format.PayloadLength(_moved.Length));
        _target = new NativeKv(Format.PayloadLength(_moved.Length));
        _engine.StoreAsync(_moved, _kv).AsTask().GetAwaiter().GetResult();
        // The rest of the prompt's keys are present as tiny stand-ins so lookup walks all 128 chunks.
        var keys = _engine.ComputeKeys(_prompt);
        foreach (var key in keys.Skip(ChunksMoved))
        {
            using var chunk = _engine.Pool.Rent(64);
            chunk.Key = key;
            _engine.Storage.Memory!.Put(chunk);
        }
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _engine.DisposeAsync().AsTask().GetAwaiter().GetResult();
        _kv.Dispose();
        _target.Dispose();
    }

    /// <summary>SHA-256 prefix chain over 32k tokens (128 chunks).</summary>
    [Benchmark]
    public int HashPrompt32k() => PrefixHasher.ComputeKeys(_engine.Namespace.Seed, _prompt, ChunkTokens, false, _keys);

    /// <summary>Hash + memory-tier prefix lookup of 32k tokens.</summary>
    [Benchmark]
    public int Lookup32k() => Sync(_engine.LookupAsync(_prompt));

    /// <summary>Baseline: copy the same 128 MiB once.</summary>
    [Benchmark(Baseline = true)]
    public void Memcpy128MiB() => _kv.CopyTo(_target);

    /// <summary>Retrieve 16 chunks of 8 MiB from the memory tier into the target buffer.</summary>
    [Benchmark]
    public int Retrieve128MiB() => Sync(_engine.RetrieveAsync(_moved, _target));

    /// <summary>Store 16 chunks of 8 MiB (copy + checksum) after clearing them from memory.</summary>
    [Benchmark]
    public int Store128MiB()
    {
        foreach (var key in _engine.ComputeKeys(_moved))
        {
            _engine.Storage.Memory!.Remove(key);
        }

        return Sync(_engine.StoreAsync(_moved, _kv));
    }

    // Memory-tier calls complete synchronously; reading the result directly keeps the measurement free of Task allocations.
    private static int Sync(ValueTask<int> task) => task.IsCompletedSuccessfully ? task.Result : task.AsTask().GetAwaiter().GetResult();

    /// <summary>KV of a fake engine in one native buffer, token-major; chunks are plain slices.</summary>
    private sealed unsafe class NativeKv : IKvSource, IKvSink, IDisposable
    {
        private readonly byte* _data;
        private readonly long _length;

        public NativeKv(long length)
        {
            _length = length;
            _data = (byte*)NativeMemory.AlignedAlloc((nuint)length, 4096);
            new Random(3).NextBytes(new Span<byte>(_data, (int)length));
        }

        public bool TryReadKv(int startToken, int tokenCount, Span<byte> destination)
        {
            new ReadOnlySpan<byte>(_data + Format.PayloadLength(startToken), destination.Length).CopyTo(destination);
            return true;
        }

        public bool TryWriteKv(int startToken, int tokenCount, ReadOnlySpan<byte> payload)
        {
            payload.CopyTo(new Span<byte>(_data + Format.PayloadLength(startToken), payload.Length));
            return true;
        }

        public void CopyTo(NativeKv other) => new ReadOnlySpan<byte>(_data, (int)_length).CopyTo(new Span<byte>(other._data, (int)_length));

        public void Dispose() => NativeMemory.AlignedFree(_data);
    }
}
