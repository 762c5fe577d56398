using System.Text.Json;

namespace LMCacheSharp.Cli.Tests;

public sealed class BenchFleetCommandTests
{
    [Fact]
    public async Task Help_lists_the_workload_policy_and_fleet_flags()
    {
        var (code, stdout, _) = await LmcacheProcess.RunAsync(TimeSpan.FromSeconds(60), "bench", "fleet", "--help");
        Assert.Equal(0, code);
        foreach (var text in new[] { "--model", "--instances", "--threads", "--ctx-size", "--documents", "--users", "--questions", "--doc-words", "--max-tokens",
                     "--concurrency", "--policies", "--shared-cache", "--output", "kv-aware", "round-robin", "least-loaded", "session" })
        {
            Assert.Contains(text, stdout, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task Bad_options_are_exit_code_2_each_named_before_anything_starts()
    {
        var (code, stdout, stderr) = await LmcacheProcess.RunAsync(TimeSpan.FromSeconds(60), "bench", "fleet", "--policies", "kv-aware,random",
            "--shared-cache", "maybe", "--instances", "0", "--users", "5", "--documents", "2", "--model", "/nonexistent/model.gguf");
        Assert.Equal(2, code);
        Assert.Contains("--policies: takes a comma list of round-robin, kv-aware, least-loaded, session; got 'kv-aware,random'", stderr, StringComparison.Ordinal);
        Assert.Contains("--shared-cache: takes off, on or off,on; got 'maybe'", stderr, StringComparison.Ordinal);
        Assert.Contains("--instances: must be 1..16, got 0", stderr, StringComparison.Ordinal);
        Assert.Contains("--users: must be 1..2, got 5", stderr, StringComparison.Ordinal);
        Assert.Contains("--model: file not found: '/nonexistent/model.gguf'", stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("instances x", stdout, StringComparison.Ordinal); // no fleet was started
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)] // with a controller: the instances register there, the router takes them and its lookups from it
    public async Task A_tiny_fleet_run_writes_the_table_and_the_files_with_the_policy_row(bool controller)
    {
        var model = await Artifacts.TinyModelAsync();
        var output = Directory.CreateTempSubdirectory("lmcache-bench-fleet-").FullName;
        try
        {
            string[] args = ["bench", "fleet", "--model", model, "--policies", "kv-aware",
                "--shared-cache", "on", "--instances", "2", "--documents", "2", "--users", "1", "--questions", "2", "--doc-words", "60", "--max-tokens", "2",
                "--ctx-size", "2048", "-o", output];
            var (code, stdout, stderr) = await LmcacheProcess.RunAsync(TimeSpan.FromSeconds(120), controller ? [.. args, "--controller"] : args);
            Assert.True(code == 0, stdout + stderr);
            foreach (var file in new[] { "fleet.json", "fleet.csv", "fleet-summary.md", "fleet-ttft.png" })
            {
                Assert.True(new FileInfo(Path.Combine(output, file)).Length > 0, $"{file} missing or empty; {stdout}{stderr}");
            }

            var summary = await File.ReadAllTextAsync(Path.Combine(output, "fleet-summary.md"));
            Assert.Contains("| kv-aware | on | 4 |", summary, StringComparison.Ordinal);
            Assert.Contains("| kv-aware | on | 4 |", stdout, StringComparison.Ordinal);
            using var json = JsonDocument.Parse(await File.ReadAllTextAsync(Path.Combine(output, "fleet.json")));
            var requests = json.RootElement.GetProperty("requests").EnumerateArray().ToList();
            Assert.Equal(4, requests.Count);
            // Every request went through the router, which names the instance; the second questions find their document cached.
            Assert.All(requests, r => Assert.StartsWith("http://127.0.0.1:", r.GetProperty("Instance").GetString(), StringComparison.Ordinal));
            Assert.All(requests.Where(r => !r.GetProperty("Cold").GetBoolean()), r => Assert.True(r.GetProperty("CachedTokens").GetInt32() > 0, r.ToString()));
            Assert.Equal(5, (await File.ReadAllLinesAsync(Path.Combine(output, "fleet.csv"))).Length); // header + 4 requests
        }
        finally
        {
            Directory.Delete(output, recursive: true);
        }
    }

    [Fact]
    public async Task A_tiny_pd_run_measures_both_modes_and_writes_the_files()
    {
        var model = await Artifacts.TinyModelAsync();
        var output = Directory.CreateTempSubdirectory("lmcache-bench-pd-").FullName;
        try
        {
            var (code, stdout, stderr) = await LmcacheProcess.RunAsync(TimeSpan.FromSeconds(180), "bench", "pd", "--model", model, "--ctx-size", "2048",
                "--streams", "1", "--stream-tokens", "8", "--long-prompts", "2", "--long-words", "120", "--long-max-tokens", "2", "--interval", "0.2",
                "--repeats", "1", "-o", output);
            Assert.True(code == 0, stdout + stderr);
            var summary = await File.ReadAllTextAsync(Path.Combine(output, "pd-summary.md"));
            Assert.Contains("| colocated | 1 |", summary, StringComparison.Ordinal);
            Assert.Contains("| disaggregated | 1 |", summary, StringComparison.Ordinal);
            Assert.Contains("medians over runs, colocated -> disaggregated:", summary, StringComparison.Ordinal);
            using var json = JsonDocument.Parse(await File.ReadAllTextAsync(Path.Combine(output, "pd.json")));
            // The streams ran in both modes: gaps were measured.
            Assert.All(json.RootElement.GetProperty("summary").EnumerateArray(), run => Assert.True(run.GetProperty("Gaps").GetInt32() > 0, run.ToString()));
            Assert.True((await File.ReadAllLinesAsync(Path.Combine(output, "pd.csv"))).Length > 2);
        }
        finally
        {
            Directory.Delete(output, recursive: true);
        }
    }
}
