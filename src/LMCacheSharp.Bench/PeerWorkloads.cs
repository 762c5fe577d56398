using System.Diagnostics;
using System.Globalization;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json.Nodes;

namespace LMCacheSharp.Bench;

/// <summary>
/// The workloads llama-server was measured on (DESIGN section 9), with synthetic documents so that any model serves them:
/// interleaved long-document QA, interleaved multi-round chat, and N concurrent clients asking two questions each about
/// their own document. Each request goes to every configuration, in rotating order; chat histories are kept per
/// configuration (each continues its own answers).
/// </summary>
internal static class PeerWorkloads
{
    /// <summary>One measured request.</summary>
    internal sealed record Result(string Config, string Workload, bool Cold, double TtftMs, double TotalMs, int PromptTokens, int CachedTokens,
        int CompletionTokens, double RestoreMs, double PromptMs, int Round)
    {
        /// <summary>Of <see cref="CachedTokens"/>, those fetched from a tier below memory (serve's <c>timings.cache_lower_tier_n</c>).</summary>
        public int LowerTierTokens { get; init; }

        /// <summary>The instance a router sent the request to (its <c>X-LMCache-Instance</c> header), or null without a router.</summary>
        public string? Instance { get; init; }
    }

    /// <summary>Throughput of one configuration on the concurrent-clients workload.</summary>
    internal sealed record Throughput(string Config, int Clients, int Requests, double Seconds, int SecondQuestionHits, double SecondCachedShare);

    private static readonly string[] Words =
    [
        "the", "cache", "keeps", "keys", "and", "values", "of", "every", "token", "a", "model", "reads", "long", "document", "about", "rivers",
        "mountains", "trade", "ships", "harbor", "winter", "market", "letters", "council", "bridge", "engine", "garden", "station", "north",
        "south", "silver", "copper", "bread", "salt", "music", "school", "river", "lamp", "window", "clock", "tower", "road", "city", "field",
        "storm", "quiet", "early", "late", "people", "built", "carried", "found", "wrote", "measured", "counted", "opened", "closed",
    ];

    /// <summary>A deterministic pseudo-text document of <paramref name="words"/> words.</summary>
    public static string Document(int index, int words)
    {
        var random = new Random(1000 + index);
        var text = new StringBuilder($"Document {index}. ");
        for (var w = 0; w < words; w++)
        {
            text.Append(Words[random.Next(Words.Length)]);
            text.Append((w + 1) % 12 == 0 ? ". " : " ");
        }

        return text.ToString();
    }

    /// <summary>Question <paramref name="round"/> (0-based) about document <paramref name="document"/>.</summary>
    public static string Question(int document, int round) => round switch
    {
        0 => $"Question: what is document {document} mostly about?",
        1 => "Question: which places does it name?",
        _ => $"Question {round + 1}: summarize it in one line.",
    };

    /// <summary>
    /// Interleaved long-document QA: round 1 asks question 1 of every document (cold), rounds 2.. ask the next questions
    /// (warm: the document is the shared prefix).
    /// </summary>
    public static async Task<List<Result>> DocumentQaAsync(List<(string Name, HttpClient Http)> targets, int documents, int words, int rounds,
        int maxTokens, CancellationToken ct)
    {
        var results = new List<Result>();
        var turn = 0;
        for (var round = 0; round < rounds; round++)
        {
            for (var d = 0; d < documents; d++)
            {
                var prompt = Document(d, words) + "\n\n" + Question(d, round) + "\nAnswer:";
                foreach (var (name, http) in Rotate(targets, turn++))
                {
                    var (r, _) = await SendAsync(http, name, "doc-qa", round == 0, "/v1/completions", new JsonObject { ["prompt"] = prompt }, maxTokens, round, ct);
                    results.Add(r);
                }
            }
        }

        return results;
    }

