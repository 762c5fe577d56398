using System.Diagnostics;
using System.Globalization;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace LMCacheSharp.Bench;

/// <summary>How to start the <c>lmcache</c> that runs the fleet's members: <c>dotnet lmcache.dll</c>, or the executable itself.</summary>
/// <param name="FileName">The program to start.</param>
/// <param name="Arguments">Arguments before the member's own (<c>lmcache.dll</c> under <c>dotnet</c>; none for the executable).</param>
public sealed record FleetLauncher(string FileName, IReadOnlyList<string> Arguments);

/// <summary>Settings of <c>lmcache bench fleet</c>; each range is checked by <see cref="GetErrors"/>.</summary>
public sealed record FleetBenchSettings
{
    /// <summary>The routing policies <see cref="Policies"/> may name.</summary>
    public static IReadOnlyList<string> KnownPolicies { get; } = ["round-robin", "kv-aware", "least-loaded", "session"];

    /// <summary>GGUF served by every instance; null: ../shared/models/stories260K.gguf above the current folder when present, else serve's generated default.</summary>
    public string? Model { get; init; }

    /// <summary>serve instances behind the router. Default 3; 1..16.</summary>
    public int Instances { get; init; } = 3;

    /// <summary>llama.cpp threads per instance. Default 1; 1..256.</summary>
    public int Threads { get; init; } = 1;

    /// <summary>KV cells of each instance's context. Default 8192; 64..1048576.</summary>
    public int ContextSize { get; init; } = 8192;

    /// <summary>Synthetic documents, shared out over the users. Default 12; 1..10000.</summary>
    public int Documents { get; init; } = 12;

    /// <summary>Users; user u owns the documents d with d mod users = u. Default 6; 1..<see cref="Documents"/>.</summary>
    public int Users { get; init; } = 6;

    /// <summary>Questions each user asks about each of their documents; the first is cold. Default 3; 1..100.</summary>
    public int Questions { get; init; } = 3;

    /// <summary>Words per synthetic document. Default 450; 1..100000.</summary>
    public int DocWords { get; init; } = 450;

    /// <summary>Tokens generated per request. Default 16; 1..4096.</summary>
    public int MaxTokens { get; init; } = 16;

    /// <summary>Requests in flight at once over all users. Default 3; 1..1024.</summary>
    public int Concurrency { get; init; } = 3;

    /// <summary>
    /// Start an <c>lmcache controller</c> too (<c>--controller</c>): the instances register with it and publish their KV events to
    /// it, and the router takes the instances and kv-aware's lookups from it (<c>router --controller</c>) instead of asking each
    /// instance. Default false.
    /// </summary>
    public bool Controller { get; init; }

    /// <summary>Routing policies measured (lower case). Default all four.</summary>
    public IReadOnlyList<string> Policies { get; init; } = KnownPolicies;

    /// <summary>Variants: off (each instance its own memory only), on (plus one cache server all instances share). Default off, on.</summary>
    public IReadOnlyList<string> SharedCache { get; init; } = ["off", "on"];

    /// <summary>Folder for fleet.json, fleet.csv, fleet-summary.md and fleet-ttft.png.</summary>
    public string Output { get; init; } = "bench-results";

    /// <summary>Every problem, each naming its flag; empty when valid.</summary>
    public IReadOnlyList<string> GetErrors()
    {
        var errors = new List<string>();
        SettingsChecks.Range(errors, "--instances", Instances, 1, 16);
        SettingsChecks.Range(errors, "--threads", Threads, 1, 256);
        SettingsChecks.Range(errors, "--ctx-size", ContextSize, 64, 1 << 20);
        SettingsChecks.Range(errors, "--documents", Documents, 1, 10_000);
        SettingsChecks.Range(errors, "--users", Users, 1, Math.Max(1, Documents));
        SettingsChecks.Range(errors, "--questions", Questions, 1, 100);
        SettingsChecks.Range(errors, "--doc-words", DocWords, 1, 100_000);
        SettingsChecks.Range(errors, "--max-tokens", MaxTokens, 1, 4096);
        SettingsChecks.Range(errors, "--concurrency", Concurrency, 1, 1024);
        if (Policies.Count == 0 || Policies.Any(p => !KnownPolicies.Contains(p)))
        {
            errors.Add($"--policies: takes a comma list of {string.Join(", ", KnownPolicies)}; got '{string.Join(',', Policies)}'");
        }

        if (SharedCache.Count == 0 || SharedCache.Any(v => v is not ("off" or "on")))
        {
            errors.Add($"--shared-cache: takes off, on or off,on; got '{string.Join(',', SharedCache)}'");
        }

        if (Model is not null && !File.Exists(Model))
        {
            errors.Add($"--model: file not found: '{Model}'");
        }

        return errors;
    }

