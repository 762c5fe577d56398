using System.Globalization;
using System.Text.Json;

namespace LMCacheSharp.Bench.Tests;

/// <summary>What the benches write: the files, the CSV's header and rows, the JSON's shape, the PNG chart.</summary>
public sealed class ReportTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("lmcache-bench-tests-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static void AssertPng(string path)
    {
        var bytes = File.ReadAllBytes(path);
        Assert.True(bytes.Length > 1000, $"{path}: {bytes.Length} bytes");
        Assert.Equal([0x89, (byte)'P', (byte)'N', (byte)'G'], bytes[..4]);
    }

    [Fact]
    public void Fleet_writes_json_csv_summary_and_chart_with_one_csv_line_per_request()
    {
        PeerWorkloads.Result R(string config, bool cold, int cached, int lower) =>
            new(config, "fleet", cold, 10, 20, 100, cached, 2, 1, 5, cold ? 0 : 1) { LowerTierTokens = lower, Instance = "http://127.0.0.1:9001" };
        List<FleetRunSummary> runs =
        [
            new("round-robin", "off", 2, 100, 120, 90, 200, 0, 0, 1, 2, "9001:2"),
            new("kv-aware", "off", 2, 40, 50, 30, 200, 96, 0, 1, 2, "9001:2"),
        ];
        List<PeerWorkloads.Result> requests = [R("round-robin/off", true, 0, 0), R("round-robin/off", false, 0, 0), R("kv-aware/off", true, 0, 0), R("kv-aware/off", false, 96, 32)];
        FleetBench.Report(runs, requests, _dir);

        var csv = File.ReadAllLines(Path.Combine(_dir, "fleet.csv"));
        Assert.Equal("policy,shared_cache,instance,kind,round,ttft_ms,total_ms,prompt_tokens,cached_tokens,memory_hit_tokens,remote_hit_tokens,completion_tokens,restore_ms,prompt_ms", csv[0]);
        Assert.Equal(5, csv.Length);
        Assert.Equal("kv-aware,off,http://127.0.0.1:9001,warm,1,10.00,20.00,100,96,64,32,2,1.00,5.00", csv[4]); // memory = cached - lower tier
        using var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(_dir, "fleet.json")));
        Assert.Equal(2, json.RootElement.GetProperty("summary").GetArrayLength());
        Assert.Equal(4, json.RootElement.GetProperty("requests").GetArrayLength());
        Assert.Equal("kv-aware", json.RootElement.GetProperty("summary")[1].GetProperty("Policy").GetString());
        var summary = File.ReadAllText(Path.Combine(_dir, "fleet-summary.md"));
        Assert.Contains("| kv-aware | off | 2 | 40.0 | 50.0 | 30.0 | 200 | 96 | 0 | 2.00 | 9001:2 |", summary, StringComparison.Ordinal);
        Assert.Contains("shared cache off: kv-aware p50 TTFT is 2.50x round-robin's (40.0 vs 100.0 ms); target >= 2.0x: met", summary, StringComparison.Ordinal);
        AssertPng(Path.Combine(_dir, "fleet-ttft.png"));
    }

    [Fact]
    public void Pd_writes_one_row_per_run_the_medians_over_runs_and_every_gap()
    {
        List<PdRunSummary> runs =
        [
            new("colocated", 1, 3, 10, 200, 300, 400, 5, 1.5, 20, 900, 50, 8),
            new("disaggregated", 1, 2, 5, 20, 30, 40, 0, 0, 60, 800, 80, 8),
            new("colocated", 2, 3, 12, 220, 320, 420, 7, 2.5, 22, 950, 45, 8),
            new("disaggregated", 2, 2, 5, 30, 40, 50, 1, 0.05, 70, 850, 75, 8),
        ];
        PdBench.Report(runs, [("colocated", 1, 1.5), ("disaggregated", 1, 2.25)], _dir);
        var summary = File.ReadAllText(Path.Combine(_dir, "pd-summary.md"));
        Assert.Contains("| disaggregated | 2 | 2 | 5.0 | 30.0 | 40.0 | 50.0 | 1 | 0.05 | 70 | 850 | 75.0 |", summary, StringComparison.Ordinal);
        // Medians over the two runs of each mode.
        Assert.Contains("colocated -> disaggregated: ITL p99.9 310.0 -> 35.0 ms, max 410.0 -> 45.0 ms, streams stalled 2.00 -> 0.03 s; " +
            "stream TTFT p50 21 -> 65 ms, long-prompt TTFT p50 925 -> 825 ms; stream tokens/s 47.5 -> 77.5", summary, StringComparison.Ordinal);
        Assert.Equal(["mode,run,itl_ms", "colocated,1,1.500", "disaggregated,1,2.250"], File.ReadAllLines(Path.Combine(_dir, "pd.csv")));
        using var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(_dir, "pd.json")));
        Assert.Equal(4, json.RootElement.GetProperty("summary").GetArrayLength());
    }

    [Fact]
    public void Serving_writes_json_csv_summary_and_chart_and_compares_each_configuration_with_the_first()
    {
        List<ServingBench.RequestResult> results =
        [
            new("off", "long-doc-qa", true, 1000, 1100, 900, 0, 16),
            new("on", "long-doc-qa", true, 1000, 1100, 900, 0, 16),
            new("off", "long-doc-qa", false, 800, 900, 920, 0, 16),
            new("on", "long-doc-qa", false, 100, 200, 920, 900, 16),
            new("off", "chat-warmup", true, 5, 6, 10, 0, 1), // a warm-up: in the CSV and JSON, not in the table
        ];
        ServingBench.Report(results, _dir, ["off", "on"]);
        var csv = File.ReadAllLines(Path.Combine(_dir, "serving.csv"));
        Assert.Equal("config,workload,kind,ttft_ms,total_ms,prompt_tokens,cached_tokens,completion_tokens", csv[0]);
        Assert.Equal(6, csv.Length);
        Assert.Equal("on,long-doc-qa,warm,100.00,200.00,920,900,16", csv[4]);
        using var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(_dir, "serving.json")));
        Assert.Equal(4, json.RootElement.GetProperty("summary").GetArrayLength()); // (off, on) x (cold, warm)
        Assert.Equal(5, json.RootElement.GetProperty("requests").GetArrayLength());
        var summary = File.ReadAllText(Path.Combine(_dir, "serving-summary.md"));
        Assert.DoesNotContain("chat-warmup", summary, StringComparison.Ordinal);
        Assert.Contains("long-doc-qa warm: 'on' p50 TTFT is 8.00x faster than 'off' (100.0 vs 800.0 ms)", summary, StringComparison.Ordinal);
        AssertPng(Path.Combine(_dir, "serving-ttft.png"));
    }

    [Fact]
    public async Task Ttft_writes_json_csv_and_chart_with_the_derived_ratios()
    {
        List<TtftRow> rows =
        [
            new("m", "StateBlob", true, 512, 4096, 200, 2, 4, 1, 0.5, 2, 512),
            new("m", "StateBlob", true, 1024, 4096, 400, 4, 5, 2, 1, 2, 1024),
        ];
        await TtftBench.WriteAsync(_dir, rows, TestContext.Current.CancellationToken);
        var csv = File.ReadAllLines(Path.Combine(_dir, "ttft.csv"));
        Assert.StartsWith("model,layout,flash_attention,tokens,kv_bytes_per_token,cached_tokens,cold_ttft_ms,warm_ttft_ms,", csv[0], StringComparison.Ordinal);
        Assert.Equal(3, csv.Length);
        Assert.Equal("m,StateBlob,True,512,4096,512,200.000,4.000,1.000,0.500,2.000,2.000,50.00,1.600,50.0,1.000", csv[1]);
        Assert.Equal(csv[0].Split(',').Length, csv[1].Split(',').Length);
        using var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(_dir, "ttft.json")));
        var first = json.RootElement[0];
        Assert.Equal(50, first.GetProperty("Speedup").GetDouble()); // cold / warm
        Assert.Equal(1.6, first.GetProperty("WarmVsRawPlusDecode").GetDouble(), 9); // 4 / (0.5 + 2)
        AssertPng(Path.Combine(_dir, "ttft.png"));
        var table = TtftBench.Table(rows).Split(Environment.NewLine, StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(4, table.Length);
        Assert.Equal(table[0].Count(c => c == '|'), table[2].Count(c => c == '|')); // every row has the header's columns
        Assert.Contains(string.Create(CultureInfo.InvariantCulture, $"| {rows[1].Speedup:F0}x |"), table[3], StringComparison.Ordinal);
    }
}
