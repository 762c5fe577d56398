using System.CommandLine;
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

namespace LMCacheSharp.Cli.Commands;

/// <summary>
/// <c>lmcache bench ttft</c>: time to first token of a prompt whose first N tokens are cached ("warm": restore N tokens,
/// decode 1) against the same prompt computed from scratch ("cold"), with llama.cpp's own restore of the same N tokens
/// (<c>llama_state_seq_set_data</c> of a prepared blob) and one decode step measured in the same run, so the cache's
/// overhead reads as a ratio. Also times storing the prompt's chunks (done after the first token) against the cold TTFT.
/// </summary>
internal static class BenchTtftCommand
{
    private static readonly JsonSerializerOptions JsonOptions = new() { WriteIndented = true };

    private const string StoriesSha256 = "270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d";

    public static Command Create()
    {
        var model = new Option<string[]>("--model") { Description = "GGUF model(s). Default: the generated bench model (~222M, q8_0; generated if absent) and ../shared/models/stories260K.gguf.", AllowMultipleArgumentsPerToken = true };
        var tokens = new Option<string>("--tokens") { Description = "Cached prompt lengths (each prompt has one more, uncached token).", DefaultValueFactory = _ => "512,1024,2048,4096,8192" };
        var rounds = new Option<int>("--rounds") { Description = "Rounds of the warm, raw-restore and decode measurements (median reported).", DefaultValueFactory = _ => 5 };
        var coldRounds = new Option<int>("--cold-rounds") { Description = "Rounds of the cold prefill (median reported).", DefaultValueFactory = _ => 1 };
        var chunk = new Option<int>("--chunk-size") { Description = "Tokens per chunk.", DefaultValueFactory = _ => 256 };
        var layout = new Option<string>("--layout") { Description = "Chunk layout: stateblob, portable or both.", DefaultValueFactory = _ => "both" };
        var fa = new Option<string>("--flash-attention") { Description = "on, off or auto (on for generated models, off for head size < 32).", DefaultValueFactory = _ => "auto" };
        var threads = new Option<int>("--threads") { Description = "Compute threads.", DefaultValueFactory = _ => Environment.ProcessorCount };
        var output = new Option<string>("--out") { Description = "Folder for ttft.json, ttft.csv and ttft.png.", DefaultValueFactory = _ => Path.Combine("bench-results", "ttft") };
        var command = new Command("ttft", "Time to first token, cold vs cached prefix, next to llama.cpp's raw restore and one decode step.")
        {
            model, tokens, rounds, coldRounds, chunk, layout, fa, threads, output,
        };
        var llama = new LlamaNativeOptions();
        llama.AddTo(command);
        command.SetAction(async (result, ct) =>
        {
            int[] lengths;
            try
            {
                lengths = [.. result.GetValue(tokens)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                    .Select(t => int.Parse(t, CultureInfo.InvariantCulture))];
            }
            catch (FormatException)
            {
                await Console.Error.WriteLineAsync("--tokens must be a comma-separated list of integers, e.g. 512,1024,2048");
                return 2;
            }

            var layouts = result.GetValue(layout)!.ToLowerInvariant() switch
            {
                "stateblob" => [LlamaChunkLayout.StateBlob],
                "portable" => [LlamaChunkLayout.Portable],
                "both" => new[] { LlamaChunkLayout.StateBlob, LlamaChunkLayout.Portable },
                _ => null,
            };
            var faMode = result.GetValue(fa)!.ToLowerInvariant();
            var chunkSize = result.GetValue(chunk);
            if (layouts is null || faMode is not ("on" or "off" or "auto") || lengths.Length == 0 || lengths.Any(n => n < chunkSize) ||
                result.GetValue(rounds) < 1 || result.GetValue(coldRounds) < 1 || chunkSize < 1)
            {
                await Console.Error.WriteLineAsync("bad arguments: --layout stateblob|portable|both, --flash-attention on|off|auto, every --tokens >= --chunk-size, rounds >= 1");
                return 2;
            }

            if (llama.LibraryErrors(result).Concat(llama.GpuLayersErrors(result)).ToList() is { Count: > 0 } problems)
            {
                await Console.Error.WriteLineAsync(string.Join(Environment.NewLine, problems));
                return 2;
            }

            llama.Apply(result);
            var settings = new Settings(lengths, result.GetValue(rounds), result.GetValue(coldRounds), chunkSize, layouts, faMode,
                result.GetValue(threads), Path.GetFullPath(result.GetValue(output)!), result.GetValue(llama.GpuLayers));
            return await RunAsync(result.GetValue(model), settings, ct);
        });
        return command;
    }

