using System.Collections.Concurrent;
using System.Globalization;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using LMCacheSharp.Core.Codecs;
using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Benchmarks;

/// <summary>
/// Codec speed and size on real KV: the prompt chunks of a llama.cpp model in the connector's portable layout (plain f16
/// K/V rows), from a generated model (8 x 512, MHA, flash attention on: 4 chunks of 4 MiB) and from stories260K (3 chunks of
/// 128 tokens; skipped when the model is absent). Encode and decode of all chunks per operation; the Ratio column is raw /
/// encoded bytes, the GB/s column raw bytes over the median time. The lossy codecs' effect on generation is measured by
/// <see cref="CodecGenerationBenchmarks"/>.
/// Run: dotnet run -c Release --project bench/LMCacheSharp.Benchmarks -- --filter '*CodecBenchmarks*'
/// </summary>
[MemoryDiagnoser]
[MedianColumn]
[Config(typeof(CodecColumns))]
[SimpleJob(launchCount: 1, warmupCount: 2, iterationCount: 9)]
public class CodecBenchmarks
{
    private IKvCodec _codec = null!;
    private KvFormat _format;
    private byte[][] _raw = [];
    private byte[][] _encoded = [];
    private int[] _encodedLengths = [];
    private byte[] _decoded = [];

    [ParamsSource(nameof(Models))]
    public string Model { get; set; } = "";

    [Params("lz4", "zstd", "int8", "fp8")]
    public string Codec { get; set; } = "";

    public static IEnumerable<string> Models => CodecKvModel.Names;

    [GlobalSetup]
    public void Setup()
    {
        _codec = KvCodecs.Find(Codec)!;
        var kv = RealKv.Get(Model);
        if (kv is null)
        {
            return; // stories260K absent: the benchmarks below do nothing and the Ratio column says why
        }

        (_format, _raw) = kv.Value;
        _encoded = [.. _raw.Select(r => new byte[_codec.MaxEncodedLength(r.Length, _format)])];
        _encodedLengths = new int[_raw.Length];
        _decoded = new byte[_raw.Max(r => r.Length)];
        Encode();
        Decode();
        for (var i = 0; i < _raw.Length; i++)
        {
            if (_codec.IsLossless && !_decoded.AsSpan(0, _raw[i].Length).SequenceEqual(_raw[i]) && i == _raw.Length - 1)
            {
                throw new InvalidOperationException($"{Codec} did not round-trip exactly");
            }
        }
    }

    [Benchmark(Description = "encode all chunks")]
    public int Encode()
    {
        var total = 0;
        for (var i = 0; i < _raw.Length; i++)
        {
            total += _encodedLengths[i] = _codec.Encode(_raw[i], _format, _encoded[i]);
        }

        return total;
    }

    [Benchmark(Description = "decode all chunks")]
    public int Decode()
    {
        var ok = 0;
        for (var i = 0; i < _raw.Length; i++)
        {
            ok += _codec.TryDecode(_encoded[i].AsSpan(0, _encodedLengths[i]), _format, _decoded.AsSpan(0, _raw[i].Length)) ? 1 : 0;
        }

        return ok == _raw.Length ? ok : throw new InvalidOperationException($"{Codec}: a chunk did not decode");
    }
}

/// <summary>The real KV of each model, computed once per process (the host computes it too, for the columns).</summary>
internal static class RealKv
{
    private static readonly ConcurrentDictionary<string, Lazy<(KvFormat Format, byte[][] Chunks)?>> Cache = new();

    public static (KvFormat Format, byte[][] Chunks)? Get(string model) => Cache.GetOrAdd(model, m => new(() =>
    {
        using var lm = CodecKvModel.Open(m, out _);
        return lm?.PortableChunks();
    })).Value;
}

/// <summary>Ratio (raw / encoded bytes of all chunks) and GB/s (raw bytes / median time) for <see cref="CodecBenchmarks"/>.</summary>
internal sealed class CodecColumns : ManualConfig
{
    public CodecColumns()
    {
        AddColumn(new RatioColumn(), new ThroughputColumn());
    }

    private static string Param(BenchmarkCase benchmarkCase, string name) => (string)benchmarkCase.Parameters[name];

    private static long RawBytes(BenchmarkCase benchmarkCase) => RealKv.Get(Param(benchmarkCase, "Model"))?.Chunks.Sum(c => (long)c.Length) ?? 0;

    private sealed class RatioColumn : IColumn
    {
        public string Id => "CodecRatio";

        public string ColumnName => "Ratio";

        public bool AlwaysShow => true;

        public ColumnCategory Category => ColumnCategory.Custom;

        public int PriorityInCategory => 0;

        public bool IsNumeric => true;

        public UnitType UnitType => UnitType.Dimensionless;

        public string Legend => "raw bytes / encoded bytes over all chunks";

        public string GetValue(Summary summary, BenchmarkCase benchmarkCase)
        {
            var kv = RealKv.Get(Param(benchmarkCase, "Model"));
            if (kv is null)
            {
                return "model absent";
            }

            var (format, chunks) = kv.Value;
            var codec = KvCodecs.Find(Param(benchmarkCase, "Codec"))!;
            long raw = 0, encoded = 0;
            foreach (var chunk in chunks)
            {
                var buffer = new byte[codec.MaxEncodedLength(chunk.Length, format)];
                raw += chunk.Length;
                encoded += codec.Encode(chunk, format, buffer);
            }

            return ((double)raw / encoded).ToString("F3", CultureInfo.InvariantCulture);
        }

        public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style) => GetValue(summary, benchmarkCase);

        public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;

        public bool IsAvailable(Summary summary) => true;
    }

    private sealed class ThroughputColumn : IColumn
    {
        public string Id => "CodecThroughput";

        public string ColumnName => "GB/s";

        public bool AlwaysShow => true;

        public ColumnCategory Category => ColumnCategory.Custom;

        public int PriorityInCategory => 1;

        public bool IsNumeric => true;

        public UnitType UnitType => UnitType.Dimensionless;

        public string Legend => "raw KV bytes / median time (10^9 B/s)";

        public string GetValue(Summary summary, BenchmarkCase benchmarkCase)
        {
            var report = summary[benchmarkCase];
            var median = report?.ResultStatistics?.Median;
            var raw = RawBytes(benchmarkCase);
            return median is > 0 && raw > 0 ? (raw / median.Value).ToString("F2", CultureInfo.InvariantCulture) : "-";
        }

        public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style) => GetValue(summary, benchmarkCase);

        public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;

        public bool IsAvailable(Summary summary) => true;
    }
}
