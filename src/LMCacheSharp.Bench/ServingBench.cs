using System.Diagnostics;
using System.Globalization;
using System.Net.Http.Json;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Serving;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace LMCacheSharp.Bench;

/// <summary>Settings of <c>lmcache bench serving</c>; each range is checked by <see cref="GetErrors"/>.</summary>
public sealed record ServingBenchSettings
{
    /// <summary>The workloads <see cref="Workloads"/> may name.</summary>
    public static IReadOnlyList<string> KnownWorkloads { get; } = ["leval", "sharegpt", "doc-qa", "chat", "clients"];

    /// <summary>The in-process configurations <see cref="Configs"/> may name.</summary>
    /// (<c>off-streams</c> and <c>streams</c> are <c>off</c> and <c>tiers</c> on per-sequence KV streams, <c>serve --kv-unified off</c>.)
    public static IReadOnlyList<string> KnownConfigs { get; } = ["off", "context", "tiers", "on", "off-streams", "streams"];

    /// <summary>OpenAI endpoints measured instead of in-process servers; empty: in-process servers, one per configuration.</summary>
    public IReadOnlyList<string> Urls { get; init; } = [];

    /// <summary>GGUF of the in-process servers; null: the generated default model.</summary>
    public string? Model { get; init; }

    /// <summary>In-process configurations: off (plain llama.cpp), context (in-context sharing only), tiers (cache tiers only), on (both).</summary>
    public IReadOnlyList<string> Configs { get; init; } = ["off", "on"];

    /// <summary>Workloads, expanded (<see cref="ParseWorkloads"/>). Default leval, sharegpt.</summary>
    public IReadOnlyList<string> Workloads { get; init; } = ["leval", "sharegpt"];

    /// <summary>Folder with leval/ and sharegpt/; null: ../shared/data from the current folder or its parents (or LMCACHE_DATA).</summary>
    public string? Data { get; init; }

    /// <summary>L-Eval documents (the first question of each is cold); doc-qa's documents. Default 4; 1..10000.</summary>
    public int Documents { get; init; } = 4;

    /// <summary>Questions per L-Eval document. Default 4; 1..1000.</summary>
    public int Questions { get; init; } = 4;

    /// <summary>ShareGPT requests replayed from run.json (after warmup.json). Default 40; 0..100000.</summary>
    public int Requests { get; init; } = 40;

    /// <summary>Prompts are cut to this many characters (keeps the prefix structure). Default 6000; 1..10000000.</summary>
    public int MaxPromptChars { get; init; } = 6000;

    /// <summary>Tokens generated per request. Default 16; 1..4096.</summary>
    public int MaxTokens { get; init; } = 16;

    /// <summary>Context of the in-process servers. Default 8192.</summary>
    public int ContextSize { get; init; } = 8192;

    /// <summary>Folder for the results (JSON, CSV, PNG).</summary>
    public string Output { get; init; } = "bench-results";

    /// <summary>Words per synthetic document (doc-qa, chat, clients). Default 450; 1..100000.</summary>
    public int DocWords { get; init; } = 450;

    /// <summary>doc-qa: questions per document, asked round by round over all documents. Default 3; 1..1000.</summary>
    public int Rounds { get; init; } = 3;

    /// <summary>chat: conversations, interleaved turn by turn. Default 4; 1..1000.</summary>
    public int Conversations { get; init; } = 4;

    /// <summary>chat: turns per conversation. Default 5; 1..1000.</summary>
    public int Turns { get; init; } = 5;

    /// <summary>clients: concurrent clients, two questions each on their own document. Default 8; 1..1024.</summary>
    public int Clients { get; init; } = 8;

    /// <summary>clients: words per client document; null: half of <see cref="DocWords"/>.</summary>
    public int? ClientDocWords { get; init; }

    /// <summary>clients: runs per configuration (rotating order). Default 2; 1..1000.</summary>
    public int Repeats { get; init; } = 2;

    /// <summary>In-process servers: requests decoded together. Default 4.</summary>
    public int MaxConcurrent { get; init; } = 4;

    /// <summary>In-process servers: llama.cpp threads. Default: the processor count.</summary>
    public int Threads { get; init; } = Environment.ProcessorCount;

