using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using LLama;
using LLama.Native;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.LlamaCpp;
using LMCacheSharp.LlamaCpp.Gguf;

namespace LMCacheSharp.Bench;

/// <summary>Settings of <c>lmcache bench ttft</c>.</summary>
public sealed record TtftBenchSettings
{
    /// <summary>GGUF models; empty: the generated bench model (~222M, q8_0; generated if absent) and ../shared/models/stories260K.gguf.</summary>
    public IReadOnlyList<string> Models { get; init; } = [];

    /// <summary>Cached prompt lengths in tokens (each prompt has one more, uncached token); each at least <see cref="ChunkSize"/>.</summary>
    public IReadOnlyList<int> Lengths { get; init; } = [512, 1024, 2048, 4096, 8192];

    /// <summary>Rounds of the warm, raw-restore and decode measurements (median reported). Default 5; 1..1000.</summary>
    public int Rounds { get; init; } = 5;

    /// <summary>Rounds of the cold prefill (median reported). Default 1; 1..1000.</summary>
    public int ColdRounds { get; init; } = 1;

    /// <summary>Tokens per chunk. Default 256; 1..65536.</summary>
    public int ChunkSize { get; init; } = 256;

    /// <summary>Chunk layouts measured. Default both.</summary>
    public IReadOnlyList<LlamaChunkLayout> Layouts { get; init; } = [LlamaChunkLayout.StateBlob, LlamaChunkLayout.Portable];

    /// <summary>on, off or auto (on for head size &gt;= 32). Default auto.</summary>
    public string FlashAttention { get; init; } = "auto";

    /// <summary>Compute threads. Default: the processor count; 1..1024.</summary>
    public int Threads { get; init; } = Environment.ProcessorCount;

    /// <summary>Model layers offloaded to the GPU. Default 0.</summary>
    public int GpuLayers { get; init; }

    /// <summary>Folder for ttft.json, ttft.csv and ttft.png.</summary>
    public string Output { get; init; } = Path.Combine("bench-results", "ttft");

    /// <summary>Every problem, each naming its flag; empty when valid.</summary>
    public IReadOnlyList<string> GetErrors()
    {
        var errors = new List<string>();
        if (Lengths.Count == 0 || Lengths.Any(n => n < ChunkSize || n > 1 << 20))
        {
            errors.Add($"--tokens: every length must be --chunk-size ({ChunkSize})..1048576, got '{string.Join(',', Lengths)}'");
        }

        if (Rounds is < 1 or > 1000)
        {
            errors.Add($"--rounds: must be 1..1000, got {Rounds}");
        }

        if (ColdRounds is < 1 or > 1000)
        {
            errors.Add($"--cold-rounds: must be 1..1000, got {ColdRounds}");
        }

        if (ChunkSize is < 1 or > 65536)
        {
            errors.Add($"--chunk-size: must be 1..65536, got {ChunkSize}");
        }

        if (Layouts.Count == 0)
        {
            errors.Add("--layout: must be stateblob, portable or both");
        }

        if (FlashAttention is not ("on" or "off" or "auto"))
        {
            errors.Add($"--flash-attention: must be on, off or auto, got '{FlashAttention}'");
        }

        if (Threads is < 1 or > 1024)
        {
            errors.Add($"--threads: must be 1..1024, got {Threads}");
        }

        errors.AddRange(Models.Where(m => !File.Exists(m)).Select(m => $"--model: file not found: '{m}'"));
        return errors;
    }

    /// <summary>Lengths from a comma list ("512,1024"); null (and a problem) when one is not an integer.</summary>
    public static int[]? ParseLengths(string text, ICollection<string> problems)
    {
        ArgumentNullException.ThrowIfNull(text);
        ArgumentNullException.ThrowIfNull(problems);
        var parts = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var lengths = new int[parts.Length];
        for (var i = 0; i < parts.Length; i++)
        {
            if (!int.TryParse(parts[i], NumberStyles.Integer, CultureInfo.InvariantCulture, out lengths[i]))
            {
                problems.Add($"--tokens: takes a comma-separated list of integers, e.g. 512,1024,2048; got '{text}'");
                return null;
            }
        }

        return lengths;
    }

