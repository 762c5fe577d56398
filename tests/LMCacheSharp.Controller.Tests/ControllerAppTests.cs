using System.Net.Http.Json;
using System.Text;
using System.Text.Json.Nodes;
using LMCacheSharp.Core.Events;
using LMCacheSharp.Tests.Shared;

namespace LMCacheSharp.Controller.Tests;

/// <summary>The controller's HTTP API with fake instances whose KV events come from real publishers.</summary>
public sealed class ControllerAppTests
{
    private static int Cached(JsonObject lookup, string id, string tier = "total") =>
        lookup["instances"]!.AsArray().Single(i => i!["id"]!.GetValue<string>() == id)!["cached_tokens"]![tier]!.GetValue<int>();

    [Fact]
    public async Task Events_fill_the_directory_and_a_lookup_answers_per_instance_and_tier_to_the_token()
    {
        await using var controller = await RunningController.StartAsync();
        using var a = new FakeInstance("http://127.0.0.1:1");
        using var b = new FakeInstance("http://127.0.0.1:2", a.Namespace.ModelFingerprint);
        int[] doc = [.. Enumerable.Range(100, 18)]; // 4 whole chunks + a tail of 2
        a.Store(doc, tail: true);
        b.Store(doc[..8], KvMedium.Disk);
        await a.FlushAsync();
        await b.FlushAsync();
        // Registered after the events were published: the controller's replay from sequence 0 brings them in.
        await a.RegisterAsync(controller);
        await b.RegisterAsync(controller);
        await RunningController.EventuallyAsync(() => controller.Directory.Count == 5, "5 chunks in the directory");

        // b's 2 chunks are a's first 2: the count says nothing about b's replay, so wait until its disk tier shows.
        var ask = new { model = "tiny", tokens = doc[..17].Append(7).ToArray() };
        var lookup = await controller.OkAsync("/lookup", ask);
        for (var deadline = DateTime.UtcNow.AddSeconds(30); Cached(lookup, b.Id!, "disk") < 8 && DateTime.UtcNow < deadline;)
        {
            await Task.Delay(20, TestContext.Current.CancellationToken);
            lookup = await controller.OkAsync("/lookup", ask);
        }

        Assert.Equal(18, lookup["prompt_tokens"]!.GetValue<int>());
        Assert.Equal(17, Cached(lookup, a.Id!, "memory")); // 16 whole + 1 token of the stored tail of 2
        Assert.Equal(0, Cached(lookup, a.Id!, "disk"));
        Assert.Equal(8, Cached(lookup, b.Id!, "disk"));
        Assert.Equal(0, Cached(lookup, b.Id!, "memory"));
        Assert.Equal(a.Id, lookup["instances"]![0]!["id"]!.GetValue<string>()); // most in memory first

        // Live events after registration: an eviction of chunk 2 from memory shortens a's run to 8 tokens.
        var keys = Core.Keys.PrefixHasher.ComputeKeys(a.Namespace, doc, FakeInstance.ChunkSize);
        a.Remove(keys[2]);
        await a.FlushAsync();
        await RunningController.EventuallyAsync(() => controller.Directory.Count == 4, "the evicted chunk leaves");
        lookup = await controller.OkAsync("/lookup", new { tokens = doc });
        Assert.Equal(8, Cached(lookup, a.Id!));
        // A salted lookup sees none of the unsalted chunks.
        lookup = await controller.OkAsync("/lookup", new { tokens = doc, cache_salt = "tenant" });
        Assert.Equal(0, Cached(lookup, a.Id!));

        var instances = JsonNode.Parse(await controller.Http.GetStringAsync("/instances"))!["instances"]!.AsArray();
        Assert.Equal(2, instances.Count);
        Assert.Equal(4, instances[0]!["chunks"]!["memory"]!.GetValue<int>());
        Assert.Contains("ok", await controller.Http.GetStringAsync("/health"), StringComparison.Ordinal);
        var metrics = await controller.Http.GetStringAsync("/metrics");
        Assert.Contains("lmcache_controller_directory_chunks", metrics, StringComparison.Ordinal);
        Assert.Contains("lmcache_controller_lookups", metrics, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Metrics_keep_their_names_and_count_only_this_controller()
    {
        await using var controller = await RunningController.StartAsync();
        await using var other = await RunningController.StartAsync();
        using var a = new FakeInstance("http://127.0.0.1:1");
        int[] doc = [.. Enumerable.Range(100, 18)];
        a.Store(doc, tail: true);
        await a.FlushAsync();
        await a.RegisterAsync(controller);
        await RunningController.EventuallyAsync(() => controller.Directory.Count == 5, "5 chunks in the directory");
        await controller.OkAsync("/lookup", new { model = "tiny", tokens = doc });
        await controller.OkAsync("/lookup", new { model = "tiny", tokens = doc[..4] });

        var metrics = new PrometheusText(await controller.Http.GetStringAsync("/metrics"));
        const string prefix = "lmcachesharp_controller_lmcache_controller_";
        metrics.AssertFamilies([.. new[] { "instances", "directory_chunks", "replays", "event_batches", "events", "lookups" }.Select(n => (prefix + n, "gauge")),
            (prefix + "lookup_time", "histogram")]);
        Assert.Equal(1, metrics[prefix + "instances"]);
        Assert.Equal(5, metrics[prefix + "directory_chunks"]);
        Assert.Equal(2, metrics[prefix + "lookups"]);
        Assert.Equal(2, metrics[prefix + "lookup_time_count"]);
        Assert.Equal(0.0001, double.Parse(metrics.Text.Split('\n').First(l => l.StartsWith(prefix + "lookup_time_bucket", StringComparison.Ordinal))
            .Split('"')[1], System.Globalization.CultureInfo.InvariantCulture)); // the buckets the instrument advises
        // The other controller in this process has its own registry: none of these counts.
        var quiet = new PrometheusText(await other.Http.GetStringAsync("/metrics"));
        Assert.Equal(0, quiet[prefix + "instances"]);
        Assert.False(quiet.Has(prefix + "lookups"));
    }

    [Fact]
    public async Task An_instance_that_stops_heartbeating_expires_and_its_chunks_leave_the_directory()
    {
        await using var controller = await RunningController.StartAsync(o =>
        {
            o.HeartbeatInterval = TimeSpan.FromMilliseconds(100);
            o.HeartbeatTimeout = TimeSpan.FromMilliseconds(1500);
        });
        using var alive = new FakeInstance("http://127.0.0.1:1");
        using var dying = new FakeInstance("http://127.0.0.1:2");
        alive.Store([1, 2, 3, 4]);
        dying.Store([.. Enumerable.Range(1, 8)]);
        await alive.FlushAsync();
        await dying.FlushAsync();
        await alive.RegisterAsync(controller);
        await dying.RegisterAsync(controller);
        await RunningController.EventuallyAsync(() => controller.Directory.Count == 3, "both instances' chunks");
        using var beating = new CancellationTokenSource();
        var heartbeats = Task.Run(async () =>
        {
            while (!beating.IsCancellationRequested)
            {
                await controller.OkAsync("/instances/heartbeat", new { id = alive.Id, load = new { in_flight = 2, queued = 1 } });
                await Task.Delay(100);
            }
        });
        // alive's one chunk stays (another namespace: no chunk is shared).
        await RunningController.EventuallyAsync(() => controller.Registry.Count == 1 && controller.Directory.Count == 1, "the silent instance expires", 10);
        Assert.NotNull(controller.Registry.Find(alive.Id!));
        var (status, body) = await controller.PostAsync("/instances/heartbeat", new { id = dying.Id });
        Assert.Equal(404, status);
        Assert.Equal("unknown_instance", body["error"]!["code"]!.GetValue<string>());
        await beating.CancelAsync();
        await heartbeats;
        Assert.Equal(2, controller.Registry.Find(alive.Id!)!.Load.InFlight);
    }

    [Fact]
    public async Task After_a_controller_restart_the_reregistered_instance_is_replayed_from_sequence_0()
    {
        using var instance = new FakeInstance();
        int[] doc = [.. Enumerable.Range(1, 12)];
        await using (var first = await RunningController.StartAsync())
        {
            await instance.RegisterAsync(first);
            instance.Store(doc);
            await instance.FlushAsync();
            await RunningController.EventuallyAsync(() => first.Directory.Count == 3, "the first controller's directory");
        }

        // Published while no controller runs: only the replay socket can tell the next one.
        var keys = Core.Keys.PrefixHasher.ComputeKeys(instance.Namespace, doc, FakeInstance.ChunkSize);
        instance.Remove(keys[2]);
        instance.Store([9, 9, 9, 9]);
        await instance.FlushAsync();
        await using var second = await RunningController.StartAsync();
        var (status, _) = await second.PostAsync("/instances/heartbeat", new { id = instance.Id });
        Assert.Equal(404, status); // the new controller does not know it: the instance registers again
        await instance.RegisterAsync(second);
        await RunningController.EventuallyAsync(() => second.Directory.Count == 3, "the replayed directory: chunks 0, 1 and [9,9,9,9]");
        var lookup = await second.OkAsync("/lookup", new { tokens = doc });
        Assert.Equal(8, Cached(lookup, instance.Id!));
    }

    public static TheoryData<string> MutatingPaths => ["/instances/register", "/instances/heartbeat", "/instances/deregister", "/router/report", "/pin", "/unpin", "/prefetch", "/clear"];

    [Theory]
    [MemberData(nameof(MutatingPaths))]
    public async Task Every_mutating_call_needs_the_token(string path)
    {
        await using var controller = await RunningController.StartAsync(o => o.AuthToken = "s3cret");
        using var plain = new HttpClient { BaseAddress = new Uri(controller.Url) };
        foreach (var header in new[] { null, "Bearer wrong", "Basic czNjcmV0" })
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = JsonContent.Create(new { }) };
            if (header is not null)
            {
                request.Headers.TryAddWithoutValidation("Authorization", header);
            }

            using var response = await plain.SendAsync(request);
            Assert.Equal(401, (int)response.StatusCode);
            var error = JsonNode.Parse(await response.Content.ReadAsStringAsync())!["error"]!;
            Assert.Equal("authentication_error", error["type"]!.GetValue<string>());
            Assert.Equal("invalid_api_key", error["code"]!.GetValue<string>());
        }

        // With the token the call gets past auth (to its own validation of the empty body).
        var (status, _) = await controller.PostAsync(path, new { });
        Assert.NotEqual(401, status);
        // Reads stay open.
        using var health = await plain.GetAsync("/health");
        Assert.Equal(200, (int)health.StatusCode);
    }

