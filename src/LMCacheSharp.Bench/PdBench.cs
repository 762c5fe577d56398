using System.Diagnostics;
using System.Globalization;
using System.Net.Http.Json;
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace LMCacheSharp.Bench;

/// <summary>Settings of <c>lmcache bench pd</c>; each range is checked by <see cref="GetErrors"/>.</summary>
public sealed record PdBenchSettings
{
    /// <summary>The modes <see cref="Modes"/> may name.</summary>
    public static IReadOnlyList<string> KnownModes { get; } = ["colocated", "disaggregated"];

    /// <summary>GGUF served by both instances; null: ../shared/models/stories260K.gguf when present, else the generated default model.</summary>
    public string? Model { get; init; }

    /// <summary>llama.cpp threads of each of the two instances (the same total in both modes). Default 1; 1..256.</summary>
    public int Threads { get; init; } = 1;

    /// <summary>KV cells of each instance's context. Default 8192; 64..1048576.</summary>
    public int ContextSize { get; init; } = 8192;

    /// <summary>Decode streams kept running while the long prompts arrive. Default 2; 1..64.</summary>
    public int Streams { get; init; } = 2;

    /// <summary>Tokens each decode stream generates (ignore_eos) before the next one starts. Default 256; 2..4096.</summary>
    public int StreamTokens { get; init; } = 256;

    /// <summary>Long prompts sent while the streams run (each a new document: a cold prefill). Default 8; 1..10000.</summary>
    public int LongPrompts { get; init; } = 8;

    /// <summary>Words per long prompt's document. Default 900; 1..100000.</summary>
    public int LongWords { get; init; } = 900;

    /// <summary>Seconds between the arrivals of two long prompts (they may overlap). Default 1.5; 0..3600.</summary>
    public double IntervalSeconds { get; init; } = 1.5;

    /// <summary>Tokens each long prompt generates. Default 4; 1..4096.</summary>
    public int LongMaxTokens { get; init; } = 4;

    /// <summary>Runs of each mode, in rotated order, each on a fresh fleet. Default 2; 1..100.</summary>
    public int Repeats { get; init; } = 2;

    /// <summary>Modes measured: colocated (two instances of role both), disaggregated (one prefill, one decode, router --pd).</summary>
    public IReadOnlyList<string> Modes { get; init; } = KnownModes;

    /// <summary>Folder for pd.json, pd.csv and pd-summary.md. Default bench-results.</summary>
    public string Output { get; init; } = "bench-results";

    /// <summary>Every problem, each naming its flag.</summary>
    public IReadOnlyList<string> GetErrors()
    {
        var errors = new List<string>();
        SettingsChecks.Range(errors, "--threads", Threads, 1, 256);
        SettingsChecks.Range(errors, "--ctx-size", ContextSize, 64, 1 << 20);
        SettingsChecks.Range(errors, "--streams", Streams, 1, 64);
        SettingsChecks.Range(errors, "--stream-tokens", StreamTokens, 2, 4096);
        SettingsChecks.Range(errors, "--long-prompts", LongPrompts, 1, 10_000);
        SettingsChecks.Range(errors, "--long-words", LongWords, 1, 100_000);
        SettingsChecks.Range(errors, "--long-max-tokens", LongMaxTokens, 1, 4096);
        SettingsChecks.Range(errors, "--repeats", Repeats, 1, 100);
        if (!(IntervalSeconds is >= 0 and <= 3600))
        {
            errors.Add($"--interval: must be 0..3600 s, got {IntervalSeconds.ToString(CultureInfo.InvariantCulture)}");
        }

        if (Modes.Count == 0 || Modes.Any(m => !KnownModes.Contains(m)))
        {
            errors.Add($"--modes: takes a comma list of {string.Join(", ", KnownModes)}; got '{string.Join(',', Modes)}'");
        }

        if (Model is not null && !File.Exists(Model))
        {
            errors.Add($"--model: file not found: '{Model}'");
        }

        return errors;
    }

}