    /// <summary>Layouts from stateblob, portable or both (any case); null (and a problem) for anything else.</summary>
    public static LlamaChunkLayout[]? ParseLayouts(string text, ICollection<string> problems)
    {
        ArgumentNullException.ThrowIfNull(text);
        ArgumentNullException.ThrowIfNull(problems);
        LlamaChunkLayout[]? layouts = text.ToLowerInvariant() switch
        {
            "stateblob" => [LlamaChunkLayout.StateBlob],
            "portable" => [LlamaChunkLayout.Portable],
            "both" => [LlamaChunkLayout.StateBlob, LlamaChunkLayout.Portable],
            _ => null,
        };
        if (layouts is null)
        {
            problems.Add($"--layout: must be stateblob, portable or both, got '{text}'");
        }

        return layouts;
    }
}

/// <summary>One measurement of <c>lmcache bench ttft</c> (medians), a row of its table, CSV and JSON.</summary>
/// <param name="Model">The model's file name.</param>
/// <param name="Layout">The chunk layout.</param>
/// <param name="FlashAttention">Whether flash attention was on.</param>
/// <param name="Tokens">Cached prompt tokens.</param>
/// <param name="KvBytesPerToken">KV bytes per token.</param>
/// <param name="ColdTtftMs">Time to first token computed from scratch.</param>
/// <param name="StoreMs">Storing the prompt's chunks.</param>
/// <param name="WarmTtftMs">Time to first token with the prefix cached.</param>
/// <param name="RestoreMs">Of it, restoring the cached tokens.</param>
/// <param name="RawRestoreMs">llama.cpp's own restore of the same tokens (llama_state_seq_set_data of a prepared blob).</param>
/// <param name="DecodeStepMs">One decode step after it.</param>
/// <param name="CachedTokens">Tokens the warm request found cached.</param>
public sealed record TtftRow(string Model, string Layout, bool FlashAttention, int Tokens, long KvBytesPerToken, double ColdTtftMs, double StoreMs,
    double WarmTtftMs, double RestoreMs, double RawRestoreMs, double DecodeStepMs, int CachedTokens)
{
    /// <summary>Cold over warm TTFT.</summary>
    public double Speedup => ColdTtftMs / WarmTtftMs;

    /// <summary>Warm TTFT over llama.cpp's raw restore plus one decode step.</summary>
    public double WarmVsRawPlusDecode => WarmTtftMs / (RawRestoreMs + DecodeStepMs);

    /// <summary>The cache's restore speed in percent of llama.cpp's raw restore.</summary>
    public double RestoreVsRawPercent => 100 * RawRestoreMs / RestoreMs;

    /// <summary>Storing in percent of the cold TTFT.</summary>
    public double StorePercentOfCold => 100 * StoreMs / ColdTtftMs;
}

/// <summary>
/// <c>lmcache bench ttft</c>: time to first token of a prompt whose first N tokens are cached ("warm": restore N tokens,
/// decode 1) against the same prompt computed from scratch ("cold"), with llama.cpp's own restore of the same N tokens
/// (<c>llama_state_seq_set_data</c> of a prepared blob) and one decode step measured in the same run, so the cache's
/// overhead reads as a ratio. Also times storing the prompt's chunks (done after the first token) against the cold TTFT.
/// Prints its progress and table on the console and writes ttft.json, ttft.csv and ttft.png.
/// </summary>
public static class TtftBench
{
    private static readonly JsonSerializerOptions JsonOptions = new() { WriteIndented = true };

    private const string StoriesSha256 = "270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d";