    /// <summary>In-process servers: chunk_size. Default 256; 1..65536.</summary>
    public int ChunkSize { get; init; } = 256;

    /// <summary>In-process servers: model layers offloaded to the GPU. Default 0.</summary>
    public int GpuLayers { get; init; }

    /// <summary>Every problem, each naming its flag; empty when valid. The in-process servers check their own settings when they start.</summary>
    public IReadOnlyList<string> GetErrors()
    {
        var errors = new List<string>();
        if (Workloads.Count == 0 || Workloads.Any(w => !KnownWorkloads.Contains(w)))
        {
            errors.Add($"--workload: takes a comma list of leval, sharegpt, doc-qa, chat, clients, all, peer; got '{string.Join(',', Workloads)}'");
        }

        if (Urls.Count == 0 && (Configs.Count == 0 || Configs.Any(c => !KnownConfigs.Contains(c))))
        {
            errors.Add($"--configs: takes a comma list of {string.Join(", ", KnownConfigs)}; got '{string.Join(',', Configs)}'");
        }

        foreach (var url in Urls)
        {
            if (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https"))
            {
                errors.Add($"--url: must be an http(s) URL such as http://127.0.0.1:8000, got '{url}'");
            }
        }

        SettingsChecks.Range(errors, "--documents", Documents, 1, 10_000);
        SettingsChecks.Range(errors, "--questions", Questions, 1, 1000);
        SettingsChecks.Range(errors, "--requests", Requests, 0, 100_000);
        SettingsChecks.Range(errors, "--max-prompt-chars", MaxPromptChars, 1, 10_000_000);
        SettingsChecks.Range(errors, "--max-tokens", MaxTokens, 1, 4096);
        SettingsChecks.Range(errors, "--doc-words", DocWords, 1, 100_000);
        SettingsChecks.Range(errors, "--rounds", Rounds, 1, 1000);
        SettingsChecks.Range(errors, "--conversations", Conversations, 1, 1000);
        SettingsChecks.Range(errors, "--turns", Turns, 1, 1000);
        SettingsChecks.Range(errors, "--clients", Clients, 1, 1024);
        SettingsChecks.Range(errors, "--client-doc-words", ClientDocWords ?? 1, 1, 100_000);
        SettingsChecks.Range(errors, "--repeats", Repeats, 1, 1000);
        SettingsChecks.Range(errors, "--chunk-size", ChunkSize, 1, 65536);
        if (Model is not null && !File.Exists(Model))
        {
            errors.Add($"--model: file not found: '{Model}'");
        }

        return errors;
    }

    /// <summary>Workload names from a comma list, any case; <c>all</c> is leval,sharegpt and <c>peer</c> is doc-qa,chat,clients.</summary>
    public static IReadOnlyList<string> ParseWorkloads(string text) =>
        [.. (text ?? "").ToLowerInvariant().Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .SelectMany(w => w switch { "all" => ["leval", "sharegpt"], "peer" => ["doc-qa", "chat", "clients"], _ => new[] { w } }).Distinct()];

    /// <summary>Configuration names from a comma list.</summary>
    public static IReadOnlyList<string> ParseConfigs(string text) =>
        [.. (text ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)];

}

/// <summary>
/// <c>lmcache bench serving</c>: replays real workloads (long-document QA from L-Eval, multi-round chat from ShareGPT) and
/// the llama-server peer workloads (synthetic documents) through the OpenAI API and reports time to first token, cold vs
/// warm, with the cache off and on, measured in one run. Without URLs it starts the servers itself (one per configuration,
/// side by side, same model). Prints its progress and tables on the console and writes JSON, CSV, Markdown and a PNG chart.
/// </summary>
public static class ServingBench
{
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    /// <summary>Runs the bench (llama.cpp's library chosen already) and writes its files.</summary>
    /// <exception cref="ArgumentException">Invalid <paramref name="settings"/>.</exception>
    /// <exception cref="BenchException">No workload could be loaded.</exception>
    public static async Task RunAsync(ServingBenchSettings settings, IProgressLine progress, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(settings);
        ArgumentNullException.ThrowIfNull(progress);
        if (settings.GetErrors() is { Count: > 0 } errors)
        {
            throw new ArgumentException(string.Join("; ", errors), nameof(settings));
        }

        var s = settings;
        var dataDir = s.Data ?? FindDataFolder();
        var items = new List<WorkItem>();
        if (s.Workloads.Contains("leval"))
        {
            items.AddRange(LoadLeval(dataDir, s.Documents, s.Questions, s.MaxPromptChars));
        }

        if (s.Workloads.Contains("sharegpt"))
        {
            items.AddRange(LoadShareGpt(dataDir, s.Requests, s.MaxPromptChars));
        }

        var peer = s.Workloads.Intersect(["doc-qa", "chat", "clients"]).ToList();
        if (items.Count == 0 && peer.Count == 0)
        {
            throw new BenchException("no workload could be loaded (see the messages above)");
        }

        var targets = new List<(string Name, string Url)>();
        var apps = new List<WebApplication>();
        try
        {
            if (s.Urls.Count > 0)
            {
                targets.AddRange(s.Urls.Select(u => (u, u)));
            }
            else
            {
                // All configurations run side by side and each request goes to every one of them in turn (rotating
                // the order), so that noise on a shared machine spreads over all configurations alike.
                foreach (var config in s.Configs)
                {
                    var options = new ServingOptions
                    {
                        ModelPath = s.Model,
                        ContextSize = s.ContextSize,
                        MaxConcurrentRequests = s.MaxConcurrent,
                        Threads = s.Threads,
                        GpuLayers = s.GpuLayers,
                        EnableCache = config is "tiers" or "on" or "streams",
                        EnableInContextSharing = config is "context" or "on",
                        KvUnified = config is not ("off-streams" or "streams"),
                        LogLevel = LogLevel.Warning,
                    };
                    var app = ServingApp.Build(options, new LMCacheOptions { MaxLocalCpuSize = 4, ChunkSize = s.ChunkSize }, ["http://127.0.0.1:0"]);
                    apps.Add(app);
                    await app.StartAsync(ct);
                    var url = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
                    Console.WriteLine($"configuration '{config}' ({options.ModelName}) at {url}");
                    targets.Add((config, url));
                }
            }

            var configNames = targets.Select(t => t.Name).ToList();
            if (items.Count > 0)
            {
                var results = await RunAsync(targets, items, s.MaxTokens, progress, ct);
                Report(results, s.Output, configNames);
            }

            if (peer.Count > 0)
            {
                await RunPeerAsync(targets, peer, s.DocWords, s.ClientDocWords ?? s.DocWords / 2, s.Documents, s.Rounds, s.Conversations, s.Turns,
                    s.Clients, s.Repeats, s.MaxTokens, s.Output, ct);
            }
        }
        finally
        {
            foreach (var app in apps)
            {
                await app.StopAsync(CancellationToken.None);
                await app.DisposeAsync();
            }
        }
    }

