namespace LMCacheSharp.Serving.Tests;

public sealed class ServingCacheTests
{
    [Fact]
    public async Task A_repeated_long_prefix_is_restored_from_the_cache_tier_with_the_same_greedy_output()
    {
        // In-context sharing off: the second request can only reuse KV through the cache (memory tier).
        await using var cached = await TestServer.StartAsync(o => o.EnableInContextSharing = false);
        await using var plain = await TestServer.StartAsync(o => { o.EnableCache = false; o.EnableInContextSharing = false; });
        var prompt = Prompts.Long("tiers");

        var (first, cold, promptTokens) = await cached.CompleteAsync(prompt + " first question?");
        Assert.Equal(0, cold);
        var (second, warm, _) = await cached.CompleteAsync(prompt + " second question?");
        // Token-exact: everything the two prompts share, not rounded down to a chunk (the first request's completion
        // was stored too, but the second prompt leaves it at the first differing token).
        var shared = cached.Service.TokenizeCompletion(prompt + " first question?").AsSpan()
            .CommonPrefixLength(cached.Service.TokenizeCompletion(prompt + " second question?"));
        Assert.Equal(shared, warm);
        Assert.True(warm >= 64, $"cached {warm} of {promptTokens}");

        var (firstPlain, _, _) = await plain.CompleteAsync(prompt + " first question?");
        var (secondPlain, noCache, _) = await plain.CompleteAsync(prompt + " second question?");
        Assert.Equal(0, noCache);
        Assert.Equal(firstPlain, first);
        Assert.Equal(secondPlain, second);
    }

    [Fact]
    public async Task A_prefix_held_by_a_finished_sequence_is_shared_in_context()
    {
        await using var server = await TestServer.StartAsync(o => o.EnableCache = false);
        var prompt = Prompts.Long("context");
        await server.CompleteAsync(prompt + " one");
        var (_, shared, promptTokens) = await server.CompleteAsync(prompt + " two");
        Assert.True(shared > promptTokens / 2, $"shared {shared} of {promptTokens}");
    }

    [Fact]
    public async Task A_finished_sequence_serves_the_next_request_only_and_unrelated_ones_free_it()
    {
        await using var server = await TestServer.StartAsync(o => o.EnableCache = false);
        await server.CompleteAsync(Prompts.Long("first topic"));
        var ((_, shared, _), residents) = await ResidentsWhenTheNextRequestArrivesAsync(server, () => server.CompleteAsync(Prompts.Long("other subject")));
        Assert.Equal(1, residents); // kept for whoever comes next
        Assert.Equal(0, shared); // nothing in common: the first sequence was freed rather than kept beside it
        var (_, after) = await ResidentsWhenTheNextRequestArrivesAsync(server, () => server.CompleteAsync("probe", 1));
        Assert.Equal(1, after);
    }

    [Fact]
    public async Task Different_salts_never_share_and_the_same_salt_does()
    {
        await using var server = await TestServer.StartAsync();
        var prompt = Prompts.Long("salts");
        await server.CompleteAsync(prompt + " a", salt: "tenant-1");
        var (_, other, _) = await server.CompleteAsync(prompt + " b", salt: "tenant-2");
        Assert.True(other <= 1, $"tenant-2 reused {other} tokens of tenant-1"); // at most the shared BOS of its own earlier sequences
        var (_, none, _) = await server.CompleteAsync(prompt + " c");
        Assert.True(none <= 1, $"unsalted reused {none}");
        var (_, same, _) = await server.CompleteAsync(prompt + " d", salt: "tenant-1");
        Assert.True(same > 64, $"same salt reused only {same}");
    }

    [Fact]
    public async Task A_one_token_request_still_stores_its_prompt()
    {
        await using var server = await TestServer.StartAsync(o => o.EnableInContextSharing = false);
        var prompt = Prompts.Long("short answers");
        await server.CompleteAsync(prompt + " a", maxTokens: 1);
        var (_, cached, _) = await server.CompleteAsync(prompt + " b", maxTokens: 1);
        Assert.True(cached >= 64, $"cached {cached}");
    }

    [Fact]
    public async Task Skip_save_stores_nothing()
    {
        await using var server = await TestServer.StartAsync(o => o.EnableInContextSharing = false);
        var prompt = Prompts.Long("skip");
        var stored = server.Service.Cache!.Engine.Metrics.Snapshot().StoredTokens;
        await server.CompleteAsync(prompt + " a", skipSave: true);
        Assert.Equal(stored, server.Service.Cache.Engine.Metrics.Snapshot().StoredTokens);
        var (_, cached, _) = await server.CompleteAsync(prompt + " b");
        Assert.Equal(0, cached);
        var (_, after, _) = await server.CompleteAsync(prompt + " c");
        Assert.True(after > 0);
    }

    [Fact]
    public async Task Concurrent_requests_all_succeed_with_the_outputs_they_have_alone()
    {
        await using var server = await TestServer.StartAsync();
        var prompts = Enumerable.Range(0, 4).Select(i => $"Request number {i} asks something different about topic {i * 7}.").ToArray();
        var alone = new List<string>();
        foreach (var p in prompts)
        {
            alone.Add((await server.CompleteAsync(p, 10)).Text);
        }

        await using var fresh = await TestServer.StartAsync();
        var together = await Task.WhenAll(prompts.Select(p => fresh.CompleteAsync(p, 10)));
        Assert.Equal(alone, together.Select(t => t.Text));
    }

