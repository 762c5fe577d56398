using System.Diagnostics;
using System.Net.Http.Json;
using System.Text.Json.Nodes;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Remote;

namespace LMCacheSharp.Serving.Tests;

/// <summary>
/// A remote tier that stalls must never slow or stop inference (issue 9, section 4): the inference thread restores from
/// pinned memory only, so running requests keep decoding while a new request's lookup waits out the tier timeout, and
/// that request is then served as a miss.
/// </summary>
public sealed class StalledRemoteTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Running_requests_keep_decoding_while_the_remote_stalls_and_the_new_request_is_a_miss()
    {
        var timeout = TimeSpan.FromSeconds(1);
        var connector = new StallingConnector();
        await using var server = await TestServer.StartAsync(o =>
        {
            o.ModelPath = SmallModel.File;
            o.ContextSize = 8192;
            o.EnableInContextSharing = false;
            o.MaxConcurrentRequests = 5; // room for the new request beside the four (4 x 1810 + its cells fit the context)
        }, lowerTiers: (_, metrics) => [new RemoteStorageTier(connector, timeout, metrics)]);

        // Four long generations decode together; each records when its tokens arrive.
        var arrivals = new List<long>[4];
        var streams = Enumerable.Range(0, 4).Select(i =>
        {
            arrivals[i] = [];
            return StreamAsync(server, $"Story number {i} begins here and goes on", 1800, arrivals[i]);
        }).ToArray();
        await WaitUntilAsync(() => arrivals.All(a => Count(a) >= 20));

        var before = Stopwatch.GetTimestamp();
        await Task.Delay(TimeSpan.FromMilliseconds(500)); // a window of normal decoding
        var stallStart = Stopwatch.GetTimestamp();
        connector.Stalled = true;
        var (text, cached, _) = await server.CompleteAsync("A brand new prompt that no tier holds yet, asked while the remote stalls", 4);
        var stallEnd = Stopwatch.GetTimestamp();
        var allRunning = streams.All(t => !t.IsCompleted);
        connector.Stalled = false;

        var waited = Stopwatch.GetElapsedTime(stallStart, stallEnd);
        var normal = TokensBetween(arrivals, before, stallStart);
        // The window in which the new request's lookup is still held by the stalled tier (it is not admitted yet, so its
        // prefill does not compete with the running decodes): the loop must go on at its pace.
        var lookupEnd = stallStart + (long)(timeout.TotalSeconds * 0.9 * Stopwatch.Frequency);
        var duringStall = TokensBetween(arrivals, stallStart, lookupEnd);
        var normalRate = normal / Stopwatch.GetElapsedTime(before, stallStart).TotalSeconds;
        var stallRate = duringStall / (timeout.TotalSeconds * 0.9);
        output.WriteLine($"decode rate of 4 running requests: {normalRate:F0} tok/s before, {stallRate:F0} tok/s while the remote stalled " +
            $"({stallRate / normalRate:P0}); the new request waited {waited.TotalMilliseconds:F0} ms (tier timeout {timeout.TotalMilliseconds} ms)");

        Assert.NotNull(text);
        Assert.True(cached <= 1, $"cached {cached}"); // a miss in the stalled tier (the BOS token may come from memory)
        Assert.True(allRunning, "a generation ended before the stall did: the window did not measure four running requests");
        Assert.True(waited >= timeout * 0.9, $"the lookup returned after {waited}: it did not wait for the stalled tier");
        Assert.True(connector.StalledCalls > 0);
        // The assertion is on tokens counted, with a generous bound: a stalled tier must not stop the loop (it did when the
        // inference thread waited on tier I/O: no token at all in the window), while a loaded CI machine may slow it somewhat.
        Assert.True(stallRate > normalRate * 0.25, $"decoding slowed from {normalRate:F0} to {stallRate:F0} tok/s while the remote stalled");
        await Task.WhenAll(streams);
    }

    private static int Count(List<long> a)
    {
        lock (a)
        {
            return a.Count;
        }
    }

    private static int TokensBetween(List<long>[] arrivals, long from, long to) => arrivals.Sum(a =>
    {
        lock (a)
        {
            return a.Count(t => t >= from && t < to);
        }
    });

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        var deadline = Stopwatch.GetTimestamp() + Stopwatch.Frequency * 60;
        while (!condition())
        {
            Assert.True(Stopwatch.GetTimestamp() < deadline, "the generations did not start");
            await Task.Delay(20);
        }
    }

    private static async Task StreamAsync(TestServer server, string prompt, int maxTokens, List<long> arrivals)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
        {
            Content = JsonContent.Create(new { prompt, max_tokens = maxTokens, temperature = 0, stream = true, ignore_eos = true }),
        };
        using var response = await server.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        response.EnsureSuccessStatusCode();
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        while (await reader.ReadLineAsync() is { } line)
        {
            if (line.StartsWith("data: {", StringComparison.Ordinal) && JsonNode.Parse(line[6..])!["choices"]![0]!["text"]!.GetValue<string>().Length > 0)
            {
                lock (arrivals)
                {
                    arrivals.Add(Stopwatch.GetTimestamp());
                }
            }
        }
    }

    /// <summary>A remote store that holds nothing and, while <see cref="Stalled"/>, never answers.</summary>
    private sealed class StallingConnector : IRemoteConnector
    {
        private int _stalledCalls;

        public volatile bool Stalled;

        public int StalledCalls => Volatile.Read(ref _stalledCalls);

        public string Name => "stalling";

        public async Task<int> CountPrefixAsync(ReadOnlyMemory<ChunkHash> keys, CancellationToken cancellationToken)
        {
            await StallAsync(cancellationToken);
            return 0;
        }

        public async Task<RemoteRead> GetAsync(ChunkHash key, CancellationToken cancellationToken)
        {
            await StallAsync(cancellationToken);
            return RemoteRead.Miss;
        }

        public async Task<bool> PutAsync(KvChunk chunk, CancellationToken cancellationToken)
        {
            await StallAsync(cancellationToken);
            return true;
        }

        public async Task<bool> RemoveAsync(ChunkHash key, CancellationToken cancellationToken)
        {
            await StallAsync(cancellationToken);
            return false;
        }

        public Task ClearAsync(CancellationToken cancellationToken) => StallAsync(cancellationToken);

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;

        private async Task StallAsync(CancellationToken cancellationToken)
        {
            if (Stalled)
            {
                Interlocked.Increment(ref _stalledCalls);
                await Task.Delay(Timeout.Infinite, cancellationToken);
            }
        }
    }
}