    internal sealed record WorkItem(string Workload, string Group, bool Cold, string Prompt);

    private static async Task RunPeerAsync(List<(string Name, string Url)> targets, List<string> workloads, int words, int clientWords, int documents,
        int rounds, int conversations, int turns, int clients, int repeats, int maxTokens, string outputDir, CancellationToken ct)
    {
        var http = targets.Select(t => (t.Name, Http: new HttpClient { BaseAddress = new Uri(t.Url), Timeout = TimeSpan.FromMinutes(30) })).ToList();
        try
        {
            foreach (var (_, client) in http)
            {
                using var warm = await client.PostAsync("/v1/completions", JsonContent.Create(new JsonObject { ["prompt"] = "warm up", ["max_tokens"] = 2 }), ct);
                warm.EnsureSuccessStatusCode();
            }

            var results = new List<PeerWorkloads.Result>();
            var throughput = new List<PeerWorkloads.Throughput>();
            if (workloads.Contains("doc-qa"))
            {
                Console.WriteLine($"doc-qa: {documents} documents x {rounds} questions, {words} words each");
                results.AddRange(await PeerWorkloads.DocumentQaAsync(http, documents, words, rounds, maxTokens, ct));
            }

            if (workloads.Contains("chat"))
            {
                Console.WriteLine($"chat: {conversations} conversations x {turns} turns, interleaved");
                results.AddRange(await PeerWorkloads.ChatAsync(http, conversations, turns, words / 3, maxTokens, ct));
            }

            if (workloads.Contains("clients"))
            {
                Console.WriteLine($"clients: {clients} concurrent clients x 2 questions, {repeats} runs per configuration");
                var (requests, runs) = await PeerWorkloads.ConcurrentClientsAsync(http, clients, clientWords, maxTokens, repeats, ct);
                results.AddRange(requests);
                throughput.AddRange(runs);
            }

            var table = PeerWorkloads.Table(results, throughput, [.. targets.Select(t => t.Name)]);
            Console.WriteLine();
            Console.Write(table);
            Directory.CreateDirectory(outputDir);
            File.WriteAllText(Path.Combine(outputDir, "peer-summary.md"), table);
            File.WriteAllText(Path.Combine(outputDir, "peer.json"), JsonSerializer.Serialize(new { requests = results, throughput }, Indented));
            var csv = new StringBuilder("config,workload,kind,round,ttft_ms,total_ms,prompt_tokens,cached_tokens,completion_tokens,restore_ms,prompt_ms\n");
            foreach (var x in results)
            {
                csv.AppendLine(CultureInfo.InvariantCulture,
                    $"{x.Config},{x.Workload},{(x.Cold ? "cold" : "warm")},{x.Round},{x.TtftMs:F2},{x.TotalMs:F2},{x.PromptTokens},{x.CachedTokens},{x.CompletionTokens},{x.RestoreMs:F2},{x.PromptMs:F2}");
            }

            File.WriteAllText(Path.Combine(outputDir, "peer.csv"), csv.ToString());
            Console.WriteLine($"results: {outputDir}/peer.json, peer.csv, peer-summary.md");
        }
        finally
        {
            http.ForEach(c => c.Http.Dispose());
        }
    }