    /// <summary>
    /// Interleaved multi-round chat: <paramref name="conversations"/> conversations of <paramref name="turns"/> turns, turn
    /// t of every conversation before turn t+1 of any. Turn 1 is cold; later turns resend the whole history, the previous
    /// answers included.
    /// </summary>
    public static async Task<List<Result>> ChatAsync(List<(string Name, HttpClient Http)> targets, int conversations, int turns, int words,
        int maxTokens, CancellationToken ct)
    {
        var results = new List<Result>();
        var histories = targets.ToDictionary(t => t.Name, _ => Enumerable.Range(0, conversations).Select(c => new JsonArray
        {
            new JsonObject { ["role"] = "system", ["content"] = $"You are assistant {c}; answer briefly." },
        }).ToList());
        var turn = 0;
        for (var t = 0; t < turns; t++)
        {
            for (var c = 0; c < conversations; c++)
            {
                var user = t == 0 ? Document(100 + c, words) + "\n\nWhat is this about?" : $"Tell me more about point {t} of that, conversation {c}.";
                foreach (var (name, http) in Rotate(targets, turn++))
                {
                    var history = histories[name][c];
                    history.Add(new JsonObject { ["role"] = "user", ["content"] = user });
                    var (r, text) = await SendAsync(http, name, "chat", t == 0, "/v1/chat/completions", new JsonObject { ["messages"] = history.DeepClone() },
                        maxTokens, t, ct);
                    history.Add(new JsonObject { ["role"] = "assistant", ["content"] = text });
                    results.Add(r);
                }
            }
        }

        return results;
    }

    /// <summary>
    /// <paramref name="clients"/> concurrent clients, each asking two questions about its own document, one after the other;
    /// the configurations run one after the other (in rotating order over <paramref name="repeats"/> repeats).
    /// </summary>
    public static async Task<(List<Result> Requests, List<Throughput> Throughput)> ConcurrentClientsAsync(List<(string Name, HttpClient Http)> targets,
        int clients, int words, int maxTokens, int repeats, CancellationToken ct)
    {
        var requests = new List<Result>();
        var throughput = new List<Throughput>();
        for (var rep = 0; rep < repeats; rep++)
        {
            foreach (var (name, http) in Rotate(targets, rep))
            {
                var start = Stopwatch.GetTimestamp();
                var perClient = await Task.WhenAll(Enumerable.Range(0, clients).Select(async c =>
                {
                    // Documents differ per repeat, so a repeat never hits what an earlier one stored.
                    var document = Document(200 + (rep * clients) + c, words);
                    var list = new List<Result>();
                    for (var q = 0; q < 2; q++)
                    {
                        var (r, _) = await SendAsync(http, name, "clients", q == 0, "/v1/completions",
                            new JsonObject { ["prompt"] = document + "\n\n" + Question(c, q) + "\nAnswer:" }, maxTokens, q, ct);
                        list.Add(r);
                    }

                    return list;
                }));
                var seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
                var all = perClient.SelectMany(l => l).ToList();
                requests.AddRange(all);
                var second = all.Where(r => !r.Cold).ToList();
                throughput.Add(new Throughput(name, clients, all.Count, seconds, second.Count(r => r.CachedTokens > 0),
                    second.Sum(r => (double)r.CachedTokens) / Math.Max(1, second.Sum(r => (double)r.PromptTokens))));
            }
        }

        return (requests, throughput);
    }

    private static IEnumerable<(string Name, HttpClient Http)> Rotate(List<(string Name, HttpClient Http)> targets, int turn) =>
        Enumerable.Range(0, targets.Count).Select(k => targets[(turn + k) % targets.Count]);

