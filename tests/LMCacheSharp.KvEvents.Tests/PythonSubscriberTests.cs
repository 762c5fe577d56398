using System.Diagnostics;
using System.Text.Json.Nodes;
using LMCacheSharp.Core.Events;

namespace LMCacheSharp.KvEvents.Tests;

/// <summary>
/// The stream read by scripts/kv_events_subscriber.py (pyzmq over libzmq, msgpack): another ZeroMQ and another msgpack
/// than ours decode what the publisher sends, through the replay socket. Needs /usr/bin/python3 with python3-zmq and
/// python3-msgpack, which .ci/services installs.
/// </summary>
public class PythonSubscriberTests
{
    [Fact]
    public async Task The_python_subscriber_decodes_every_event_through_libzmq_and_msgpack()
    {
        var script = FindScript();
        if (!File.Exists("/usr/bin/python3") || Run("/usr/bin/python3", "-c \"import zmq, msgpack\"", out _) != 0)
        {
            Assert.Skip("/usr/bin/python3 lacks python3-zmq or python3-msgpack (installed by .ci/services)");
        }

        using var publisher = new ZmqKvEventPublisher(new KvEventPublisherOptions { Endpoint = "tcp://127.0.0.1:0", ReplayEndpoint = "tcp://127.0.0.1:0", BlockSize = 4 });
        var a = KvEventBatchWriterTests.Key(long.MinValue + 7);
        var b = KvEventBatchWriterTests.Key(123456789012345);
        // One batch each (a flush between): batch boundaries otherwise depend on the publisher thread's timing.
        publisher.Publish(KvEvent.Stored(KvMedium.Cpu, a, null, [1, 2, 3, 4]));
        await publisher.FlushAsync();
        publisher.Publish(KvEvent.Stored(KvMedium.Cpu, b, a, [5, 6, 7, 8]));
        await publisher.FlushAsync();
        publisher.Publish(KvEvent.Removed(KvMedium.Disk, b));
        await publisher.FlushAsync();
        publisher.Publish(KvEvent.AllCleared());
        await publisher.FlushAsync();

        var code = Run("/usr/bin/python3", $"\"{script}\" --endpoint {publisher.Endpoint} --replay {publisher.ReplayEndpoint} --from-seq 0 --count 4 --timeout 5", out var output);
        Assert.True(code == 0, output);
        var lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonNode.Parse(l)!).ToList();
        Assert.Equal(4, lines.Count);
        Assert.Equal([0L, 1, 2, 3], lines.Select(l => l["seq"]!.GetValue<long>()));
        Assert.Equal("BlockStored", lines[0]["type"]!.GetValue<string>());
        Assert.Equal([a.ToInt64()], lines[0]["block_hashes"]!.AsArray().Select(h => h!.GetValue<long>()));
        Assert.Null(lines[0]["parent_block_hash"]);
        Assert.Equal([1, 2, 3, 4], lines[0]["token_ids"]!.AsArray().Select(t => t!.GetValue<int>()));
        Assert.Equal(4, lines[0]["block_size"]!.GetValue<int>());
        Assert.Equal("CPU", lines[0]["medium"]!.GetValue<string>());
        Assert.Equal(0, lines[0]["dp_rank"]!.GetValue<int>());
        Assert.Equal([b.ToInt64()], lines[1]["block_hashes"]!.AsArray().Select(h => h!.GetValue<long>()));
        Assert.Equal(a.ToInt64(), lines[1]["parent_block_hash"]!.GetValue<long>());
        Assert.Equal([5, 6, 7, 8], lines[1]["token_ids"]!.AsArray().Select(t => t!.GetValue<int>()));
        Assert.Equal("BlockRemoved", lines[2]["type"]!.GetValue<string>());
        Assert.Equal("DISK", lines[2]["medium"]!.GetValue<string>());
        Assert.Equal("AllBlocksCleared", lines[3]["type"]!.GetValue<string>());
    }

    private static string FindScript()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var path = Path.Combine(dir.FullName, "scripts", "kv_events_subscriber.py");
            if (File.Exists(path))
            {
                return path;
            }
        }

        throw new FileNotFoundException("scripts/kv_events_subscriber.py not found above " + AppContext.BaseDirectory);
    }

    private static int Run(string file, string arguments, out string output)
    {
        using var process = Process.Start(new ProcessStartInfo(file, arguments) { RedirectStandardOutput = true, RedirectStandardError = true })!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromSeconds(60)))
        {
            process.Kill(entireProcessTree: true);
        }

        output = stdout.Result + stderr.Result;
        return process.HasExited ? process.ExitCode : -1;
    }
}