    [Fact]
    public async Task Two_concurrent_requests_with_the_same_long_prefix_prefill_it_once()
    {
        await using var server = await TestServer.StartAsync();
        var prefix = Prompts.Long("together");
        var before = server.Service.Metrics.TotalPrefilledTokens;
        var results = await Task.WhenAll(server.CompleteAsync(prefix + " left?", 4), server.CompleteAsync(prefix + " right?", 4));
        var prefilled = server.Service.Metrics.TotalPrefilledTokens - before;
        var promptTokens = results[0].Prompt;
        Assert.True(prefilled < promptTokens * 1.5, $"prefilled {prefilled} tokens for two prompts of {promptTokens}");
        Assert.True(results.Max(r => r.Cached) > promptTokens / 2);
    }

    [Fact]
    public async Task A_full_queue_answers_429_and_the_server_recovers()
    {
        await using var server = await TestServer.StartAsync(o => { o.MaxConcurrentRequests = 1; o.MaxQueuedRequests = 1; });
        var tasks = Enumerable.Range(0, 6).Select(i => server.Http.PostAsync("/v1/completions",
            new StringContent($$"""{"prompt":"busy {{i}}","max_tokens":40,"temperature":0}""", System.Text.Encoding.UTF8, "application/json"))).ToList();
        var responses = await Task.WhenAll(tasks);
        Assert.Contains(responses, r => (int)r.StatusCode == 429);
        Assert.Contains(responses, r => (int)r.StatusCode == 200);
        var rejected = responses.First(r => (int)r.StatusCode == 429);
        Assert.Contains("rate_limit_exceeded", await rejected.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        foreach (var r in responses)
        {
            r.Dispose();
        }

        Assert.NotNull((await server.CompleteAsync("after the storm", 2)).Text);
    }

    [Fact]
    public async Task A_client_that_disconnects_frees_its_sequence()
    {
        await using var server = await TestServer.StartAsync(o => { o.MaxConcurrentRequests = 1; o.DefaultMaxTokens = 1000; });
        using (var cts = new CancellationTokenSource())
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
            {
                Content = new StringContent("""{"prompt":"go on forever","max_tokens":1500,"stream":true}""", System.Text.Encoding.UTF8, "application/json"),
            };
            using var response = await server.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cts.Token);
            using var stream = await response.Content.ReadAsStreamAsync(cts.Token);
            var buffer = new byte[64];
            _ = await stream.ReadAsync(buffer, cts.Token); // generation is running
            cts.Cancel();
        }

        // With one sequence, this only completes once the abandoned request was dropped.
        await server.CompleteAsync("next please", 3).WaitAsync(TimeSpan.FromSeconds(60), TestContext.Current.CancellationToken);
    }

    [Fact]
    public async Task A_restarted_instance_reports_its_disk_scan_as_start_up_progress()
    {
        var dir = Directory.CreateTempSubdirectory("lmcache-serving-scan-").FullName;
        try
        {
            void Disk(Core.Configuration.LMCacheOptions c)
            {
                c.LocalDisk = dir;
                c.MaxLocalDiskSize = 0.05;
            }

            await using (var first = await TestServer.StartAsync(o => o.EnableInContextSharing = false, configureCache: Disk))
            {
                await first.CompleteAsync(Prompts.Long("scanned at the next start"), 2);
                await first.Service.Cache!.Engine.FlushAsync(TestContext.Current.CancellationToken);
            }

            Assert.NotEmpty(Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories));
            var progress = new RecordingProgress();
            await using var second = await TestServer.StartAsync(o => { o.EnableInContextSharing = false; o.Progress = progress; }, configureCache: Disk);
            var scan = progress.Reports.Where(r => r.Stage == "scanning the disk cache").Select(r => r.Fraction).ToList();
            Assert.True(scan.Count >= 2, $"{scan.Count} scan reports");
            Assert.Equal(0, scan[0]);
            Assert.Equal(1, scan[^1]);
            Assert.Equal(scan.Order(), scan); // never backwards
            Assert.Contains(progress.Reports, r => r.Stage == "loading the model"); // the model loads first, then the cache opens
            Assert.True(progress.Reports.FindIndex(r => r.Stage == "scanning the disk cache") > progress.Reports.FindLastIndex(r => r.Stage == "loading the model"));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    // Records every report on the thread that makes it (Progress<T> would post them elsewhere, out of order).
    private sealed class RecordingProgress : IProgress<StartupProgress>
    {
        private readonly Lock _lock = new();
        private readonly List<StartupProgress> _reports = [];

        public List<StartupProgress> Reports
        {
            get
            {
                lock (_lock)
                {
                    return [.. _reports];
                }
            }
        }

        public void Report(StartupProgress value)
        {
            lock (_lock)
            {
                _reports.Add(value);
            }
        }
    }

    // The scheduler publishes the count after the step that answered a request, so a response can arrive before it. The
    // next request's step starts only after that: read the count there, on the inference thread, before the step runs.
    private static async Task<(T Result, int Residents)> ResidentsWhenTheNextRequestArrivesAsync<T>(TestServer server, Func<Task<T>> next)
    {
        var residents = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        server.Service.BeforeSchedulerStep = () => residents.TrySetResult(server.Service.ResidentSequences);
        try
        {
            var result = await next();
            return (result, await residents.Task);
        }
        finally
        {
            server.Service.BeforeSchedulerStep = null;
        }
    }
}