    /// <summary>Runs the bench (llama.cpp's library chosen already) and writes its files; returns the rows.</summary>
    /// <exception cref="ArgumentException">Invalid <paramref name="settings"/>.</exception>
    public static async Task<IReadOnlyList<TtftRow>> RunAsync(TtftBenchSettings settings, IProgressLine progress, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(settings);
        ArgumentNullException.ThrowIfNull(progress);
        if (settings.GetErrors() is { Count: > 0 } errors)
        {
            throw new ArgumentException(string.Join("; ", errors), nameof(settings));
        }

        var s = settings;
        NativeLogConfig.llama_log_set((level, message) =>
        {
            if (level == LLamaLogLevel.Error)
            {
                Console.Error.Write(message);
            }
        });
        var paths = new List<string>();
        if (s.Models.Count > 0)
        {
            paths.AddRange(s.Models.Select(Path.GetFullPath));
        }
        else
        {
            paths.Add(EnsureBenchModel(progress, ct));
            var stories = FindStories(out var why);
            if (stories is null)
            {
                Console.WriteLine($"skipping stories260K: {why}");
            }
            else
            {
                paths.Add(stories);
            }
        }

        var rows = new List<TtftRow>();
        foreach (var path in paths)
        {
            rows.AddRange(await MeasureModelAsync(path, s, progress, ct));
        }

        var output = Path.GetFullPath(s.Output);
        await WriteAsync(output, rows, ct);
        Console.WriteLine();
        Console.Write(Table(rows));
        Console.WriteLine($"\nwrote {Path.Combine(output, "ttft.json")}, ttft.csv and ttft.png");
        return rows;
    }

    /// <summary>Writes ttft.json, ttft.csv and ttft.png of <paramref name="rows"/> into <paramref name="folder"/> (created when absent).</summary>
    internal static async Task WriteAsync(string folder, IReadOnlyList<TtftRow> rows, CancellationToken ct)
    {
        Directory.CreateDirectory(folder);
        await File.WriteAllTextAsync(Path.Combine(folder, "ttft.json"), JsonSerializer.Serialize(rows, JsonOptions), ct);
        await File.WriteAllTextAsync(Path.Combine(folder, "ttft.csv"), ToCsv(rows), ct);
        Chart(Path.Combine(folder, "ttft.png"), rows);
    }

