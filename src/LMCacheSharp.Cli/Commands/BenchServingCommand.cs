using System.CommandLine;
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

namespace LMCacheSharp.Cli.Commands;

/// <summary>
/// <c>lmcache bench serving</c>: replays real workloads (long-document QA from L-Eval, multi-round chat from ShareGPT)
/// through the OpenAI API and reports time to first token, cold vs warm, with the cache off and on, measured in one run.
/// Without <c>--url</c> it starts the servers itself (one per configuration, one after the other, same model).
/// </summary>
internal static class BenchServingCommand
{
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    public static Command Create()
    {
        var urls = new Option<string[]>("--url") { Description = "OpenAI endpoint(s) to measure instead of in-process servers (e.g. http://127.0.0.1:8000)." };
        var model = new Option<string?>("--model") { Description = "GGUF for the in-process servers. Default: the generated default model (random weights)." };
        var configs = new Option<string>("--configs") { Description = "In-process configurations: off (plain llama.cpp), context (in-context sharing only), tiers (cache tiers only), on (both).", DefaultValueFactory = _ => "off,on" };
        var workload = new Option<string>("--workload")
        {
            Description = "Comma list of leval, sharegpt (real data), doc-qa, chat, clients (the llama-server peer workloads, synthetic documents); all = leval,sharegpt; peer = doc-qa,chat,clients.",
            DefaultValueFactory = _ => "all",
        };
        var docWords = new Option<int>("--doc-words") { Description = "Words per synthetic document (doc-qa, chat, clients).", DefaultValueFactory = _ => 450 };
        var rounds = new Option<int>("--rounds") { Description = "doc-qa: questions per document, asked round by round over all documents.", DefaultValueFactory = _ => 3 };
        var conversations = new Option<int>("--conversations") { Description = "chat: conversations, interleaved turn by turn.", DefaultValueFactory = _ => 4 };
        var turns = new Option<int>("--turns") { Description = "chat: turns per conversation.", DefaultValueFactory = _ => 5 };
        var clients = new Option<int>("--clients") { Description = "clients: concurrent clients, two questions each on their own document.", DefaultValueFactory = _ => 8 };
        var clientWords = new Option<int?>("--client-doc-words") { Description = "clients: words per client document. Default: half of --doc-words." };
        var repeats = new Option<int>("--repeats") { Description = "clients: runs per configuration (rotating order).", DefaultValueFactory = _ => 2 };
        var concurrent = new Option<int>("--max-concurrent") { Description = "In-process servers: requests decoded together.", DefaultValueFactory = _ => 4 };
        var threads = new Option<int>("--threads") { Description = "In-process servers: llama.cpp threads.", DefaultValueFactory = _ => Environment.ProcessorCount };
        var chunk = new Option<int>("--chunk-size") { Description = "In-process servers: chunk_size.", DefaultValueFactory = _ => 256 };
        var data = new Option<string?>("--data") { Description = "Folder with leval/ and sharegpt/ (default: ../shared/data from the current folder or its parents)." };
        var documents = new Option<int>("--documents") { Description = "L-Eval documents (the first question of each is cold).", DefaultValueFactory = _ => 4 };
        var questions = new Option<int>("--questions") { Description = "Questions per document.", DefaultValueFactory = _ => 4 };
        var requests = new Option<int>("--requests") { Description = "ShareGPT requests replayed from run.json (after warmup.json).", DefaultValueFactory = _ => 40 };
        var maxChars = new Option<int>("--max-prompt-chars") { Description = "Prompts are cut to this many characters (keeps the prefix structure).", DefaultValueFactory = _ => 6000 };
        var maxTokens = new Option<int>("--max-tokens") { Description = "Tokens generated per request.", DefaultValueFactory = _ => 16 };
        var ctx = new Option<int>("--ctx-size") { Description = "Context of the in-process servers.", DefaultValueFactory = _ => 8192 };
        var output = new Option<string>("--output", "-o") { Description = "Folder for results (JSON, CSV, PNG).", DefaultValueFactory = _ => "bench-results" };
        var command = new Command("serving", "TTFT on real workloads through the OpenAI API: cold vs warm, cache off vs on.")
        {
            urls, model, configs, workload, data, documents, questions, requests, maxChars, maxTokens, ctx, output, docWords, rounds, conversations, turns,
            clients, repeats, concurrent, threads, chunk, clientWords,
        };
        var llama = new LlamaNativeOptions();
        llama.AddTo(command);
        command.SetAction(async (r, ct) =>
        {
            var dataDir = r.GetValue(data) ?? FindDataFolder();
            var names = r.GetValue(workload)!.ToLowerInvariant().Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .SelectMany(w => w switch { "all" => ["leval", "sharegpt"], "peer" => ["doc-qa", "chat", "clients"], _ => new[] { w } }).ToHashSet();
            if (names.Count == 0 || names.Any(w => w is not ("leval" or "sharegpt" or "doc-qa" or "chat" or "clients")))
            {
                await Console.Error.WriteLineAsync($"--workload takes a comma list of leval, sharegpt, doc-qa, chat, clients, all, peer; got '{r.GetValue(workload)}'");
                return 2;
            }

            if (llama.LibraryErrors(r).Concat(llama.GpuLayersErrors(r)).ToList() is { Count: > 0 } problems)
            {
                await Console.Error.WriteLineAsync(string.Join(Environment.NewLine, problems));
                return 2;
            }

            var items = new List<WorkItem>();
            if (names.Contains("leval"))
            {
                items.AddRange(LoadLeval(dataDir, r.GetValue(documents), r.GetValue(questions), r.GetValue(maxChars)));
            }

            if (names.Contains("sharegpt"))
            {
                items.AddRange(LoadShareGpt(dataDir, r.GetValue(requests), r.GetValue(maxChars)));
            }

            var peer = names.Intersect(["doc-qa", "chat", "clients"]).ToList();
            if (items.Count == 0 && peer.Count == 0)
            {
                await Console.Error.WriteLineAsync("no workload could be loaded (see the messages above)");
                return 1;
            }

            var endpoints = r.GetValue(urls) ?? [];
            var targets = new List<(string Name, string Url)>();
            var apps = new List<WebApplication>();
            try
            {
                if (endpoints.Length > 0)
                {
                    targets.AddRange(endpoints.Select(u => (u, u)));
                }
                else
                {
                    llama.Apply(r);
                    // All configurations run side by side and each request goes to every one of them in turn (rotating
                    // the order), so that noise on a shared machine spreads over all configurations alike.
                    foreach (var config in r.GetValue(configs)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
                    {
                        if (config is not ("off" or "context" or "tiers" or "on"))
                        {
                            await Console.Error.WriteLineAsync($"unknown configuration '{config}': use off, context, tiers, on");
                            return 2;
                        }

                        var options = new ServingOptions
                        {
                            ModelPath = r.GetValue(model),
                            ContextSize = r.GetValue(ctx),
                            MaxConcurrentRequests = r.GetValue(concurrent),
                            Threads = r.GetValue(threads),
                            GpuLayers = r.GetValue(llama.GpuLayers),
                            EnableCache = config is "tiers" or "on",
                            EnableInContextSharing = config is "context" or "on",
                            LogLevel = LogLevel.Warning,
                        };
                        var app = ServingApp.Build(options, new LMCacheOptions { MaxLocalCpuSize = 4, ChunkSize = r.GetValue(chunk) }, ["http://127.0.0.1:0"]);
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
                    var results = await RunAsync(targets, items, r.GetValue(maxTokens), ct);
                    Report(results, r.GetValue(output)!, configNames);
                }

                if (peer.Count > 0)
                {
                    await RunPeerAsync(targets, peer, r.GetValue(docWords), r.GetValue(clientWords) ?? r.GetValue(docWords) / 2, r.GetValue(documents),
                        r.GetValue(rounds), r.GetValue(conversations), r.GetValue(turns), r.GetValue(clients), r.GetValue(repeats), r.GetValue(maxTokens),
                        r.GetValue(output)!, ct);
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

            return 0;
        });
        return command;
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

            var results = new List<BenchPeerWorkloads.Result>();
            var throughput = new List<BenchPeerWorkloads.Throughput>();
            if (workloads.Contains("doc-qa"))
            {
                Console.WriteLine($"doc-qa: {documents} documents x {rounds} questions, {words} words each");
                results.AddRange(await BenchPeerWorkloads.DocumentQaAsync(http, documents, words, rounds, maxTokens, ct));
            }

            if (workloads.Contains("chat"))
            {
                Console.WriteLine($"chat: {conversations} conversations x {turns} turns, interleaved");
                results.AddRange(await BenchPeerWorkloads.ChatAsync(http, conversations, turns, words / 3, maxTokens, ct));
            }

            if (workloads.Contains("clients"))
            {
                Console.WriteLine($"clients: {clients} concurrent clients x 2 questions, {repeats} runs per configuration");
                var (requests, runs) = await BenchPeerWorkloads.ConcurrentClientsAsync(http, clients, clientWords, maxTokens, repeats, ct);
                results.AddRange(requests);
                throughput.AddRange(runs);
            }

            var table = BenchPeerWorkloads.Table(results, throughput, [.. targets.Select(t => t.Name)]);
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
        CancellationToken ct)
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
            var progress = ProgressLine.ForStderr();
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

    private static void Report(List<RequestResult> results, string outputDir, List<string> configs)
    {
        Directory.CreateDirectory(outputDir);
        var rows = results.Where(r => r.Workload != "chat-warmup").GroupBy(r => (r.Config, r.Workload, r.Cold)).OrderBy(g => g.Key.Workload).ThenBy(g => g.Key.Cold ? 0 : 1).ThenBy(g => configs.IndexOf(g.Key.Config))
            .Select(g => new
            {
                g.Key.Config,
                g.Key.Workload,
                Kind = g.Key.Cold ? "cold" : "warm",
                Requests = g.Count(),
                P50 = Percentile(g.Select(r => r.TtftMs), 0.5),
                P90 = Percentile(g.Select(r => r.TtftMs), 0.9),
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

    /// <summary>The <paramref name="p"/> quantile (0..1) of <paramref name="values"/>, interpolated between ranks; 0 when empty.</summary>
    internal static double Percentile(IEnumerable<double> values, double p)
    {
        var sorted = values.OrderBy(v => v).ToArray();
        if (sorted.Length == 0)
        {
            return 0;
        }

        var rank = p * (sorted.Length - 1);
        var lo = (int)Math.Floor(rank);
        var hi = (int)Math.Ceiling(rank);
        return sorted[lo] + ((sorted[hi] - sorted[lo]) * (rank - lo));
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

    private static IEnumerable<WorkItem> LoadLeval(string dataDir, int documents, int questions, int maxChars)
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

    private static List<WorkItem> LoadShareGpt(string dataDir, int requests, int maxChars)
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