/// <summary>One mode's run: the table's row.</summary>
/// <param name="Mode">colocated or disaggregated.</param>
/// <param name="Run">The run's number (1..repeats).</param>
/// <param name="Gaps">Inter-token gaps measured over the decode streams.</param>
/// <param name="ItlP50Ms">Inter-token latency p50 of the decode streams.</param>
/// <param name="ItlP99Ms">Its p99.</param>
/// <param name="ItlP999Ms">Its p99.9.</param>
/// <param name="ItlMaxMs">The longest gap.</param>
/// <param name="Stalls">Gaps of at least <see cref="PdBench.StallMs"/>.</param>
/// <param name="StallSeconds">Their total length: the time running streams stood still.</param>
/// <param name="StreamTtftP50Ms">Time to first token of the decode streams (short prompts), p50.</param>
/// <param name="LongTtftP50Ms">Time to first token of the long prompts, p50.</param>
/// <param name="StreamTokensPerSecond">Tokens the decode streams received per second over the run.</param>
/// <param name="Seconds">The run's length (first long prompt sent to last answered).</param>
public sealed record PdRunSummary(string Mode, int Run, int Gaps, double ItlP50Ms, double ItlP99Ms, double ItlP999Ms, double ItlMaxMs, int Stalls,
    double StallSeconds, double StreamTtftP50Ms, double LongTtftP50Ms, double StreamTokensPerSecond, double Seconds);