    private static async Task<List<TtftRow>> MeasureModelAsync(string path, TtftBenchSettings s, IProgressLine progress, CancellationToken ct)
    {
        var name = Path.GetFileNameWithoutExtension(path);
        var fingerprint = GgufFingerprint.Get(path, null, null, ct);
        var maxTokens = s.Lengths.Max();
        var contextSize = (uint)((maxTokens + 1 + s.ChunkSize + 64 + 255) / 256 * 256);
        bool flashAttention;
        var probe = LlamaContextSettings.Create(path, 256, false, threads: s.Threads, gpuLayers: s.GpuLayers);
        using (var w = LLamaWeights.LoadFromFile(probe))
        {
            var headSize = w.NativeHandle.EmbeddingSize / Math.Max(1, w.NativeHandle.HeadCount);
            flashAttention = s.FlashAttention switch { "on" => true, "off" => false, _ => headSize >= 32 };
        }

        var parameters = LlamaContextSettings.Create(path, contextSize, flashAttention, sequences: 1, threads: s.Threads, gpuLayers: s.GpuLayers);
        using var weights = LLamaWeights.LoadFromFile(parameters);
        using var context = weights.CreateContext(parameters);
        var handle = context.NativeHandle;
        var seq = LLamaSeqId.Zero;
        var caches = new List<LlamaKvCache>();
        var rows = new List<TtftRow>();
        try
        {
            foreach (var layout in s.Layouts)
            {
                var probeShape = LlamaKvCache.TryProbeShape(handle, (LLamaSeqId)1, out var shape, out var reason)
                    ? shape : throw new InvalidOperationException("KV cache unusable: " + reason);
                var capacity = (2.0 * maxTokens * probeShape.ToFormat(layout).BytesPerToken / (1L << 30)) + 0.25;
                caches.Add(LlamaKvCache.CreateWithEngine(handle, fingerprint,
                    new LMCacheOptions { ChunkSize = s.ChunkSize, MaxLocalCpuSize = capacity }, new LlamaKvCacheOptions { Layout = layout }));
            }

            var kvPerToken = caches[0].Shape.BytesPerToken;
            Console.WriteLine($"{name}: {weights.NativeHandle.ParameterCount / 1e6:F1}M params, FA {(flashAttention ? "on" : "off")}, KV {kvPerToken} B/token, context {contextSize}, {s.Threads} threads");
            var random = new Random(1234);
            var vocab = weights.NativeHandle.Vocab.Count;
            var firstPiece = vocab > 300 ? 259 : 3;
            foreach (var (index, n) in s.Lengths.Index())
            {
                ct.ThrowIfCancellationRequested();
                progress.Report(name, (double)index / s.Lengths.Count, $"{n} tokens");
                var prompt = new int[n + 1];
                prompt[0] = weights.NativeHandle.Vocab.BOS is { } bos ? (int)bos : firstPiece;
                for (var i = 1; i < prompt.Length; i++)
                {
                    prompt[i] = random.Next(firstPiece, vocab);
                }

                // Cold: the whole prompt computed, no cache.
                var plain = new CachedGenerator(handle, null, seq);
                var cold = new List<double>();
                for (var r = 0; r < s.ColdRounds; r++)
                {
                    cold.Add((await plain.PrefillAsync(prompt, cancellationToken: ct)).TimeToFirstToken.TotalMilliseconds);
                }

                // Store (what a request does after its first token), timed per layout on the cold run's sequence.
                var stores = new List<double>();
                foreach (var cache in caches)
                {
                    await cache.Engine.Storage.ClearAsync(ct);
                    var storeStart = Stopwatch.GetTimestamp();
                    var stored = await cache.StoreAsync(seq, prompt, 0, null, ct);
                    stores.Add(Stopwatch.GetElapsedTime(storeStart).TotalMilliseconds);
                    if (stored != n / s.ChunkSize * s.ChunkSize)
                    {
                        throw new InvalidOperationException($"stored {stored} tokens, expected {n / s.ChunkSize * s.ChunkSize}");
                    }
                }

                // Raw llama.cpp: set_data of the first n tokens from a prepared blob, then one decode step.
                handle.MemorySequenceRemove(seq, n, -1);
                var raw = MeasureRaw(handle, seq, prompt, n, s.Rounds);
                progress.Clear();
                Console.WriteLine($"  {n,6} tokens: cold {Statistics.Median(cold),9:F1} ms | raw set_data {raw.Restore,7:F2} ms + decode {raw.Decode,7:F2} ms");

                for (var c = 0; c < caches.Count; c++)
                {
                    var cache = caches[c];
                    var store = stores[c];
                    var warm = new List<double>();
                    var restore = new List<double>();
                    var cached = 0;
                    var generator = new CachedGenerator(handle, cache, seq) { StoreAfterFirstToken = false };
                    for (var r = 0; r < s.Rounds + 1; r++)
                    {
                        var hit = await generator.PrefillAsync(prompt, cancellationToken: ct);
                        cached = hit.CachedTokens;
                        if (r > 0)
                        {
                            warm.Add(hit.TimeToFirstToken.TotalMilliseconds);
                            restore.Add(hit.RestoreTime.TotalMilliseconds);
                        }
                    }

                    var row = new TtftRow(name, cache.Layout.ToString(), flashAttention, n, kvPerToken, Statistics.Median(cold), store, Statistics.Median(warm), Statistics.Median(restore),
                        raw.Restore, raw.Decode, cached);
                    rows.Add(row);
                    Console.WriteLine($"          {row.Layout,-9} warm {row.WarmTtftMs,8:F2} ms (restore {row.RestoreMs,7:F2} ms, {row.RestoreVsRawPercent,4:F0}% of set_data speed) | {row.WarmVsRawPlusDecode:F2}x (raw+decode) | store {store,7:F2} ms = {row.StorePercentOfCold:F1}% of cold | cut {row.Speedup:F0}x");
                    handle.MemorySequenceRemove(seq, -1, -1);
                }
            }
        }
        finally
        {
            foreach (var cache in caches)
            {
                await cache.DisposeAsync();
            }
        }

        return rows;
    }

