using System.Security.Cryptography;
using System.Text;

namespace LMCacheSharp.Bench.Tests;

/// <summary>The real-data workloads of <c>bench serving</c>, read from a small data folder laid out as ../shared/data.</summary>
public sealed class ServingWorkloadTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("lmcache-bench-data-").FullName;
    private readonly StringBuilder _sums = new();

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private void Add(string relativePath, string text)
    {
        var path = Path.Combine(_dir, relativePath);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllText(path, text);
        _sums.Append(Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text)))).Append("  ").Append(relativePath).Append('\n');
        File.WriteAllText(Path.Combine(_dir, "SHA256SUMS"), _sums.ToString());
    }

    private static string Doc(string input, params string[] questions) =>
        $$"""{"input": "{{input}}", "instructions": [{{string.Join(", ", questions.Select(q => $"\"{q}\""))}}]}""";

    [Fact]
    public void LEval_documents_give_a_cold_first_question_and_warm_later_ones_sharing_the_document()
    {
        Add("leval/quality.jsonl", Doc("Alpha document text.", "Q1?", "Q2?", "Q3?") + "\n" + Doc("Beta document.", "Q4?", "Q5?") + "\n");
        Add("leval/tpo.jsonl", Doc("Gamma lecture.", "Q6?", "Q7?") + "\n");
        var items = ServingBench.LoadLeval(_dir, documents: 2, questions: 2, maxChars: 10).ToList();
        Assert.Equal(4, items.Count); // documents x questions, half of the documents from each file
        Assert.Equal([true, false, true, false], items.Select(i => i.Cold));
        Assert.All(items, i => Assert.Equal("long-doc-qa", i.Workload));
        Assert.Equal("Alpha docu\n\nQuestion: Q1?\nAnswer:", items[0].Prompt); // the document cut at --max-prompt-chars
        Assert.StartsWith("Alpha docu", items[1].Prompt, StringComparison.Ordinal);
        Assert.StartsWith("Gamma lect", items[2].Prompt, StringComparison.Ordinal);
        Assert.Equal(items.Select(i => i.Prompt), ServingBench.LoadLeval(_dir, 2, 2, 10).Select(i => i.Prompt)); // the same on every run
    }

    [Fact]
    public void ShareGPT_requests_are_warm_when_an_earlier_one_shares_a_long_prefix()
    {
        var history = new string('h', 600);
        Add("sharegpt/warmup.json", $$"""[{"input": "{{history}} first"}]""");
        Add("sharegpt/run.json", $$"""[{"input": "{{history}} second"}, {"input": "unrelated"}, {"input": "not replayed"}]""");
        var items = ServingBench.LoadShareGpt(_dir, requests: 2, maxChars: 6000);
        Assert.Equal(["chat-warmup", "multi-round-chat", "multi-round-chat"], items.Select(i => i.Workload));
        Assert.Equal([true, false, true], items.Select(i => i.Cold)); // the second shares 600 characters with the warm-up
    }

    [Fact]
    public void A_file_whose_checksum_does_not_match_is_skipped()
    {
        Add("leval/quality.jsonl", Doc("Alpha.", "Q1?") + "\n");
        File.AppendAllText(Path.Combine(_dir, "leval", "quality.jsonl"), "tampered\n");
        Assert.Null(ServingBench.ReadVerified(_dir, "leval/quality.jsonl"));
        Assert.Null(ServingBench.ReadVerified(_dir, "leval/absent.jsonl"));
        Assert.Empty(ServingBench.LoadLeval(_dir, 2, 2, 100));
    }
}