    internal sealed record RequestResult(string Config, string Workload, bool Cold, double TtftMs, double TotalMs, int PromptTokens, int CachedTokens,
        int CompletionTokens);

    private static async Task<List<RequestResult>> RunAsync(List<(string Name, string Url)> targets, List<WorkItem> items, int maxTokens,
        IProgressLine progress, CancellationToken ct)
    {
        var clients = targets.Select(t => (t.Name, Http: new HttpClient { BaseAddress = new Uri(t.Url), Timeout = TimeSpan.FromMinutes(30) })).ToList();
        try
        {
            foreach (var (_, http) in clients)
            {
                // One short unmeasured request first, so model load, JIT and first-touch costs land in no configuration's numbers.
                using var warm = await http.PostAsync("/v1/completions", JsonContent.Create(new JsonObject { ["prompt"] = "warm up", ["max_tokens"] = 2 }), ct);
                warm.EnsureSuccessStatusCode();
            }

            var results = new List<RequestResult>();
            for (var i = 0; i < items.Count; i++)
            {
                progress.Report("requests", (double)i / items.Count, $"{i}/{items.Count}");
                for (var k = 0; k < clients.Count; k++)
                {
                    var (name, http) = clients[(i + k) % clients.Count];
                    results.Add(await SendAsync(http, name, items[i], maxTokens, ct));
                }

                if ((i + 1) % 10 == 0 || i + 1 == items.Count)
                {
                    progress.Clear();
                    Console.WriteLine($"  {i + 1}/{items.Count} requests x {clients.Count} configurations");
                }
            }

            return results;
        }
        finally
        {
            clients.ForEach(c => c.Http.Dispose());
        }
    }

