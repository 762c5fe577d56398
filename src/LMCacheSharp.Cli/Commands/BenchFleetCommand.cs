using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace LMCacheSharp.Cli.Commands;

/// <summary>
/// <c>lmcache bench fleet</c>: starts a fleet of child processes of this same lmcache (N <c>serve</c> instances, the
/// <c>router</c> in front of them and, in the shared-cache variant, a cache <c>server</c> they all use), runs a multi-user
/// long-document workload through the router under each routing policy, and reports TTFT, where the hits came from
/// (the instance's memory or the cache server) and throughput. Every policy and variant gets a fresh fleet, so that no
/// policy profits from what an earlier one cached. docs/fleet.md, section "Benchmark: lmcache bench fleet".
/// </summary>
internal static partial class BenchFleetCommand
{
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };
    private static readonly string[] KnownPolicies = ["round-robin", "kv-aware", "least-loaded", "session"];
    private static readonly TimeSpan StartTimeout = TimeSpan.FromMinutes(3);

    public static Command Create()
    {
        var model = new Option<string?>("--model") { Description = "GGUF served by every instance. Default: ../shared/models/stories260K.gguf when present, else the generated default model." };
        var instances = new Option<int>("--instances") { Description = "serve instances behind the router (1..16).", DefaultValueFactory = _ => 3 };
        var threads = new Option<int>("--threads") { Description = "llama.cpp threads per instance (1..256).", DefaultValueFactory = _ => 1 };
        var ctx = new Option<int>("--ctx-size") { Description = "KV cells of each instance's context, shared by its concurrent requests.", DefaultValueFactory = _ => 8192 };
        var documents = new Option<int>("--documents") { Description = "Synthetic documents (1..10000), shared out over the users.", DefaultValueFactory = _ => 12 };
        var users = new Option<int>("--users") { Description = "Users (1..--documents); user u owns the documents d with d mod users = u.", DefaultValueFactory = _ => 6 };
        var questions = new Option<int>("--questions") { Description = "Questions each user asks about each of their documents (1..100); the first is cold.", DefaultValueFactory = _ => 3 };
        var docWords = new Option<int>("--doc-words") { Description = "Words per synthetic document (1..100000).", DefaultValueFactory = _ => 450 };
        var maxTokens = new Option<int>("--max-tokens") { Description = "Tokens generated per request (1..4096).", DefaultValueFactory = _ => 16 };
        var concurrency = new Option<int>("--concurrency") { Description = "Requests in flight at once over all users (1..1024); each user waits for an answer before asking again.", DefaultValueFactory = _ => 3 };
        var policies = new Option<string>("--policies") { Description = "Routing policies measured, comma-separated: round-robin, kv-aware, least-loaded, session.", DefaultValueFactory = _ => string.Join(',', KnownPolicies) };
        var sharedCache = new Option<string>("--shared-cache") { Description = "Variants, comma-separated: off (each instance its own memory only), on (plus one cache server all instances share).", DefaultValueFactory = _ => "off,on" };
        var output = new Option<string>("--output", "-o") { Description = "Folder for results (fleet.json, fleet.csv, fleet-summary.md, fleet-ttft.png).", DefaultValueFactory = _ => "bench-results" };
        var command = new Command("fleet", "A fleet (serve instances, router, optional cache server) under a multi-user long-document workload: TTFT, hits by tier, throughput per routing policy.")
        {
            model, instances, threads, ctx, documents, users, questions, docWords, maxTokens, concurrency, policies, sharedCache, output,
        };
        command.SetAction(async (r, ct) =>
        {
            // Every problem of the flags is reported at once, each naming its flag.
            var problems = new List<string>();
            Range(r, instances, 1, 16, problems);
            Range(r, threads, 1, 256, problems);
            Range(r, ctx, 64, 1 << 20, problems);
            Range(r, documents, 1, 10_000, problems);
            Range(r, users, 1, Math.Max(1, r.GetValue(documents)), problems);
            Range(r, questions, 1, 100, problems);
            Range(r, docWords, 1, 100_000, problems);
            Range(r, maxTokens, 1, 4096, problems);
            Range(r, concurrency, 1, 1024, problems);
            var policyList = List(r.GetValue(policies));
            if (policyList.Count == 0 || policyList.Any(p => !KnownPolicies.Contains(p)))
            {
                problems.Add($"--policies: takes a comma list of {string.Join(", ", KnownPolicies)}; got '{r.GetValue(policies)}'");
            }

            var variants = List(r.GetValue(sharedCache));
            if (variants.Count == 0 || variants.Any(v => v is not ("off" or "on")))
            {
                problems.Add($"--shared-cache: takes off, on or off,on; got '{r.GetValue(sharedCache)}'");
            }

            var modelPath = r.GetValue(model) ?? FindStories260K();
            if (modelPath is not null && !File.Exists(modelPath))
            {
                problems.Add($"--model: file not found: '{modelPath}'");
            }

            if (problems.Count > 0)
            {
                await Console.Error.WriteLineAsync("lmcache bench fleet: invalid configuration:" + Environment.NewLine +
                    string.Join(Environment.NewLine, problems.Select(p => "  " + p)));
                return 2;
            }

            var settings = new FleetSettings(modelPath is null ? null : Path.GetFullPath(modelPath), r.GetValue(instances), r.GetValue(threads), r.GetValue(ctx));
            var workload = new Workload(r.GetValue(documents), r.GetValue(users), r.GetValue(questions), r.GetValue(docWords), r.GetValue(maxTokens),
                r.GetValue(concurrency));
            Console.WriteLine($"lmcache bench fleet: {settings.Instances} instances x {settings.Threads} thread(s), model {settings.Model ?? "(generated default)"}; " +
                $"{workload.Documents} documents of {workload.DocWords} words, {workload.Users} users x {workload.Questions} questions per document, " +
                $"concurrency {workload.Concurrency}, max_tokens {workload.MaxTokens}; a fresh fleet per policy and variant");
            var runs = new List<RunSummary>();
            var requests = new List<BenchPeerWorkloads.Result>();
            try
            {
                foreach (var variant in variants)
                {
                    foreach (var policy in policyList)
                    {
                        var (summary, results) = await RunOneAsync(settings, workload, policy, variant == "on", ct);
                        runs.Add(summary);
                        requests.AddRange(results);
                        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                            $"  {policy}, shared cache {variant}: TTFT p50 {summary.TtftP50Ms:F1} ms, p95 {summary.TtftP95Ms:F1} ms, " +
                            $"memory hits {summary.MemoryHitTokens}, remote hits {summary.RemoteHitTokens} tokens, {summary.RequestsPerSecond:F2} requests/s"));
                    }
                }
            }
            catch (FleetStartException e)
            {
                await Console.Error.WriteLineAsync("lmcache bench fleet: " + e.Message);
                return 1;
            }

            Report(runs, requests, r.GetValue(output)!);
            return 0;
        });
        return command;
    }

    /// <summary>How each fleet is started.</summary>
    private sealed record FleetSettings(string? Model, int Instances, int Threads, int ContextSize);

    /// <summary>The multi-user long-document workload.</summary>
    private sealed record Workload(int Documents, int Users, int Questions, int DocWords, int MaxTokens, int Concurrency);

    /// <summary>One policy under one variant: the table's row.</summary>
    internal sealed record RunSummary(string Policy, string SharedCache, int Requests, double TtftP50Ms, double TtftP95Ms, double WarmTtftP50Ms,
        long PromptTokens, long MemoryHitTokens, long RemoteHitTokens, double Seconds, double RequestsPerSecond, string RequestsPerInstance);

    private static async Task<(RunSummary Summary, List<BenchPeerWorkloads.Result> Results)> RunOneAsync(FleetSettings settings, Workload workload,
        string policy, bool shared, CancellationToken ct)
    {
        var children = new List<ChildProcess>();
        try
        {
            string? remote = null;
            if (shared)
            {
                var server = await ChildProcess.StartAsync("cache server", ["server", "--host", "127.0.0.1", "--port", "0", "--capacity", "1GB"], ct);
                children.Add(server);
                remote = server.Address;
            }

            // The instances start together (each loads the model on its own), then the router in front of them.
            var serveArgs = new List<string>
            {
                "serve", "--host", "127.0.0.1", "--port", "0", "--threads", Text(settings.Threads), "--ctx-size", Text(settings.ContextSize),
                "--log-level", "warning",
            };
            if (settings.Model is not null)
            {
                serveArgs.AddRange(["--model", settings.Model]);
            }

            if (remote is not null)
            {
                serveArgs.AddRange(["--lmcache", "remote_url=" + remote]);
            }

            var started = await Task.WhenAll(Enumerable.Range(0, settings.Instances).Select(i => ChildProcess.StartAsync($"instance {i + 1}", [.. serveArgs], ct)));
            children.AddRange(started);
            var router = await ChildProcess.StartAsync("router", ["router", "--host", "127.0.0.1", "--port", "0", "--policy", policy, "--log-level", "warning",
                "--instances", string.Join(',', started.Select(s => s.Address))], ct);
            children.Add(router);

            using var http = new HttpClient { BaseAddress = new Uri(router.Address), Timeout = TimeSpan.FromMinutes(30) };
            foreach (var instance in started)
            {
                // One short unmeasured request on each instance: model load, JIT and first-touch costs land in no policy's numbers.
                using var direct = new HttpClient { BaseAddress = new Uri(instance.Address), Timeout = TimeSpan.FromMinutes(5) };
                using var warm = await direct.PostAsync("/v1/completions", JsonContent.Create(new JsonObject { ["prompt"] = "warm up", ["max_tokens"] = 2 }), ct);
                warm.EnsureSuccessStatusCode();
            }

            await WaitHealthyAsync(http, ct);
            var name = $"{policy}/{(shared ? "on" : "off")}";
            var start = Stopwatch.GetTimestamp();
            var results = await RunWorkloadAsync(http, name, workload, ct);
            var seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
            var ttfts = results.Select(x => x.TtftMs).ToList();
            var byInstance = results.GroupBy(x => x.Instance ?? "?").OrderBy(g => g.Key, StringComparer.Ordinal)
                .Select(g => $"{PortOf(g.Key)}:{g.Count()}");
            var summary = new RunSummary(policy, shared ? "on" : "off", results.Count,
                BenchServingCommand.Percentile(ttfts, 0.5), BenchServingCommand.Percentile(ttfts, 0.95),
                BenchServingCommand.Percentile(results.Where(x => !x.Cold).Select(x => x.TtftMs), 0.5),
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
    private static async Task<List<BenchPeerWorkloads.Result>> RunWorkloadAsync(HttpClient http, string name, Workload workload, CancellationToken ct)
    {
        using var gate = new SemaphoreSlim(workload.Concurrency);
        var documents = Enumerable.Range(0, workload.Documents).Select(d => BenchPeerWorkloads.Document(d, workload.DocWords)).ToArray();
        var perUser = await Task.WhenAll(Enumerable.Range(0, workload.Users).Select(async u =>
        {
            var mine = Enumerable.Range(0, workload.Documents).Where(d => d % workload.Users == u).ToList();
            var list = new List<BenchPeerWorkloads.Result>();
            for (var q = 0; q < workload.Questions; q++)
            {
                foreach (var d in mine)
                {
                    var body = new JsonObject
                    {
                        ["prompt"] = documents[d] + "\n\n" + BenchPeerWorkloads.Question(d, q) + "\nAnswer:",
                        ["user"] = $"user-{u}",
                    };
                    await gate.WaitAsync(ct);
                    try
                    {
                        var (result, _) = await BenchPeerWorkloads.SendAsync(http, name, "fleet", q == 0, "/v1/completions", body, workload.MaxTokens, q, ct);
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

    private static async Task WaitHealthyAsync(HttpClient router, CancellationToken ct)
    {
        var deadline = Stopwatch.GetTimestamp() + (long)(30 * Stopwatch.Frequency);
        while (true)
        {
            using var health = await router.GetAsync("/health", ct);
            if (health.IsSuccessStatusCode)
            {
                return;
            }

            if (Stopwatch.GetTimestamp() > deadline)
            {
                throw new FleetStartException($"the router's /health answered {(int)health.StatusCode} for 30 s");
            }

            await Task.Delay(100, ct);
        }
    }

    private static void Report(List<RunSummary> runs, List<BenchPeerWorkloads.Result> requests, string outputDir)
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
    internal static string Table(IReadOnlyList<RunSummary> runs)
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

    private static List<string> List(string? text) =>
        [.. (text ?? "").ToLowerInvariant().Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Distinct()];

    private static string Text(int value) => value.ToString(CultureInfo.InvariantCulture);

    private static void Range(ParseResult r, Option<int> option, int min, int max, List<string> problems)
    {
        var value = r.GetValue(option);
        if (value < min || value > max)
        {
            problems.Add($"{option.Name}: must be {min}..{max}, got {value}");
        }
    }

    /// <summary>../shared/models/stories260K.gguf above the current folder, or null (then serve generates its default model).</summary>
    private static string? FindStories260K()
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

    /// <summary>A child of the fleet that did not start.</summary>
    private sealed class FleetStartException(string message) : Exception(message);

    /// <summary>
    /// One fleet member: this same lmcache started as a child process (<c>dotnet lmcache.dll</c> or the apphost, whichever
    /// runs now) that prints "lmcache serve|server|router: URL" once it listens; killed with its tree on dispose.
    /// </summary>
    private sealed partial class ChildProcess : IAsyncDisposable
    {
        private readonly Process _process;
        private readonly StringBuilder _output = new();
        private readonly TaskCompletionSource<string> _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);

        private ChildProcess(Process process) => _process = process;

        /// <summary>The URL from its start line (http://127.0.0.1:PORT or lm://127.0.0.1:PORT).</summary>
        public string Address => _ready.Task.Result;

        public static async Task<ChildProcess> StartAsync(string role, string[] args, CancellationToken ct)
        {
            var (fileName, prefix) = Self();
            var info = new ProcessStartInfo(fileName) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            foreach (var a in prefix.Concat(args))
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
                throw new FleetStartException($"the {role} (lmcache {string.Join(' ', args)}) did not start within {StartTimeout.TotalSeconds:F0} s; it printed:{Environment.NewLine}{output}");
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

        // dotnet lmcache.dll when this runs under the dotnet host, else the executable itself (apphost or tool shim).
        private static (string FileName, string[] Prefix) Self()
        {
            var path = Environment.ProcessPath ?? "dotnet";
            var host = Path.GetFileNameWithoutExtension(path);
            if (string.Equals(host, "dotnet", StringComparison.OrdinalIgnoreCase))
            {
                var dll = typeof(BenchFleetCommand).Assembly.Location;
                return (path, [string.IsNullOrEmpty(dll) ? Path.Combine(AppContext.BaseDirectory, "lmcache.dll") : dll]);
            }

            return (path, []);
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

        [GeneratedRegex(@"^lmcache (?:serve|server|router): ((?:http|lm)://[^\s,]+)")]
        private static partial Regex StartLine();
    }
}