    private static async Task<int> RunAsync(string[]? models, Settings s, CancellationToken ct)
    {
        NativeLogConfig.llama_log_set((level, message) =>
        {
            if (level == LLamaLogLevel.Error)
            {
                Console.Error.Write(message);
            }
        });
        var paths = new List<string>();
        if (models is { Length: > 0 })
        {
            foreach (var m in models)
            {
                if (!File.Exists(m))
                {
                    await Console.Error.WriteLineAsync($"model not found: {m}");
                    return 2;
                }

                paths.Add(Path.GetFullPath(m));
            }
        }
        else
        {
            paths.Add(EnsureBenchModel(ct));
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

        var rows = new List<Row>();
        foreach (var path in paths)
        {
            rows.AddRange(await MeasureModelAsync(path, s, ct));
        }

        Directory.CreateDirectory(s.Output);
        await File.WriteAllTextAsync(Path.Combine(s.Output, "ttft.json"), JsonSerializer.Serialize(rows, JsonOptions), ct);
        await File.WriteAllTextAsync(Path.Combine(s.Output, "ttft.csv"), ToCsv(rows), ct);
        Chart(Path.Combine(s.Output, "ttft.png"), rows);
        Console.WriteLine();
        PrintTable(rows);
        Console.WriteLine($"\nwrote {Path.Combine(s.Output, "ttft.json")}, ttft.csv and ttft.png");
        return 0;
    }

    private static async Task<List<Row>> MeasureModelAsync(string path, Settings s, CancellationToken ct)
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
        var rows = new List<Row>();
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
            var progress = ProgressLine.ForStderr();
            foreach (var n in s.Lengths)
            {
                ct.ThrowIfCancellationRequested();
                progress.Report(name, (double)Array.IndexOf(s.Lengths, n) / s.Lengths.Length, $"{n} tokens");
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
                Console.WriteLine($"  {n,6} tokens: cold {Median(cold),9:F1} ms | raw set_data {raw.Restore,7:F2} ms + decode {raw.Decode,7:F2} ms");

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

                    var row = new Row(name, cache.Layout.ToString(), flashAttention, n, kvPerToken, Median(cold), store, Median(warm), Median(restore),
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
            return (Median(restore), Median(decode));
        }
        finally
        {
            NativeMemory.AlignedFree(blob);
        }
    }

    private static string EnsureBenchModel(CancellationToken ct)
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
            GenModelCommand.Write(spec, path, ct);
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

    private static double Median(List<double> values)
    {
        values.Sort();
        return values.Count % 2 == 1 ? values[values.Count / 2] : (values[(values.Count / 2) - 1] + values[values.Count / 2]) / 2;
    }

    private static void PrintTable(List<Row> rows)
    {
        Console.WriteLine("| model | layout | FA | cached tokens | cold TTFT ms | warm TTFT ms | TTFT cut | raw set_data ms | decode step ms | warm / (raw + decode) | restore vs set_data speed | store ms | store / cold TTFT |");
        Console.WriteLine("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var r in rows)
        {
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {r.Model} | {r.Layout} | {(r.FlashAttention ? "on" : "off")} | {r.CachedTokens} | {r.ColdTtftMs:F1} | {r.WarmTtftMs:F2} | {r.Speedup:F0}x | {r.RawRestoreMs:F2} | {r.DecodeStepMs:F2} | {r.WarmVsRawPlusDecode:F2} | {r.RestoreVsRawPercent:F0}% | {r.StoreMs:F2} | {r.StorePercentOfCold:F2}% |"));
        }
    }

    private static string ToCsv(List<Row> rows)
    {
        var sb = new StringBuilder("model,layout,flash_attention,tokens,kv_bytes_per_token,cached_tokens,cold_ttft_ms,warm_ttft_ms,restore_ms,raw_restore_ms,decode_step_ms,store_ms,speedup,warm_vs_raw_plus_decode,restore_vs_raw_percent,store_percent_of_cold\n");
        foreach (var r in rows)
        {
            sb.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"{r.Model},{r.Layout},{r.FlashAttention},{r.Tokens},{r.KvBytesPerToken},{r.CachedTokens},{r.ColdTtftMs:F3},{r.WarmTtftMs:F3},{r.RestoreMs:F3},{r.RawRestoreMs:F3},{r.DecodeStepMs:F3},{r.StoreMs:F3},{r.Speedup:F2},{r.WarmVsRawPlusDecode:F3},{r.RestoreVsRawPercent:F1},{r.StorePercentOfCold:F3}"));
        }

        return sb.ToString();
    }

    private static void Chart(string path, List<Row> rows)
    {
        var plot = new ScottPlot.Plot();
        var palette = new ScottPlot.Palettes.Category10();
        var color = 0;
        foreach (var group in rows.GroupBy(r => r.Model))
        {
            var first = group.Where(r => r.Layout == group.First().Layout).OrderBy(r => r.Tokens).ToList();
            double[] xs = [.. first.Select(r => (double)r.Tokens)];
            void Line(string label, Func<Row, double> value, ScottPlot.LinePattern pattern)
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

    private sealed record Settings(int[] Lengths, int Rounds, int ColdRounds, int ChunkSize, LlamaChunkLayout[] Layouts, string FlashAttention,
        int Threads, string Output, int GpuLayers);

    /// <summary>One measurement (medians). Public for JSON.</summary>
    internal sealed record Row(string Model, string Layout, bool FlashAttention, int Tokens, long KvBytesPerToken, double ColdTtftMs, double StoreMs,
        double WarmTtftMs, double RestoreMs, double RawRestoreMs, double DecodeStepMs, int CachedTokens)
    {
        public double Speedup => ColdTtftMs / WarmTtftMs;

        public double WarmVsRawPlusDecode => WarmTtftMs / (RawRestoreMs + DecodeStepMs);

        public double RestoreVsRawPercent => 100 * RawRestoreMs / RestoreMs;

        public double StorePercentOfCold => 100 * StoreMs / ColdTtftMs;
    }
}