/// <summary>
/// <c>lmcache bench pd</c>: what prefill/decode disaggregation buys on the same cores. Each mode gets a fresh fleet of child
/// processes: a cache server, two <c>serve</c> instances of <see cref="PdBenchSettings.Threads"/> threads each and the router;
/// colocated: both instances of role both behind <c>--policy least-loaded</c>; disaggregated: one <c>--role prefill</c> and
/// one <c>--role decode</c> behind <c>--pd</c>. <see cref="PdBenchSettings.Streams"/> greedy streams decode without end
/// (one after another) while long prompts arrive every <see cref="PdBenchSettings.IntervalSeconds"/>; it reports the
/// inter-token latency of the streams (p50, p95, p99, max) and the long prompts' TTFT. docs/fleet.md, section
/// "Prefill/decode disaggregation".
/// </summary>
public static class PdBench
{
    /// <summary>A gap of at least this many milliseconds counts as a stall of the stream.</summary>
    public const double StallMs = 50;

    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    /// <summary>Runs each mode <see cref="PdBenchSettings.Repeats"/> times in rotated order and writes the results.</summary>
    /// <exception cref="ArgumentException">Invalid <paramref name="settings"/>.</exception>
    /// <exception cref="BenchException">A member of a fleet did not start.</exception>
    public static async Task<IReadOnlyList<PdRunSummary>> RunAsync(PdBenchSettings settings, FleetLauncher launcher, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(settings);
        ArgumentNullException.ThrowIfNull(launcher);
        if (settings.GetErrors() is { Count: > 0 } errors)
        {
            throw new ArgumentException(string.Join("; ", errors), nameof(settings));
        }

        var model = settings.Model ?? FleetBench.FindStories260K();
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"lmcache bench pd: 2 instances x {settings.Threads} thread(s), model {model ?? "(generated default)"}; {settings.Streams} decode streams of " +
            $"{settings.StreamTokens} tokens, {settings.LongPrompts} long prompts of {settings.LongWords} words every {settings.IntervalSeconds} s; " +
            $"{settings.Repeats} run(s) per mode, rotated, a fresh fleet each"));
        var runs = new List<PdRunSummary>();
        var gaps = new List<(string Mode, int Run, double Ms)>();
        for (var run = 0; run < settings.Repeats; run++)
        {
            for (var k = 0; k < settings.Modes.Count; k++)
            {
                var mode = settings.Modes[(run + k) % settings.Modes.Count];
                var (summary, measured) = await RunOneAsync(settings, launcher, model, mode, run + 1, ct);
                runs.Add(summary);
                gaps.AddRange(measured.Select(g => (mode, run + 1, g)));
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"  {mode} run {run + 1}: ITL p50 {summary.ItlP50Ms:F1} ms, p99 {summary.ItlP99Ms:F1} ms, p99.9 {summary.ItlP999Ms:F1} ms, max {summary.ItlMaxMs:F1} ms, " +
                    $"{summary.Stalls} stalls >= {StallMs} ms ({summary.StallSeconds:F2} s); stream TTFT p50 {summary.StreamTtftP50Ms:F0} ms, long-prompt TTFT p50 " +
                    $"{summary.LongTtftP50Ms:F0} ms; {summary.StreamTokensPerSecond:F1} stream tokens/s"));
            }
        }

        Report(runs, gaps, settings.Output);
        return runs;
    }

    private static async Task<(PdRunSummary Summary, List<double> Gaps)> RunOneAsync(PdBenchSettings settings, FleetLauncher launcher, string? model, string mode,
        int run, CancellationToken ct)
    {
        var children = new List<FleetBench.ChildProcess>();
        try
        {
            var server = await FleetBench.ChildProcess.StartAsync("cache server", launcher, ["server", "--host", "127.0.0.1", "--port", "0", "--capacity", "2GB"], ct);
            children.Add(server);
            var serveArgs = new List<string>
            {
                "serve", "--host", "127.0.0.1", "--port", "0", "--threads", Text(settings.Threads), "--ctx-size", Text(settings.ContextSize),
                "--log-level", "warning", "--lmcache", "remote_url=" + server.Address,
            };
            if (model is not null)
            {
                serveArgs.AddRange(["--model", Path.GetFullPath(model)]);
            }

            string[] roles = mode == "disaggregated" ? ["prefill", "decode"] : ["both", "both"];
            var instances = await Task.WhenAll(roles.Select((role, i) => FleetBench.ChildProcess.StartAsync($"instance {i + 1} ({role})", launcher,
                [.. serveArgs, "--role", role], ct)));
            children.AddRange(instances);
            string[] routerArgs = ["router", "--host", "127.0.0.1", "--port", "0", "--policy", "least-loaded", "--log-level", "warning",
                "--health-interval", "0.5", "--instances", string.Join(',', instances.Select(s => s.Address))];
            var router = await FleetBench.ChildProcess.StartAsync("router", launcher, mode == "disaggregated" ? [.. routerArgs, "--pd"] : routerArgs, ct);
            children.Add(router);
            using var http = new HttpClient { BaseAddress = new Uri(router.Address), Timeout = TimeSpan.FromMinutes(30) };
            foreach (var instance in instances)
            {
                // One unmeasured request on each instance: model load, JIT and first-touch costs land in neither mode.
                using var direct = new HttpClient { BaseAddress = new Uri(instance.Address), Timeout = TimeSpan.FromMinutes(5) };
                using var warm = await direct.PostAsync("/v1/completions", JsonContent.Create(new JsonObject { ["prompt"] = "warm up", ["max_tokens"] = 2 }), ct);
                warm.EnsureSuccessStatusCode();
            }

            await FleetBench.WaitHealthyAsync(http, ct);
            await Task.Delay(TimeSpan.FromSeconds(1), ct); // the router has probed every instance's role
            return await MeasureAsync(http, settings, mode, run, ct);
        }
        finally
        {
            foreach (var child in Enumerable.Reverse(children))
            {
                await child.DisposeAsync();
            }
        }
    }

    /// <summary>
    /// The streams run until the last long prompt is answered; each records the gap between consecutive token events (its
    /// first token is a TTFT, not a gap). The long prompts go out on schedule, each a new document.
    /// </summary>
    private static async Task<(PdRunSummary, List<double>)> MeasureAsync(HttpClient http, PdBenchSettings settings, string mode, int run, CancellationToken ct)
    {
        using var done = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var gaps = new List<double>();
        var streamTtfts = new List<double>();
        var streamTokens = new StrongBox<long>(); // every token as it arrives, so the run counts exactly the tokens inside it
        var streams = Enumerable.Range(0, settings.Streams).Select(s => Task.Run(async () =>
        {
            for (var k = 0; !done.IsCancellationRequested; k++)
            {
                var body = new JsonObject
                {
                    ["prompt"] = $"Story {s}.{k}: once upon a time, in a small town by the sea,",
                    ["max_tokens"] = settings.StreamTokens,
                    ["ignore_eos"] = true,
                    ["temperature"] = 0,
                    ["stream"] = true,
                };
                var (mine, ttft) = await StreamGapsAsync(http, body, streamTokens, done.Token);
                lock (gaps)
                {
                    gaps.AddRange(mine);
                    if (ttft is { } t)
                    {
                        streamTtfts.Add(t);
                    }
                }

            }
        }, CancellationToken.None)).ToList();

        await Task.Delay(TimeSpan.FromSeconds(1), ct); // the streams are decoding before the first long prompt
        var start = Stopwatch.GetTimestamp();
        var tokensBefore = Interlocked.Read(ref streamTokens.Value);
        var longs = Enumerable.Range(0, settings.LongPrompts).Select(async j =>
        {
            await Task.Delay(TimeSpan.FromSeconds(settings.IntervalSeconds * j), ct);
            var body = new JsonObject
            {
                ["prompt"] = PeerWorkloads.Document(1000 * run + j, settings.LongWords) + "\n\n" + PeerWorkloads.Question(j, 0) + "\nAnswer:",
            };
            var (result, _) = await PeerWorkloads.SendAsync(http, mode, "pd", true, "/v1/completions", body, settings.LongMaxTokens, 0, ct);
            return result.TtftMs;
        }).ToList();
        var ttfts = await Task.WhenAll(longs);
        var seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
        var tokens = Interlocked.Read(ref streamTokens.Value) - tokensBefore;
        await done.CancelAsync();
        foreach (var stream in streams)
        {
            try
            {
                await stream;
            }
            catch (OperationCanceledException)
            {
                // the stream in progress was cut off: its gaps so far count
            }
        }

        List<double> measured;
        List<double> firsts;
        lock (gaps)
        {
            measured = [.. gaps];
            firsts = [.. streamTtfts];
        }

        var stalls = measured.Where(g => g >= StallMs).ToList();
        return (new PdRunSummary(mode, run, measured.Count, Statistics.Percentile(measured, 0.5), Statistics.Percentile(measured, 0.99),
            Statistics.Percentile(measured, 0.999), measured.Count == 0 ? 0 : measured.Max(), stalls.Count, stalls.Sum() / 1000,
            Statistics.Percentile(firsts, 0.5), Statistics.Percentile(ttfts, 0.5), tokens / seconds, seconds), measured);
    }

    /// <summary>
    /// One streamed request: the gaps between its token events (ms) and its time to first token (null when cut off before);
    /// each token received is counted in <paramref name="tokens"/> as it arrives. Cut off by <paramref name="ct"/>.
    /// </summary>
    private static async Task<(List<double> Gaps, double? Ttft)> StreamGapsAsync(HttpClient http, JsonObject body, StrongBox<long> tokens, CancellationToken ct)
    {
        var gaps = new List<double>();
        double? ttft = null;
        var start = Stopwatch.GetTimestamp();
        try
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = JsonContent.Create(body) };
            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, ct);
            response.EnsureSuccessStatusCode();
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(ct));
            long last = 0;
            while (await reader.ReadLineAsync(ct) is { } line)
            {
                if (!line.StartsWith("data: {", StringComparison.Ordinal) ||
                    JsonNode.Parse(line["data: ".Length..])?["choices"] is not JsonArray { Count: > 0 } choices ||
                    choices[0]?["text"] is not JsonValue text || text.GetValue<string>().Length == 0)
                {
                    continue; // the usage chunk, the finish chunk, [DONE]
                }

                var now = Stopwatch.GetTimestamp();
                if (last != 0)
                {
                    gaps.Add(Stopwatch.GetElapsedTime(last, now).TotalMilliseconds);
                }
                else
                {
                    ttft = Stopwatch.GetElapsedTime(start, now).TotalMilliseconds;
                }

                last = now;
                Interlocked.Increment(ref tokens.Value);
            }
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            // the run ended mid-stream
        }

        return (gaps, ttft);
    }

    internal static void Report(List<PdRunSummary> runs, List<(string Mode, int Run, double Ms)> gaps, string outputDir)
    {
        var table = Table(runs);
        Console.WriteLine();
        Console.Write(table);
        Directory.CreateDirectory(outputDir);
        File.WriteAllText(Path.Combine(outputDir, "pd-summary.md"), table);
        File.WriteAllText(Path.Combine(outputDir, "pd.json"), JsonSerializer.Serialize(new { summary = runs }, Indented));
        var csv = new StringBuilder("mode,run,itl_ms\n");
        foreach (var (mode, run, ms) in gaps)
        {
            csv.AppendLine(CultureInfo.InvariantCulture, $"{mode},{run},{ms:F3}");
        }

        File.WriteAllText(Path.Combine(outputDir, "pd.csv"), csv.ToString());
        Console.WriteLine($"results: {outputDir}/pd.json, pd.csv, pd-summary.md");
    }

    /// <summary>The table: one row per run, then per mode the medians over its runs, colocated -> disaggregated.</summary>
    public static string Table(IReadOnlyList<PdRunSummary> runs)
    {
        ArgumentNullException.ThrowIfNull(runs);
        var table = new StringBuilder();
        table.AppendLine(CultureInfo.InvariantCulture,
            $"| mode | run | gaps | ITL p50 ms | ITL p99 ms | ITL p99.9 ms | ITL max ms | stalls >= {StallMs} ms | stalled s | stream TTFT p50 ms | long-prompt TTFT p50 ms | stream tokens/s |");
        table.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var x in runs)
        {
            table.AppendLine(CultureInfo.InvariantCulture,
                $"| {x.Mode} | {x.Run} | {x.Gaps} | {x.ItlP50Ms:F1} | {x.ItlP99Ms:F1} | {x.ItlP999Ms:F1} | {x.ItlMaxMs:F1} | {x.Stalls} | {x.StallSeconds:F2} | " +
                $"{x.StreamTtftP50Ms:F0} | {x.LongTtftP50Ms:F0} | {x.StreamTokensPerSecond:F1} |");
        }

        var medians = runs.GroupBy(x => x.Mode).ToDictionary(g => g.Key, g => (
            P999: Statistics.Median(g.Select(x => x.ItlP999Ms)), Max: Statistics.Median(g.Select(x => x.ItlMaxMs)),
            Stalled: Statistics.Median(g.Select(x => x.StallSeconds)), StreamTtft: Statistics.Median(g.Select(x => x.StreamTtftP50Ms)),
            Ttft: Statistics.Median(g.Select(x => x.LongTtftP50Ms)), Tokens: Statistics.Median(g.Select(x => x.StreamTokensPerSecond))));
        if (medians.TryGetValue("colocated", out var co) && medians.TryGetValue("disaggregated", out var pd))
        {
            table.AppendLine();
            table.AppendLine(CultureInfo.InvariantCulture,
                $"medians over runs, colocated -> disaggregated: ITL p99.9 {co.P999:F1} -> {pd.P999:F1} ms, max {co.Max:F1} -> {pd.Max:F1} ms, " +
                $"streams stalled {co.Stalled:F2} -> {pd.Stalled:F2} s; stream TTFT p50 {co.StreamTtft:F0} -> {pd.StreamTtft:F0} ms, " +
                $"long-prompt TTFT p50 {co.Ttft:F0} -> {pd.Ttft:F0} ms; stream tokens/s {co.Tokens:F1} -> {pd.Tokens:F1}");
        }

        return table.ToString();
    }

    private static string Text(int value) => value.ToString(CultureInfo.InvariantCulture);
}