    [Fact]
    public async Task A_registered_instance_with_the_token_works_end_to_end()
    {
        await using var controller = await RunningController.StartAsync(o => o.AuthToken = "s3cret");
        using var instance = new FakeInstance();
        await instance.RegisterAsync(controller);
        await controller.OkAsync("/instances/heartbeat", new { id = instance.Id });
        await controller.OkAsync("/router/report", new { router = "r1", policy = "kv-aware", decisions_total = 10 });
        await controller.OkAsync("/instances/deregister", new { id = instance.Id });
        Assert.Equal(0, controller.Registry.Count);
    }

    [Fact]
    public async Task Bad_inputs_get_a_clear_4xx_and_the_next_good_request_succeeds()
    {
        await using var controller = await RunningController.StartAsync(o => o.MaxBodyBytes = 64 << 10);
        using var instance = new FakeInstance();
        await instance.RegisterAsync(controller);

        async Task Expect(int status, string code, HttpContent content, string path = "/lookup")
        {
            using var response = await controller.Http.PostAsync(path, content);
            var text = await response.Content.ReadAsStringAsync();
            Assert.True(status == (int)response.StatusCode, $"{path}: expected {status}, got {(int)response.StatusCode} {text}");
            Assert.Equal(code, JsonNode.Parse(text)!["error"]!["code"]!.GetValue<string>());
            var good = await controller.OkAsync("/lookup", new { model = "tiny", tokens = new[] { 1, 2, 3 } });
            Assert.Equal(3, good["prompt_tokens"]!.GetValue<int>());
        }

        await Expect(400, "invalid_json", new StringContent("{\"tokens\": [1, 2", Encoding.UTF8, "application/json"));
        await Expect(400, "invalid_json", new StringContent("[1, 2]", Encoding.UTF8, "application/json"));
        await Expect(404, "model_not_found", JsonContent.Create(new { model = "nope", tokens = new[] { 1 } }));
        await Expect(400, "invalid_request", JsonContent.Create(new { model = "tiny", tokens = new object[] { 1, "two" } }));
        await Expect(400, "invalid_request", JsonContent.Create(new { model = "tiny" }));
        await Expect(413, "body_too_large", new StringContent("{\"tokens\": [" + string.Join(',', Enumerable.Repeat(1, 40_000)) + "]}", Encoding.UTF8, "application/json"));
        await Expect(400, "invalid_request", JsonContent.Create(new { url = "ftp://x", model = "m" }), "/instances/register");
        await Expect(400, "invalid_request", JsonContent.Create(new { url = "http://127.0.0.1:3", model = "m", kv_events = "udp://x" }), "/instances/register");
        await Expect(404, "not_found", JsonContent.Create(new { }), "/nothing-here");
        await Expect(404, "unknown_instance", JsonContent.Create(new { instance = "i99" }), "/clear");
    }
}