    private static unsafe (double Restore, double Decode) MeasureRaw(SafeLLamaContextHandle handle, LLamaSeqId seq, int[] prompt, int n, int rounds)
    {
        var size = handle.GetStateSize(seq);
        var blob = (byte*)NativeMemory.AlignedAlloc(size, 4096);
        try
        {
            if (handle.GetState(blob, size, seq) != size)
            {
                throw new InvalidOperationException("llama_state_seq_get_data failed");
            }

            var restore = new List<double>();
            var decode = new List<double>();
            var batch = new LLamaBatch();
            for (var r = 0; r < rounds + 1; r++)
            {
                handle.MemorySequenceRemove(seq, -1, -1);
                var t0 = Stopwatch.GetTimestamp();
                if (handle.SetState(blob, size, seq) != size)
                {
                    throw new InvalidOperationException("llama_state_seq_set_data failed");
                }

                var t1 = Stopwatch.GetTimestamp();
                batch.Clear();
                batch.Add(prompt[n], n, seq, true);
                if (handle.Decode(batch) != DecodeResult.Ok)
                {
                    throw new InvalidOperationException("decode failed");
                }

                _ = handle.GetLogitsIth(0)[0];
                var t2 = Stopwatch.GetTimestamp();
                if (r > 0)
                {
                    restore.Add(Stopwatch.GetElapsedTime(t0, t1).TotalMilliseconds);
                    decode.Add(Stopwatch.GetElapsedTime(t1, t2).TotalMilliseconds);
                }
            }

            handle.MemorySequenceRemove(seq, -1, -1);
            return (Statistics.Median(restore), Statistics.Median(decode));
        }
        finally
        {
            NativeMemory.AlignedFree(blob);
        }
    }

    private static string EnsureBenchModel(IProgressLine progress, CancellationToken ct)
    {
        var home = Environment.GetEnvironmentVariable("LMCACHE_HOME");
        if (string.IsNullOrEmpty(home))
        {
            var data = Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData, Environment.SpecialFolderOption.Create);
            home = Path.Combine(string.IsNullOrEmpty(data) ? Path.GetTempPath() : data, "lmcachesharp");
        }

        var spec = LlamaModelSpec.FromPreset("bench", GgmlTensorType.Q8_0);
        var path = Path.Combine(home, "models", "lmcache-random-bench-q8_0.gguf");
        if (!File.Exists(path))
        {
            Console.WriteLine($"generating the bench model ({spec}) at {path}");
            GgufModelWriter.Write(spec, path, (done, total) =>
                progress.Report("writing", (double)done / Math.Max(total, 1), $"{done / 1048576.0:F1} / {total / 1048576.0:F1} MiB"), ct);
            progress.Clear();
        }

