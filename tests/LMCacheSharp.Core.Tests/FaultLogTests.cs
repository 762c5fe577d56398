using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Engine;
using LMCacheSharp.Core.Metrics;
using LMCacheSharp.Tests.Shared;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Time.Testing;

namespace LMCacheSharp.Core.Tests;

public sealed class FaultLogTests
{
    [Fact]
    public void The_first_fault_logs_at_once_and_later_ones_once_per_interval_with_their_count()
    {
        var time = new FakeTimeProvider();
        var logger = new ListLogger();
        using var metrics = new CacheMetrics { Faults = new FaultLog(logger, time, TimeSpan.FromSeconds(10)) };
        metrics.CorruptChunk("disk");
        Assert.Single(logger.Lines);
        Assert.Contains("1 corrupt chunk in the disk tier", logger.Lines[0], StringComparison.Ordinal);
        for (var i = 0; i < 5; i++)
        {
            metrics.CorruptChunk("disk");
        }

        metrics.DroppedStore("remote"); // another kind and tier: its own line
        Assert.Equal(2, logger.Lines.Count);
        time.Advance(TimeSpan.FromSeconds(11));
        metrics.CorruptChunk("disk");
        Assert.Equal(3, logger.Lines.Count);
        Assert.Contains("6 corrupt chunks in the disk tier", logger.Lines[2], StringComparison.Ordinal);
        Assert.Equal(7, metrics.Snapshot().CorruptChunks);
    }

    [Fact]
    public void A_state_is_logged_once_per_change()
    {
        var logger = new ListLogger();
        var log = new FaultLog(logger);
        log.State("remote tier lm://h:1", "down", "timeout");
        log.State("remote tier lm://h:1", "down", "timeout");
        log.State("remote tier lm://h:1", "up", "answers again", LogLevel.Information);
        log.State("remote tier lm://h:1", "up", "answers again", LogLevel.Information);
        Assert.Equal(2, logger.Lines.Count);
        Assert.Contains("is down", logger.Lines[0], StringComparison.Ordinal);
        Assert.Contains("is up", logger.Lines[1], StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_disk_tier_logs_what_its_start_up_scan_recovered()
    {
        var dir = Directory.CreateTempSubdirectory("lmcache-faultlog-").FullName;
        try
        {
            var options = new LMCacheOptions { ChunkSize = 16, LocalCpu = false, LocalDisk = dir, MaxLocalDiskSize = 0.01 };
            var tokens = TestData.Tokens(64, 3);
            await using (var engine = CacheEngine.Create(options, TestData.Namespace()))
            {
                await engine.StoreAsync(tokens, new FakeSequence(TestData.SmallFormat, tokens));
                await engine.FlushAsync();
            }

            File.WriteAllBytes(Directory.GetFiles(dir, "*.kv", SearchOption.AllDirectories)[0], [1, 2, 3]);
            var logger = new ListLogger();
            using var metrics = new CacheMetrics { Faults = new FaultLog(logger) };
            await using (CacheEngine.Create(options, TestData.Namespace(), metrics))
            {
                var line = Assert.Single(logger.Lines, l => l.Contains("recovered", StringComparison.Ordinal));
                Assert.Contains("recovered 3 chunk files", line, StringComparison.Ordinal);
                Assert.Contains("removed 1 corrupt", line, StringComparison.Ordinal);
            }
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
