using LMCacheSharp.Core.Configuration;

namespace LMCacheSharp.Bench.Tests;

public sealed class EngineBenchTests
{
    [Fact]
    public async Task A_small_run_stores_finds_and_restores_the_whole_prompt_and_reports_medians()
    {
        var options = new LMCacheOptions { ChunkSize = 64, MaxLocalCpuSize = 0.01 };
        var result = await EngineBench.RunAsync(options, new EngineBenchSettings(1024, 256, 3), TestContext.Current.CancellationToken);
        Assert.Equal((1024, 64, 1024L * 256), (result.Tokens, result.ChunkTokens, result.KvBytes));
        Assert.All(new[] { result.MemcpyGBps, result.StoreGBps, result.RetrieveGBps, result.LookupMs }, v => Assert.True(v > 0 && double.IsFinite(v), v.ToString()));
        Assert.Equal(0.01, options.MaxLocalCpuSize); // the caller's options are not changed (the bench enlarges its own copy)

        var table = EngineBench.Table(result).Split(Environment.NewLine, StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal("prompt 1024 tokens, chunk 64 tokens = 16.0 KiB, 16 chunks, 256.0 KiB of KV", table[0]);
        Assert.Equal(6, table.Length);
        Assert.StartsWith("retrieve (memory tier)", table[4], StringComparison.Ordinal);
    }

    [Fact]
    public async Task Invalid_settings_are_refused_before_any_work() =>
        await Assert.ThrowsAsync<ArgumentException>(() => EngineBench.RunAsync(new LMCacheOptions(), new EngineBenchSettings(10, 2, 1), TestContext.Current.CancellationToken));
}