    /// <summary>
    /// Sends one greedy streamed request (<paramref name="body"/> plus max_tokens, temperature 0, stream with usage) and
    /// measures it: time to the first data event, total time, usage and serve's timings. Returns it and the text generated.
    /// </summary>
    public static async Task<(Result Result, string Text)> SendAsync(HttpClient http, string config, string workload, bool cold, string path,
        JsonObject body, int maxTokens, int round, CancellationToken ct)
    {
        body["max_tokens"] = maxTokens;
        body["temperature"] = 0;
        body["stream"] = true;
        body["stream_options"] = new JsonObject { ["include_usage"] = true };
        var start = Stopwatch.GetTimestamp();
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = JsonContent.Create(body) };
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, ct);
        response.EnsureSuccessStatusCode();
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(ct));
        double? ttft = null;
        int prompt = 0, cached = 0, completion = 0;
        double restoreMs = 0, promptMs = 0;
        var lowerTier = 0;
        var instance = response.Headers.TryGetValues("X-LMCache-Instance", out var values) ? values.FirstOrDefault() : null;
        var text = new StringBuilder();
        while (await reader.ReadLineAsync(ct) is { } line)
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal) || line == "data: [DONE]")
            {
                continue;
            }

            ttft ??= Stopwatch.GetElapsedTime(start).TotalMilliseconds;
            var chunk = JsonNode.Parse(line["data: ".Length..]);
            if (chunk?["choices"] is JsonArray { Count: > 0 } choices)
            {
                text.Append(choices[0]?["delta"]?["content"]?.GetValue<string>() ?? choices[0]?["text"]?.GetValue<string>());
            }

            if (chunk?["timings"] is JsonObject timings)
            {
                restoreMs = timings["restore_ms"]?.GetValue<double>() ?? 0;
                promptMs = timings["prompt_ms"]?.GetValue<double>() ?? 0;
                lowerTier = timings["cache_lower_tier_n"]?.GetValue<int>() ?? 0;
            }

            if (chunk?["usage"] is JsonObject usage)
            {
                prompt = usage["prompt_tokens"]!.GetValue<int>();
                completion = usage["completion_tokens"]!.GetValue<int>();
                cached = usage["prompt_tokens_details"]?["cached_tokens"]?.GetValue<int>() ?? 0;
            }
        }

        var total = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        return (new Result(config, workload, cold, ttft ?? total, total, prompt, cached, completion, restoreMs, promptMs, round)
        {
            LowerTierTokens = lowerTier,
            Instance = instance,
        }, text.ToString());
    }

    /// <summary>The peer table: per workload and configuration, cold and warm TTFT p50, their ratio and the cached tokens of warm requests.</summary>
    public static string Table(List<Result> results, List<Throughput> throughput, List<string> configs)
    {
        var table = new StringBuilder();
        table.AppendLine("| workload | config | cold n | cold TTFT p50 ms | warm n | warm TTFT p50 ms | cold/warm | warm prompt tokens | warm cached tokens (mean) | warm restore ms p50 | warm prefill ms p50 |");
        table.AppendLine("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var workload in results.Select(r => r.Workload).Distinct())
        {
            foreach (var config in configs)
            {
                var cold = results.Where(r => r.Workload == workload && r.Config == config && r.Cold).ToList();
                var warm = results.Where(r => r.Workload == workload && r.Config == config && !r.Cold).ToList();
                if (cold.Count == 0 && warm.Count == 0)
                {
                    continue;
                }

                var coldP50 = Statistics.Median(cold.Select(r => r.TtftMs));
                var warmP50 = Statistics.Median(warm.Select(r => r.TtftMs));
                table.AppendLine(CultureInfo.InvariantCulture,
                    $"| {workload} | {config} | {cold.Count} | {coldP50:F1} | {warm.Count} | {warmP50:F1} | {(warmP50 > 0 ? coldP50 / warmP50 : 0):F2}x | " +
                    $"{(warm.Count > 0 ? warm.Average(r => r.PromptTokens) : 0):F0} | {(warm.Count > 0 ? warm.Average(r => r.CachedTokens) : 0):F0} | " +
                    $"{Statistics.Median(warm.Select(r => r.RestoreMs)):F1} | {Statistics.Median(warm.Select(r => r.PromptMs)):F1} |");
            }
        }

        if (throughput.Count > 0)
        {
            table.AppendLine();
            table.AppendLine("| concurrent clients | config | runs | requests/s (median) | second questions with a hit | second-question prompt cached |");
            table.AppendLine("|---|---|---:|---:|---:|---:|");
            foreach (var config in configs)
            {
                var runs = throughput.Where(t => t.Config == config).ToList();
                if (runs.Count == 0)
                {
                    continue;
                }

                table.AppendLine(CultureInfo.InvariantCulture,
                    $"| {runs[0].Clients} x 2 | {config} | {runs.Count} | {Statistics.Median(runs.Select(t => t.Requests / t.Seconds)):F2} | " +
                    $"{runs.Sum(t => t.SecondQuestionHits)}/{runs.Sum(t => t.Requests / 2)} | {runs.Average(t => t.SecondCachedShare):P0} |");
            }

            var baseline = throughput.Where(t => t.Config == configs[0]).Select(t => t.Requests / t.Seconds).ToList();
            foreach (var config in configs.Skip(1))
            {
                var other = throughput.Where(t => t.Config == config).Select(t => t.Requests / t.Seconds).ToList();
                if (baseline.Count > 0 && other.Count > 0)
                {
                    table.AppendLine(CultureInfo.InvariantCulture, $"concurrent clients: '{config}' throughput is {Statistics.Median(other) / Statistics.Median(baseline):F2}x '{configs[0]}'");
                }
            }
        }

        return table.ToString();
    }
}