    /// <summary>A comma list, lower case, without duplicates (--policies, --shared-cache).</summary>
    public static IReadOnlyList<string> ParseList(string? text) =>
        [.. (text ?? "").ToLowerInvariant().Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Distinct()];

}

/// <summary>One policy under one variant of <c>lmcache bench fleet</c>: a row of its table.</summary>
/// <param name="Policy">The routing policy.</param>
/// <param name="SharedCache">on with a cache server the instances share, else off.</param>
/// <param name="Requests">Requests measured.</param>
/// <param name="TtftP50Ms">Time to first token, p50.</param>
/// <param name="TtftP95Ms">Time to first token, p95.</param>
/// <param name="WarmTtftP50Ms">Time to first token of the warm requests (all but each document's first question), p50.</param>
/// <param name="PromptTokens">Prompt tokens of all requests.</param>
/// <param name="MemoryHitTokens">Cached tokens found in an instance's memory.</param>
/// <param name="RemoteHitTokens">Cached tokens fetched from a tier below memory (the cache server).</param>
/// <param name="Seconds">Wall time of the workload.</param>
/// <param name="RequestsPerSecond">Requests over that time.</param>
/// <param name="RequestsPerInstance">Requests each instance served, "port:n" each.</param>
public sealed record FleetRunSummary(string Policy, string SharedCache, int Requests, double TtftP50Ms, double TtftP95Ms, double WarmTtftP50Ms,
    long PromptTokens, long MemoryHitTokens, long RemoteHitTokens, double Seconds, double RequestsPerSecond, string RequestsPerInstance);