    private static async Task<RequestResult> SendAsync(HttpClient http, string config, WorkItem item, int maxTokens, CancellationToken ct)
    {
        var body = new JsonObject
        {
            ["prompt"] = item.Prompt,
            ["max_tokens"] = maxTokens,
            ["temperature"] = 0,
            ["stream"] = true,
            ["stream_options"] = new JsonObject { ["include_usage"] = true },
        };
        var start = Stopwatch.GetTimestamp();
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = JsonContent.Create(body) };
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, ct);
        response.EnsureSuccessStatusCode();
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(ct));
        double? ttft = null;
        int prompt = 0, cached = 0, completion = 0;
        while (await reader.ReadLineAsync(ct) is { } line)
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal) || line == "data: [DONE]")
            {
                continue;
            }

            ttft ??= Stopwatch.GetElapsedTime(start).TotalMilliseconds;
            var chunk = JsonNode.Parse(line["data: ".Length..]);
            if (chunk?["usage"] is JsonObject usage)
            {
                prompt = usage["prompt_tokens"]!.GetValue<int>();
                completion = usage["completion_tokens"]!.GetValue<int>();
                cached = usage["prompt_tokens_details"]?["cached_tokens"]?.GetValue<int>() ?? 0;
            }
        }

        var total = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        return new RequestResult(config, item.Workload, item.Cold, ttft ?? total, total, prompt, cached, completion);
    }

    /// <summary>Prints the serving table and writes serving.json, serving.csv, serving-summary.md and serving-ttft.png into <paramref name="outputDir"/>.</summary>
    internal static void Report(List<RequestResult> results, string outputDir, List<string> configs)
    {
        Directory.CreateDirectory(outputDir);
        var rows = results.Where(r => r.Workload != "chat-warmup").GroupBy(r => (r.Config, r.Workload, r.Cold)).OrderBy(g => g.Key.Workload).ThenBy(g => g.Key.Cold ? 0 : 1).ThenBy(g => configs.IndexOf(g.Key.Config))
            .Select(g => new
            {
                g.Key.Config,
                g.Key.Workload,
                Kind = g.Key.Cold ? "cold" : "warm",
                Requests = g.Count(),
                P50 = Statistics.Percentile(g.Select(r => r.TtftMs), 0.5),
                P90 = Statistics.Percentile(g.Select(r => r.TtftMs), 0.9),
                PromptTokens = g.Average(r => r.PromptTokens),
                CachedShare = g.Sum(r => (double)r.CachedTokens) / Math.Max(1, g.Sum(r => (double)r.PromptTokens)),
                TokensPerSecond = g.Sum(r => (double)r.PromptTokens + r.CompletionTokens) / (g.Sum(r => r.TotalMs) / 1000),
            }).ToList();
        var table = new StringBuilder();
        table.AppendLine(CultureInfo.InvariantCulture, $"| workload | requests | config | n | prompt tokens (mean) | cached | TTFT p50 ms | TTFT p90 ms | tokens/s |");
        table.AppendLine("|---|---|---|---:|---:|---:|---:|---:|---:|");
        foreach (var row in rows)
        {
            table.AppendLine(CultureInfo.InvariantCulture,
                $"| {row.Workload} | {row.Kind} | {row.Config} | {row.Requests} | {row.PromptTokens:F0} | {row.CachedShare:P0} | {row.P50:F1} | {row.P90:F1} | {row.TokensPerSecond:F0} |");
        }

        if (configs.Count >= 2)
        {
            table.AppendLine();
            foreach (var group in rows.GroupBy(r => (r.Workload, r.Kind)))
            {
                var baseline = group.FirstOrDefault(r => r.Config == configs[0]);
                foreach (var other in group.Where(r => r.Config != configs[0]))
                {
                    if (baseline is not null && other.P50 > 0)
                    {
                        table.AppendLine(CultureInfo.InvariantCulture,
                            $"{group.Key.Workload} {group.Key.Kind}: '{other.Config}' p50 TTFT is {baseline.P50 / other.P50:F2}x faster than '{configs[0]}' ({other.P50:F1} vs {baseline.P50:F1} ms)");
                    }
                }
            }
        }

        Console.WriteLine();
        Console.Write(table);
        File.WriteAllText(Path.Combine(outputDir, "serving-summary.md"), table.ToString());
        File.WriteAllText(Path.Combine(outputDir, "serving.json"), JsonSerializer.Serialize(new { summary = rows, requests = results },
            Indented));
        var csv = new StringBuilder("config,workload,kind,ttft_ms,total_ms,prompt_tokens,cached_tokens,completion_tokens\n");
        foreach (var r in results)
        {
            csv.AppendLine(CultureInfo.InvariantCulture, $"{r.Config},{r.Workload},{(r.Cold ? "cold" : "warm")},{r.TtftMs:F2},{r.TotalMs:F2},{r.PromptTokens},{r.CachedTokens},{r.CompletionTokens}");
        }

        File.WriteAllText(Path.Combine(outputDir, "serving.csv"), csv.ToString());
        var png = Path.Combine(outputDir, "serving-ttft.png");
        Charts.Bars(png, "Time to first token, p50 (ms)", configs,
            rows.Select(r => $"{r.Workload} {r.Kind}").Distinct().ToList(),
            (config, series) => rows.FirstOrDefault(r => r.Config == config && $"{r.Workload} {r.Kind}" == series)?.P50 ?? 0);
        Console.WriteLine($"results: {outputDir}/serving.json, serving.csv, serving-summary.md, serving-ttft.png");
    }

    internal static string FindDataFolder()
    {
        var env = Environment.GetEnvironmentVariable("LMCACHE_DATA");
        if (!string.IsNullOrEmpty(env))
        {
            return env;
        }

        for (var dir = new DirectoryInfo(Directory.GetCurrentDirectory()); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "..", "shared", "data");
            if (Directory.Exists(candidate))
            {
                return Path.GetFullPath(candidate);
            }
        }

        return Path.GetFullPath(Path.Combine("..", "shared", "data"));
    }

    /// <summary>Reads a data file after checking its sha256 against SHA256SUMS; null (with a message) when absent or altered.</summary>
    internal static string? ReadVerified(string dataDir, string relativePath)
    {
        var path = Path.Combine(dataDir, relativePath);
        var sums = Path.Combine(dataDir, "SHA256SUMS");
        if (!File.Exists(path) || !File.Exists(sums))
        {
            Console.Error.WriteLine($"skipping {relativePath}: not found under {dataDir} (set --data or LMCACHE_DATA)");
            return null;
        }

        var expected = File.ReadLines(sums).Select(l => l.Split("  ", 2)).FirstOrDefault(p => p.Length == 2 && p[1].Trim() == relativePath)?[0];
        var bytes = File.ReadAllBytes(path);
        var actual = Convert.ToHexStringLower(SHA256.HashData(bytes));
        if (expected is null || !string.Equals(expected, actual, StringComparison.OrdinalIgnoreCase))
        {
            Console.Error.WriteLine($"skipping {relativePath}: sha256 {actual} does not match SHA256SUMS ({expected ?? "no entry"})");
            return null;
        }

        return Encoding.UTF8.GetString(bytes);
    }

    internal static IEnumerable<WorkItem> LoadLeval(string dataDir, int documents, int questions, int maxChars)
    {
        var items = new List<WorkItem>();
        foreach (var file in new[] { "leval/quality.jsonl", "leval/tpo.jsonl" })
        {
            var text = ReadVerified(dataDir, file);
            if (text is null)
            {
                continue;
            }

            foreach (var line in text.Split('\n', StringSplitOptions.RemoveEmptyEntries).Take(Math.Max(0, documents / 2 + documents % 2)))
            {
                var doc = JsonNode.Parse(line)!;
                var document = doc["input"]!.GetValue<string>();
                document = document.Length > maxChars ? document[..maxChars] : document;
                var qs = doc["instructions"]!.AsArray().Select(q => q!.GetValue<string>()).Take(questions).ToList();
                for (var i = 0; i < qs.Count; i++)
                {
                    var question = qs[i].Length > 500 ? qs[i][..500] : qs[i];
                    items.Add(new WorkItem("long-doc-qa", file + "#" + items.Count, i == 0, $"{document}\n\nQuestion: {question}\nAnswer:"));
                }
            }
        }

        return items.Take(documents * questions);
    }

    internal static List<WorkItem> LoadShareGpt(string dataDir, int requests, int maxChars)
    {
        var items = new List<WorkItem>();
        var seen = new List<string>();
        foreach (var (file, take, measured) in new[] { ("sharegpt/warmup.json", int.MaxValue, false), ("sharegpt/run.json", requests, true) })
        {
            var text = ReadVerified(dataDir, file);
            if (text is null)
            {
                continue;
            }

            foreach (var entry in JsonNode.Parse(text)!.AsArray().Take(take))
            {
                var input = entry!["input"]!.GetValue<string>();
                input = input.Length > maxChars ? input[..maxChars] : input;
                // A request is warm when an earlier one of the replay shares a long prefix with it (a later round of the same chat).
                var cold = !seen.Any(s => s.AsSpan().CommonPrefixLength(input) >= 512);
                seen.Add(input);
                items.Add(new WorkItem(measured ? "multi-round-chat" : "chat-warmup", file, cold, input));
            }
        }

        return items;
    }
}