        return path;
    }

    private static string? FindStories(out string reason)
    {
        for (var dir = new DirectoryInfo(Environment.CurrentDirectory); dir is not null; dir = dir.Parent)
        {
            if (!File.Exists(Path.Combine(dir.FullName, "LMCacheSharp.slnx")))
            {
                continue;
            }

            var path = Path.GetFullPath(Path.Combine(dir.FullName, "..", "shared", "models", "stories260K.gguf"));
            if (!File.Exists(path))
            {
                reason = $"{path} not found";
                return null;
            }

            using var stream = File.OpenRead(path);
            var sha = Convert.ToHexStringLower(SHA256.HashData(stream));
            reason = sha == StoriesSha256 ? "" : $"{path} has sha256 {sha}, expected {StoriesSha256}";
            return sha == StoriesSha256 ? path : null;
        }

        reason = "run from inside the repository (LMCacheSharp.slnx not found above the current folder)";
        return null;
    }

    /// <summary>The Markdown table of <paramref name="rows"/>.</summary>
    internal static string Table(IReadOnlyList<TtftRow> rows)
    {
        var table = new StringBuilder();
        table.AppendLine("| model | layout | FA | cached tokens | cold TTFT ms | warm TTFT ms | TTFT cut | raw set_data ms | decode step ms | warm / (raw + decode) | restore vs set_data speed | store ms | store / cold TTFT |");
        table.AppendLine("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var r in rows)
        {
            table.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"| {r.Model} | {r.Layout} | {(r.FlashAttention ? "on" : "off")} | {r.CachedTokens} | {r.ColdTtftMs:F1} | {r.WarmTtftMs:F2} | {r.Speedup:F0}x | {r.RawRestoreMs:F2} | {r.DecodeStepMs:F2} | {r.WarmVsRawPlusDecode:F2} | {r.RestoreVsRawPercent:F0}% | {r.StoreMs:F2} | {r.StorePercentOfCold:F2}% |"));
        }

        return table.ToString();
    }

    /// <summary>The CSV of <paramref name="rows"/>: a header, then one line per row.</summary>
    internal static string ToCsv(IReadOnlyList<TtftRow> rows)
    {
        var sb = new StringBuilder("model,layout,flash_attention,tokens,kv_bytes_per_token,cached_tokens,cold_ttft_ms,warm_ttft_ms,restore_ms,raw_restore_ms,decode_step_ms,store_ms,speedup,warm_vs_raw_plus_decode,restore_vs_raw_percent,store_percent_of_cold\n");
        foreach (var r in rows)
        {
            sb.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"{r.Model},{r.Layout},{r.FlashAttention},{r.Tokens},{r.KvBytesPerToken},{r.CachedTokens},{r.ColdTtftMs:F3},{r.WarmTtftMs:F3},{r.RestoreMs:F3},{r.RawRestoreMs:F3},{r.DecodeStepMs:F3},{r.StoreMs:F3},{r.Speedup:F2},{r.WarmVsRawPlusDecode:F3},{r.RestoreVsRawPercent:F1},{r.StorePercentOfCold:F3}"));
        }

        return sb.ToString();
    }

    private static void Chart(string path, IReadOnlyList<TtftRow> rows)
    {
        var plot = new ScottPlot.Plot();
        var palette = new ScottPlot.Palettes.Category10();
        var color = 0;
        foreach (var group in rows.GroupBy(r => r.Model))
        {
            var first = group.Where(r => r.Layout == group.First().Layout).OrderBy(r => r.Tokens).ToList();
            double[] xs = [.. first.Select(r => (double)r.Tokens)];
            void Line(string label, Func<TtftRow, double> value, ScottPlot.LinePattern pattern)
            {
                var line = plot.Add.Scatter(xs, [.. first.Select(r => Math.Log10(Math.Max(value(r), 1e-3)))]);
                line.LegendText = $"{group.Key}: {label}";
                line.Color = palette.GetColor(color);
                line.LinePattern = pattern;
                line.LineWidth = 2;
            }

            Line("cold TTFT", r => r.ColdTtftMs, ScottPlot.LinePattern.Solid);
            Line($"warm TTFT ({first[0].Layout})", r => r.WarmTtftMs, ScottPlot.LinePattern.Dashed);
            Line("raw set_data + 1 decode", r => r.RawRestoreMs + r.DecodeStepMs, ScottPlot.LinePattern.Dotted);
            color++;
        }

        plot.Axes.Left.TickGenerator = new ScottPlot.TickGenerators.NumericAutomatic
        {
            IntegerTicksOnly = true,
            MinorTickGenerator = new ScottPlot.TickGenerators.LogMinorTickGenerator(),
            LabelFormatter = y => Math.Pow(10, y).ToString(y >= 0 ? "N0" : "G2", CultureInfo.InvariantCulture),
        };
        plot.Title("Time to first token: cold vs cached prefix (log scale)");
        plot.XLabel("cached prompt tokens");
        plot.YLabel("ms");
        plot.ShowLegend(ScottPlot.Alignment.UpperLeft);
        plot.SavePng(path, 1000, 600);
    }
}