/// <summary>
/// <c>lmcache bench fleet</c>: starts a fleet of child processes of this same lmcache (N <c>serve</c> instances, the
/// <c>router</c> in front of them and, in the shared-cache variant, a cache <c>server</c> they all use), runs a multi-user
/// long-document workload through the router under each routing policy, and reports TTFT, where the hits came from
/// (the instance's memory or the cache server) and throughput. Every policy and variant gets a fresh fleet, so that no
/// policy profits from what an earlier one cached. Prints its progress and table on the console and writes fleet.json,
/// fleet.csv, fleet-summary.md and fleet-ttft.png. docs/fleet.md, section "Benchmark: lmcache bench fleet".
/// </summary>
public static partial class FleetBench
{
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };
    private static readonly TimeSpan StartTimeout = TimeSpan.FromMinutes(3);

    /// <summary>Runs every policy under every variant, each on a fresh fleet started with <paramref name="launcher"/>, and writes the results.</summary>
    /// <exception cref="ArgumentException">Invalid <paramref name="settings"/>.</exception>
    /// <exception cref="BenchException">A member of a fleet did not start.</exception>
    public static async Task<IReadOnlyList<FleetRunSummary>> RunAsync(FleetBenchSettings settings, FleetLauncher launcher, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(settings);
        ArgumentNullException.ThrowIfNull(launcher);
        var modelPath = settings.Model ?? FindStories260K();
        if (settings.GetErrors() is { Count: > 0 } errors)
        {
            throw new ArgumentException(string.Join("; ", errors), nameof(settings));
        }

        var fleet = new FleetSettings(launcher, modelPath is null ? null : Path.GetFullPath(modelPath), settings.Instances, settings.Threads, settings.ContextSize,
            settings.Controller);
        var workload = new Workload(settings.Documents, settings.Users, settings.Questions, settings.DocWords, settings.MaxTokens, settings.Concurrency);
        Console.WriteLine($"lmcache bench fleet: {fleet.Instances} instances x {fleet.Threads} thread(s), model {fleet.Model ?? "(generated default)"}; " +
            $"{workload.Documents} documents of {workload.DocWords} words, {workload.Users} users x {workload.Questions} questions per document, " +
            $"concurrency {workload.Concurrency}, max_tokens {workload.MaxTokens}; {(fleet.Controller ? "a controller (router --controller); " : "")}a fresh fleet per policy and variant");
        var runs = new List<FleetRunSummary>();
        var requests = new List<PeerWorkloads.Result>();
        foreach (var variant in settings.SharedCache)
        {
            foreach (var policy in settings.Policies)
            {
                var (summary, results) = await RunOneAsync(fleet, workload, policy, variant == "on", ct);
                runs.Add(summary);
                requests.AddRange(results);
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"  {policy}, shared cache {variant}: TTFT p50 {summary.TtftP50Ms:F1} ms, p95 {summary.TtftP95Ms:F1} ms, " +
                    $"memory hits {summary.MemoryHitTokens}, remote hits {summary.RemoteHitTokens} tokens, {summary.RequestsPerSecond:F2} requests/s"));
            }
        }

        Report(runs, requests, settings.Output);
        return runs;
    }

    /// <summary>How each fleet is started.</summary>
    private sealed record FleetSettings(FleetLauncher Launcher, string? Model, int Instances, int Threads, int ContextSize, bool Controller);

    /// <summary>The multi-user long-document workload.</summary>
    private sealed record Workload(int Documents, int Users, int Questions, int DocWords, int MaxTokens, int Concurrency);

    private static async Task<(FleetRunSummary Summary, List<PeerWorkloads.Result> Results)> RunOneAsync(FleetSettings settings, Workload workload,
        string policy, bool shared, CancellationToken ct)
    {
        var children = new List<ChildProcess>();
        try
        {
            string? remote = null;
            if (shared)
            {
                var server = await ChildProcess.StartAsync("cache server", settings.Launcher, ["server", "--host", "127.0.0.1", "--port", "0", "--capacity", "1GB"], ct);
                children.Add(server);
                remote = server.Address;
            }

            string? controller = null;
            if (settings.Controller)
            {
                var started0 = await ChildProcess.StartAsync("controller", settings.Launcher, ["controller", "--host", "127.0.0.1", "--port", "0"], ct);
                children.Add(started0);
                controller = started0.Address;
            }

            // The instances start together (each loads the model on its own), then the router in front of them.
            var serveArgs = new List<string>
            {
                "serve", "--host", "127.0.0.1", "--port", "0", "--threads", Text(settings.Threads), "--ctx-size", Text(settings.ContextSize),
                "--log-level", "warning",
            };
            if (controller is not null)
            {
                serveArgs.AddRange(["--controller", controller]);
            }
            if (settings.Model is not null)
            {
                serveArgs.AddRange(["--model", settings.Model]);
            }

            if (remote is not null)
            {
                serveArgs.AddRange(["--lmcache", "remote_url=" + remote]);
            }

            var started = await Task.WhenAll(Enumerable.Range(0, settings.Instances).Select(i => ChildProcess.StartAsync($"instance {i + 1}", settings.Launcher, [.. serveArgs], ct)));
            children.AddRange(started);
            var router = await ChildProcess.StartAsync("router", settings.Launcher, ["router", "--host", "127.0.0.1", "--port", "0", "--policy", policy, "--log-level", "warning",
                .. controller is null ? ["--instances", string.Join(',', started.Select(s => s.Address))] : new[] { "--controller", controller }], ct);
            children.Add(router);

            using var http = new HttpClient { BaseAddress = new Uri(router.Address), Timeout = TimeSpan.FromMinutes(30) };
            foreach (var instance in started)
            {
                // One short unmeasured request on each instance: model load, JIT and first-touch costs land in no policy's numbers.
                using var direct = new HttpClient { BaseAddress = new Uri(instance.Address), Timeout = TimeSpan.FromMinutes(5) };
                using var warm = await direct.PostAsync("/v1/completions", JsonContent.Create(new JsonObject { ["prompt"] = "warm up", ["max_tokens"] = 2 }), ct);
                warm.EnsureSuccessStatusCode();
            }

            await WaitHealthyAsync(http, ct, settings.Instances);
            var name = $"{policy}/{(shared ? "on" : "off")}";
            var start = Stopwatch.GetTimestamp();
            var results = await RunWorkloadAsync(http, name, workload, ct);
            var seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
            var ttfts = results.Select(x => x.TtftMs).ToList();
            var byInstance = results.GroupBy(x => x.Instance ?? "?").OrderBy(g => g.Key, StringComparer.Ordinal)
                .Select(g => $"{PortOf(g.Key)}:{g.Count()}");
            var summary = new FleetRunSummary(policy, shared ? "on" : "off", results.Count,
                Statistics.Percentile(ttfts, 0.5), Statistics.Percentile(ttfts, 0.95),
                Statistics.Percentile(results.Where(x => !x.Cold).Select(x => x.TtftMs), 0.5),
                results.Sum(x => (long)x.PromptTokens), results.Sum(x => (long)x.CachedTokens - x.LowerTierTokens), results.Sum(x => (long)x.LowerTierTokens),
                seconds, results.Count / seconds, string.Join(' ', byInstance));
            return (summary, results);
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
    /// The users run side by side, each asking its questions one after the other (question q of every one of its documents
    /// before question q+1 of any), at most <see cref="Workload.Concurrency"/> requests in flight over all users. The
    /// request carries the user's name in <c>user</c> (what the session policy sticks to).
    /// </summary>
    private static async Task<List<PeerWorkloads.Result>> RunWorkloadAsync(HttpClient http, string name, Workload workload, CancellationToken ct)
    {
        using var gate = new SemaphoreSlim(workload.Concurrency);
        var documents = Enumerable.Range(0, workload.Documents).Select(d => PeerWorkloads.Document(d, workload.DocWords)).ToArray();
        var perUser = await Task.WhenAll(Enumerable.Range(0, workload.Users).Select(async u =>
        {
            var mine = Enumerable.Range(0, workload.Documents).Where(d => d % workload.Users == u).ToList();
            var list = new List<PeerWorkloads.Result>();
            for (var q = 0; q < workload.Questions; q++)
            {
                foreach (var d in mine)
                {
                    var body = new JsonObject
                    {
                        ["prompt"] = documents[d] + "\n\n" + PeerWorkloads.Question(d, q) + "\nAnswer:",
                        ["user"] = $"user-{u}",
                    };
                    await gate.WaitAsync(ct);
                    try
                    {
                        var (result, _) = await PeerWorkloads.SendAsync(http, name, "fleet", q == 0, "/v1/completions", body, workload.MaxTokens, q, ct);
                        list.Add(result);
                    }
                    finally
                    {
                        gate.Release();
                    }
                }
            }

            return list;
        }));
        return [.. perUser.SelectMany(l => l)];
    }

    /// <summary>Waits until the router's /health answers 200 and, with <paramref name="instances"/>, lists that many healthy instances.</summary>
    internal static async Task WaitHealthyAsync(HttpClient router, CancellationToken ct, int instances = 0)
    {
        var deadline = Stopwatch.GetTimestamp() + (long)(30 * Stopwatch.Frequency);
        while (true)
        {
            using var health = await router.GetAsync("/health", ct);
            if (health.IsSuccessStatusCode && (instances == 0 ||
                (await health.Content.ReadFromJsonAsync<JsonObject>(ct))?["instances"] is JsonArray list &&
                list.Count(i => i?["healthy"]?.GetValue<bool>() == true) >= instances))
            {
                return;
            }

            if (Stopwatch.GetTimestamp() > deadline)
            {
                throw new BenchException($"the router's /health answered {(int)health.StatusCode} for 30 s");
            }

            await Task.Delay(100, ct);
        }
    }

    /// <summary>Prints the fleet table and writes fleet.json, fleet.csv, fleet-summary.md and fleet-ttft.png into <paramref name="outputDir"/>.</summary>
    internal static void Report(List<FleetRunSummary> runs, List<PeerWorkloads.Result> requests, string outputDir)
    {
        var table = Table(runs);
        Console.WriteLine();
        Console.Write(table);
        Directory.CreateDirectory(outputDir);
        File.WriteAllText(Path.Combine(outputDir, "fleet-summary.md"), table);
        File.WriteAllText(Path.Combine(outputDir, "fleet.json"), JsonSerializer.Serialize(new { summary = runs, requests }, Indented));
        var csv = new StringBuilder("policy,shared_cache,instance,kind,round,ttft_ms,total_ms,prompt_tokens,cached_tokens,memory_hit_tokens,remote_hit_tokens,completion_tokens,restore_ms,prompt_ms\n");
        foreach (var x in requests)
        {
            var (policy, variant) = SplitName(x.Config);
            csv.AppendLine(CultureInfo.InvariantCulture,
                $"{policy},{variant},{x.Instance},{(x.Cold ? "cold" : "warm")},{x.Round},{x.TtftMs:F2},{x.TotalMs:F2},{x.PromptTokens},{x.CachedTokens}," +
                $"{x.CachedTokens - x.LowerTierTokens},{x.LowerTierTokens},{x.CompletionTokens},{x.RestoreMs:F2},{x.PromptMs:F2}");
        }

        File.WriteAllText(Path.Combine(outputDir, "fleet.csv"), csv.ToString());
        var policies = runs.Select(x => x.Policy).Distinct().ToList();
        var variants = runs.Select(x => x.SharedCache).Distinct().ToList();
        Charts.Bars(Path.Combine(outputDir, "fleet-ttft.png"), "Fleet: time to first token, p50 (ms)", policies,
            [.. variants.Select(v => "shared cache " + v)],
            (policy, series) => runs.FirstOrDefault(x => x.Policy == policy && "shared cache " + x.SharedCache == series)?.TtftP50Ms ?? 0);
        Console.WriteLine($"results: {outputDir}/fleet.json, fleet.csv, fleet-summary.md, fleet-ttft.png");
    }

    /// <summary>The summary table, then kv-aware's p50 speedup over round-robin per variant (with the issue's targets).</summary>
    internal static string Table(IReadOnlyList<FleetRunSummary> runs)
    {
        var table = new StringBuilder();
        table.AppendLine("| policy | shared cache | requests | TTFT p50 ms | TTFT p95 ms | warm TTFT p50 ms | prompt tokens | memory hit tokens | remote hit tokens | requests/s | requests per instance (port:n) |");
        table.AppendLine("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
        foreach (var x in runs)
        {
            table.AppendLine(CultureInfo.InvariantCulture,
                $"| {x.Policy} | {x.SharedCache} | {x.Requests} | {x.TtftP50Ms:F1} | {x.TtftP95Ms:F1} | {x.WarmTtftP50Ms:F1} | {x.PromptTokens} | " +
                $"{x.MemoryHitTokens} | {x.RemoteHitTokens} | {x.RequestsPerSecond:F2} | {x.RequestsPerInstance} |");
        }

        foreach (var variant in runs.Select(x => x.SharedCache).Distinct())
        {
            var baseline = runs.FirstOrDefault(x => x.SharedCache == variant && x.Policy == "round-robin");
            var kv = runs.FirstOrDefault(x => x.SharedCache == variant && x.Policy == "kv-aware");
            if (baseline is not null && kv is not null && kv.TtftP50Ms > 0)
            {
                var target = variant == "on" ? 1.3 : 2.0;
                var speedup = baseline.TtftP50Ms / kv.TtftP50Ms;
                table.AppendLine();
                table.AppendLine(CultureInfo.InvariantCulture,
                    $"shared cache {variant}: kv-aware p50 TTFT is {speedup:F2}x round-robin's ({kv.TtftP50Ms:F1} vs {baseline.TtftP50Ms:F1} ms); " +
                    $"target >= {target:F1}x: {(speedup >= target ? "met" : "not met")}");
            }
        }

        return table.ToString();
    }

    private static (string Policy, string Variant) SplitName(string name) => name.IndexOf('/', StringComparison.Ordinal) is var i and > 0
        ? (name[..i], name[(i + 1)..]) : (name, "");

    private static string Text(int value) => value.ToString(CultureInfo.InvariantCulture);

    /// <summary>../shared/models/stories260K.gguf above the current folder, or null (then serve generates its default model).</summary>
    internal static string? FindStories260K()
    {
        for (var dir = new DirectoryInfo(Directory.GetCurrentDirectory()); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "..", "shared", "models", "stories260K.gguf");
            if (File.Exists(candidate))
            {
                return Path.GetFullPath(candidate);
            }
        }

        return null;
    }

    private static string PortOf(string instance) => Uri.TryCreate(instance, UriKind.Absolute, out var uri) ? Text(uri.Port) : instance;

    /// <summary>
    /// One fleet member: lmcache started as a child process by the <see cref="FleetLauncher"/>, which prints
    /// "lmcache serve|server|router: URL" once it listens; killed with its tree on dispose.
    /// </summary>
    internal sealed partial class ChildProcess : IAsyncDisposable
    {
        private readonly Process _process;
        private readonly StringBuilder _output = new();
        private readonly TaskCompletionSource<string> _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);

        private ChildProcess(Process process) => _process = process;

        /// <summary>The URL from its start line (http://127.0.0.1:PORT or lm://127.0.0.1:PORT).</summary>
        public string Address => _ready.Task.Result;

        public static async Task<ChildProcess> StartAsync(string role, FleetLauncher launcher, string[] args, CancellationToken ct)
        {
            var info = new ProcessStartInfo(launcher.FileName) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            foreach (var a in launcher.Arguments.Concat(args))
            {
                info.ArgumentList.Add(a);
            }

            var child = new ChildProcess(new Process { StartInfo = info });
            child._process.OutputDataReceived += (_, e) => child.OnLine(e.Data);
            child._process.ErrorDataReceived += (_, e) => child.OnLine(e.Data);
            child._process.Start();
            child._process.BeginOutputReadLine();
            child._process.BeginErrorReadLine();
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
            timeout.CancelAfter(StartTimeout);
            var exited = child._process.WaitForExitAsync(timeout.Token);
            var first = await Task.WhenAny(child._ready.Task, exited);
            if (first != child._ready.Task)
            {
                string output;
                lock (child._output)
                {
                    output = child._output.ToString();
                }

                await child.DisposeAsync();
                ct.ThrowIfCancellationRequested();
                throw new BenchException($"the {role} (lmcache {string.Join(' ', args)}) did not start within {StartTimeout.TotalSeconds:F0} s; it printed:{Environment.NewLine}{output}");
            }

            return child;
        }

        public async ValueTask DisposeAsync()
        {
            try
            {
                if (!_process.HasExited)
                {
                    _process.Kill(entireProcessTree: true);
                }

                await _process.WaitForExitAsync(CancellationToken.None);
            }
            catch (InvalidOperationException)
            {
                // never started: nothing to stop
            }

            _process.Dispose();
        }

        private void OnLine(string? line)
        {
            if (line is null)
            {
                return;
            }

            lock (_output)
            {
                if (_output.Length < 64 * 1024)
                {
                    _output.AppendLine(line);
                }
            }

            if (StartLine().Match(line) is { Success: true } m)
            {
                _ready.TrySetResult(m.Groups[1].Value);
            }
        }

        [GeneratedRegex(@"^lmcache (?:serve|server|router|controller): ((?:http|lm)://[^\s,]+)")]
        private static partial Regex StartLine();
    }
}
