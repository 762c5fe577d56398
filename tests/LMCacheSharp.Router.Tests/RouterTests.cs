using System.Net.Http.Json;
using System.Text;
using System.Text.Json.Nodes;
using LMCacheSharp.Tests.Shared;

namespace LMCacheSharp.Router.Tests;

/// <summary>The router over scripted instances: policies, retries, health, limits, aggregation, metrics.</summary>
public sealed class RouterTests
{
    private static async Task<FakeInstance[]> FakesAsync(int n, string model = "fake")
    {
        var fakes = new FakeInstance[n];
        for (var i = 0; i < n; i++)
        {
            fakes[i] = await FakeInstance.StartAsync(model);
        }

        return fakes;
    }

    private static async Task DisposeAllAsync(IEnumerable<IAsyncDisposable> items)
    {
        foreach (var item in items)
        {
            await item.DisposeAsync();
        }
    }

    [Fact]
    public async Task Round_robin_alternates_over_the_instances()
    {
        var fakes = await FakesAsync(3);
        try
        {
            await using var router = await RouterHost.StartAsync(RoutingPolicyKind.RoundRobin, fakes.Select(f => f.BaseUrl));
            var answered = new List<string?>();
            for (var i = 0; i < 6; i++)
            {
                var (status, instance, body) = await router.PostAsync("/v1/completions", new { prompt = "hi" });
                Assert.Equal(200, status);
                Assert.Equal(instance, body!["instance"]!.GetValue<string>()); // the header names who answered
                answered.Add(instance);
            }

            Assert.Equal(answered[..3], answered[3..]);
            Assert.Equal(3, answered.Distinct().Count());
            Assert.Equal(2, Metric(await router.MetricsAsync(), "decisions", $"instance=\"{fakes[0].BaseUrl}\",policy=\"round-robin\""));
        }
        finally
        {
            await DisposeAllAsync(fakes);
        }
    }

    [Fact]
    public async Task Metrics_keep_their_names_and_count_only_this_router()
    {
        var fakes = await FakesAsync(1);
        try
        {
            await using var router = await RouterHost.StartAsync(RoutingPolicyKind.RoundRobin, fakes.Select(f => f.BaseUrl));
            await using var other = await RouterHost.StartAsync(RoutingPolicyKind.RoundRobin, fakes.Select(f => f.BaseUrl));
            for (var i = 0; i < 2; i++)
            {
                Assert.Equal(200, (await router.PostAsync("/v1/completions", new { prompt = "hi" })).Status);
            }

            Assert.Equal(404, (await router.PostAsync("/v1/completions", new { prompt = "hi", model = "nope" })).Status);
            await router.Monitor.ProbeAllAsync();
            var metrics = new PrometheusText(await router.MetricsAsync());
            const string prefix = "lmcachesharp_router_lmcache_router_";
            metrics.AssertFamilies(new[] { "instance_healthy", "instance_in_flight", "health_changes", "decisions", "responses", "reported_cached_tokens", "rejected" }
                .Select(n => (prefix + n, "gauge")));
            var instance = $"instance=\"{fakes[0].BaseUrl}\"";
            Assert.Equal(2, metrics[$"{prefix}decisions{{{instance},policy=\"round-robin\"}}"]);
            Assert.Equal(2, metrics[$"{prefix}responses{{{instance},status=\"2xx\"}}"]);
            Assert.Equal(1, metrics[$"{prefix}rejected{{reason=\"unknown_model\"}}"]);
            Assert.Equal(1, metrics[$"{prefix}instance_healthy{{{instance}}}"]);
            Assert.Equal(0, metrics[$"{prefix}instance_in_flight{{{instance}}}"]);
            Assert.Equal(2, router.Metrics.DecisionsTotal); // what the controller is told: the same count
            // The other router in this process, over the same instance, exports none of these requests.
            var quiet = new PrometheusText(await other.MetricsAsync());
            Assert.False(quiet.Has($"{prefix}decisions{{{instance},policy=\"round-robin\"}}"));
            Assert.False(quiet.Has($"{prefix}rejected{{reason=\"unknown_model\"}}"));
        }
        finally
        {
            await DisposeAllAsync(fakes);
        }
    }

    [Fact]
    public async Task Session_sticks_by_header_or_user_and_falls_back_to_round_robin()
    {
        var fakes = await FakesAsync(3);
        try
        {
            await using var router = await RouterHost.StartAsync(RoutingPolicyKind.Session, fakes.Select(f => f.BaseUrl));
            foreach (var session in new[] { "alice", "bob", "carol" })
            {
                var byHeader = new HashSet<string?>();
                var byUser = new HashSet<string?>();
                for (var i = 0; i < 4; i++)
                {
                    byHeader.Add((await router.PostAsync("/v1/completions", new { prompt = "hi" }, session)).Instance);
                    byUser.Add((await router.PostAsync("/v1/chat/completions", new { messages = Array.Empty<object>(), user = session })).Instance);
                }

                Assert.Single(byHeader);
                Assert.Equal(byHeader, byUser); // the header and the user field name the same session
            }

            var anonymous = new List<string?>();
            for (var i = 0; i < 3; i++)
            {
                anonymous.Add((await router.PostAsync("/v1/completions", new { prompt = "hi" })).Instance);
            }

            Assert.Equal(3, anonymous.Distinct().Count());
        }
        finally
        {
            await DisposeAllAsync(fakes);
        }
    }

    [Fact]
    public async Task Least_loaded_avoids_a_busy_instance_by_its_own_count_and_by_the_reported_load()
    {
        var fakes = await FakesAsync(2);
        try
        {
            await using var router = await RouterHost.StartAsync(RoutingPolicyKind.LeastLoaded, fakes.Select(f => f.BaseUrl));
            var held = router.PostAsync("/v1/completions", new { prompt = "hold" });
            await WaitUntilAsync(() => fakes.Sum(f => f.Holding) == 1);
            var busy = fakes.Single(f => f.Holding == 1);
            var idle = fakes.Single(f => f != busy);
            for (var i = 0; i < 4; i++)
            {
                Assert.Equal(idle.BaseUrl, (await router.PostAsync("/v1/completions", new { prompt = "quick" })).Instance);
            }

            busy.Release();
            Assert.Equal(200, (await held).Status);

            // Load from elsewhere (other clients), as the instance reports it: seen at the next probe.
            idle.Queued = 5;
            await router.Monitor.ProbeAllAsync();
            for (var i = 0; i < 3; i++)
            {
                Assert.Equal(busy.BaseUrl, (await router.PostAsync("/v1/completions", new { prompt = "quick" })).Instance);
            }
        }
        finally
        {
            await DisposeAllAsync(fakes);
        }
    }

    [Fact]
    public async Task Kv_aware_weighs_the_reported_prefixes_against_load()
    {
        var fakes = await FakesAsync(3);
        try
        {
            await using var router = await RouterHost.StartAsync(RoutingPolicyKind.KvAware, fakes.Select(f => f.BaseUrl),
                o => (o.KvTieTokens, o.KvLoadWeightTokens) = (16, 256));
            fakes[1].CachedTokens = 512;
            fakes[2].CachedTokens = 64;
            var (status, instance, _) = await router.PostAsync("/v1/completions", new { prompt = "doc" });
            Assert.Equal(200, status);
            Assert.Equal(fakes[1].BaseUrl, instance);
            // Three queued requests there cost 768 tokens' worth: more than the 448 it saves over the next best.
            fakes[1].Queued = 3;
            Assert.Equal(fakes[2].BaseUrl, (await router.PostAsync("/v1/completions", new { prompt = "doc" })).Instance);
            var metrics = await router.MetricsAsync();
            Assert.Equal(512, Metric(metrics, "predicted_cached_tokens", $"instance=\"{fakes[1].BaseUrl}\""));
            Assert.Equal(512, Metric(metrics, "reported_cached_tokens", $"instance=\"{fakes[1].BaseUrl}\""));
            Assert.Equal(2, Metric(metrics, "lookups", $"instance=\"{fakes[0].BaseUrl}\",outcome=\"ok\""));
        }
        finally
        {
            await DisposeAllAsync(fakes);
        }
    }

    [Fact]
    public async Task Kv_aware_counts_a_slow_lookup_as_nothing_cached()
    {
        var fakes = await FakesAsync(2);
        try
        {
            // An instance that does not answer its lookup in time: the other, holding nothing, takes the request.
            var dead = await FakeInstance.StartAsync();
            await using var router = await RouterHost.StartAsync(RoutingPolicyKind.KvAware, fakes.Select(f => f.BaseUrl).Append(dead.BaseUrl),
                o => o.LookupTimeout = TimeSpan.FromMilliseconds(200));
            await dead.DisposeAsync(); // refuses connections from now on: its lookup fails, its forward would too
            fakes[0].CachedTokens = 100;
            var (status, instance, _) = await router.PostAsync("/v1/completions", new { prompt = "doc" });
            Assert.Equal(200, status);
            Assert.Equal(fakes[0].BaseUrl, instance);
            Assert.Equal(1, Metric(await router.MetricsAsync(), "lookups", $"instance=\"{dead.BaseUrl}\",outcome=\"error\""));
        }
        finally
        {
            await DisposeAllAsync(fakes);
        }
    }

    [Fact]
    public async Task A_5xx_before_any_byte_is_retried_once_elsewhere_and_passed_through_when_nothing_is_left()
    {
        var fakes = await FakesAsync(2);
        try
        {
            fakes[0].CompletionStatus = 503;
            await using var router = await RouterHost.StartAsync(RoutingPolicyKind.RoundRobin, fakes.Select(f => f.BaseUrl));
            for (var i = 0; i < 4; i++)
            {
                var (status, instance, _) = await router.PostAsync("/v1/completions", new { prompt = "hi" });
                Assert.Equal(200, status);
                Assert.Equal(fakes[1].BaseUrl, instance);
            }

            Assert.Equal(4, fakes[1].Completions);
            // A 5xx does not take an instance out (its health probe says it is up), so each request tries it first: the retry's
            // pick moved the turn on.
            Assert.Equal(4, Metric(await router.MetricsAsync(), "retries", $"cause=\"answered 503\",instance=\"{fakes[0].BaseUrl}\""));
            // Both failing: one retry, then the second answer goes to the client as it came.
            fakes[1].CompletionStatus = 500;
            var (last, _, body) = await router.PostAsync("/v1/completions", new { prompt = "hi" });
            Assert.Equal(500, last);
            Assert.Equal("scripted failure", body!["error"]!["message"]!.GetValue<string>());
        }
        finally
        {
            await DisposeAllAsync(fakes);
        }
    }

    [Fact]
    public async Task An_instance_failing_its_health_probe_is_taken_out_and_comes_back()
    {
        var fakes = await FakesAsync(2);
        try
        {
            await using var router = await RouterHost.StartAsync(RoutingPolicyKind.RoundRobin, fakes.Select(f => f.BaseUrl));
            fakes[0].HealthStatus = 503;
            await router.Monitor.ProbeAllAsync();
            var health = await router.Http.GetFromJsonAsync<JsonObject>("/health");
            Assert.False(health!["instances"]![0]!["healthy"]!.GetValue<bool>());
            Assert.Equal("/health answered 503", health["instances"]![0]!["reason"]!.GetValue<string>());
            for (var i = 0; i < 3; i++)
            {
                Assert.Equal(fakes[1].BaseUrl, (await router.PostAsync("/v1/completions", new { prompt = "hi" })).Instance);
            }

            Assert.Equal(0, Metric(await router.MetricsAsync(), "instance_healthy", $"instance=\"{fakes[0].BaseUrl}\""));
            fakes[0].HealthStatus = 200;
            await router.Monitor.ProbeAllAsync();
            var back = new HashSet<string?>();
            for (var i = 0; i < 2; i++)
            {
                back.Add((await router.PostAsync("/v1/completions", new { prompt = "hi" })).Instance);
            }

            Assert.Equal(2, back.Count);
        }
        finally
        {
            await DisposeAllAsync(fakes);
        }
    }

    [Fact]
    public async Task Models_are_aggregated_without_duplicates_and_requests_go_only_where_their_model_is()
    {
        var a = await FakeInstance.StartAsync("m1");
        var b = await FakeInstance.StartAsync("m1");
        var c = await FakeInstance.StartAsync("m2");
        try
        {
            await using var router = await RouterHost.StartAsync(RoutingPolicyKind.RoundRobin, [a.BaseUrl, b.BaseUrl, c.BaseUrl]);
            var models = await router.Http.GetFromJsonAsync<JsonObject>("/v1/models");
            Assert.Equal(["m1", "m2"], models!["data"]!.AsArray().Select(m => m!["id"]!.GetValue<string>()));
            Assert.Equal("m2", (await router.Http.GetFromJsonAsync<JsonObject>("/v1/models/m2"))!["id"]!.GetValue<string>());
            for (var i = 0; i < 3; i++)
            {
                Assert.Equal(c.BaseUrl, (await router.PostAsync("/v1/completions", new { model = "m2", prompt = "hi" })).Instance);
                Assert.NotEqual(c.BaseUrl, (await router.PostAsync("/v1/completions", new { model = "m1", prompt = "hi" })).Instance);
            }

            var (status, _, body) = await router.PostAsync("/v1/completions", new { model = "m3", prompt = "hi" });
            Assert.Equal(404, status);
            Assert.Equal("model_not_found", body!["error"]!["code"]!.GetValue<string>());
            Assert.Equal("model", body["error"]!["param"]!.GetValue<string>());
            Assert.Equal(200, (await router.PostAsync("/v1/completions", new { model = "m1", prompt = "hi" })).Status);
        }
        finally
        {
            await DisposeAllAsync([a, b, c]);
        }
    }

    [Fact]
    public async Task Bad_bodies_are_refused_in_OpenAIs_shape_and_the_next_request_succeeds()
    {
        var fakes = await FakesAsync(1);
        try
        {
            await using var router = await RouterHost.StartAsync(RoutingPolicyKind.RoundRobin, fakes.Select(f => f.BaseUrl), o => o.MaxBodyBytes = 64 << 10);
            using (var bad = await router.Http.PostAsync("/v1/completions", new StringContent("{\"prompt\": ", Encoding.UTF8, "application/json")))
            {
                Assert.Equal(400, (int)bad.StatusCode);
                var error = (await bad.Content.ReadFromJsonAsync<JsonObject>())!["error"]!;
                Assert.StartsWith("the request body is not valid JSON", error["message"]!.GetValue<string>(), StringComparison.Ordinal);
                Assert.Equal("invalid_request_error", error["type"]!.GetValue<string>());
            }

            var giant = Encoding.UTF8.GetBytes("{\"prompt\": \"" + new string('x', 100 << 10) + "\"}");
            using (var large = await router.Http.PostAsync("/v1/completions", new ByteArrayContent(giant)))
            {
                Assert.Equal(413, (int)large.StatusCode);
                Assert.Equal("request_too_large", (await large.Content.ReadFromJsonAsync<JsonObject>())!["error"]!["code"]!.GetValue<string>());
            }

            using (var chunked = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = new StreamContent(new MemoryStream(giant)) })
            {
                chunked.Headers.TransferEncodingChunked = true; // no Content-Length: found while reading
                using var response = await router.Http.SendAsync(chunked);
                Assert.Equal(413, (int)response.StatusCode);
            }

            using (var missing = await router.Http.GetAsync("/v1/nothing"))
            {
                Assert.Equal(404, (int)missing.StatusCode);
                Assert.Equal("not_found", (await missing.Content.ReadFromJsonAsync<JsonObject>())!["error"]!["code"]!.GetValue<string>());
            }

            Assert.Equal(0, fakes[0].Completions);
            Assert.Equal(200, (await router.PostAsync("/v1/completions", new { prompt = "fine" })).Status);
            var metrics = await router.MetricsAsync();
            Assert.True(Metric(metrics, "rejected", "reason=\"bad_json\"") >= 1);
            Assert.True(Metric(metrics, "rejected", "reason=\"too_large\"") >= 2);
        }
        finally
        {
            await DisposeAllAsync(fakes);
        }
    }

    [Fact]
    public async Task No_healthy_instance_is_a_503_and_the_router_recovers_with_the_instance()
    {
        var fakes = await FakesAsync(1);
        try
        {
            fakes[0].HealthStatus = 500;
            await using var router = await RouterHost.StartAsync(RoutingPolicyKind.KvAware, fakes.Select(f => f.BaseUrl));
            using (var response = await router.Http.PostAsJsonAsync("/v1/completions", new { prompt = "hi" }))
            {
                Assert.Equal(503, (int)response.StatusCode);
                Assert.Equal("1", response.Headers.RetryAfter!.ToString());
                Assert.Equal("no_healthy_instance", (await response.Content.ReadFromJsonAsync<JsonObject>())!["error"]!["code"]!.GetValue<string>());
            }

            using (var health = await router.Http.GetAsync("/health"))
            {
                Assert.Equal(503, (int)health.StatusCode);
            }

            using (var models = await router.Http.GetAsync("/v1/models"))
            {
                Assert.Equal(503, (int)models.StatusCode);
            }

            fakes[0].HealthStatus = 200;
            await router.Monitor.ProbeAllAsync();
            Assert.Equal(200, (await router.PostAsync("/v1/completions", new { prompt = "hi" })).Status);
        }
        finally
        {
            await DisposeAllAsync(fakes);
        }
    }

    [Fact]
    public async Task A_stream_passes_through_byte_for_byte_as_it_is_written()
    {
        var fakes = await FakesAsync(1);
        try
        {
            var fake = fakes[0];
            // Events split at odd places; the second piece is only written once the client has seen the first.
            fake.StreamPieces = [.. new[] { "data: {\"a\":", "1}\n\ndata: {\"é\":2}\n", "\ndata: [DONE]\n\n" }.Select(Encoding.UTF8.GetBytes)];
            fake.StreamGate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            await using var router = await RouterHost.StartAsync(RoutingPolicyKind.RoundRobin, [fake.BaseUrl]);
            using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = JsonContent.Create(new { prompt = "s", stream = true }) };
            using var response = await router.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
            Assert.Equal("text/event-stream", response.Content.Headers.ContentType!.MediaType);
            await using var stream = await response.Content.ReadAsStreamAsync();
            var first = new byte[fake.StreamPieces[0].Length];
            await stream.ReadExactlyAsync(first).AsTask().WaitAsync(TimeSpan.FromSeconds(30)); // arrives before the rest exists
            Assert.Equal(fake.StreamPieces[0], first);
            fake.StreamGate.SetResult();
            using var rest = new MemoryStream();
            await stream.CopyToAsync(rest);
            Assert.Equal(fake.StreamPieces.Skip(1).SelectMany(p => p).ToArray(), rest.ToArray());
        }
        finally
        {
            await DisposeAllAsync(fakes);
        }
    }

    [Fact]
    public async Task A_stream_cut_off_after_its_first_bytes_is_never_retried()
    {
        var fakes = await FakesAsync(2);
        try
        {
            var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            foreach (var fake in fakes)
            {
                fake.StreamPieces = [.. new[] { "data: {\"a\":1}\n\n", "data: [DONE]\n\n" }.Select(Encoding.UTF8.GetBytes)];
                fake.StreamGate = gate; // the instance dies once the client has the first event
            }

            await using var router = await RouterHost.StartAsync(RoutingPolicyKind.RoundRobin, fakes.Select(f => f.BaseUrl));
            using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = JsonContent.Create(new { prompt = "die", stream = true }) };
            using var response = await router.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
            Assert.Equal(200, (int)response.StatusCode);
            await using var stream = await response.Content.ReadAsStreamAsync();
            var first = new byte[fakes[0].StreamPieces[0].Length];
            await stream.ReadExactlyAsync(first).AsTask().WaitAsync(TimeSpan.FromSeconds(30));
            Assert.Equal("data: {\"a\":1}\n\n", Encoding.UTF8.GetString(first));
            gate.SetResult();
            using var rest = new MemoryStream();
            await Assert.ThrowsAnyAsync<IOException>(() => stream.CopyToAsync(rest)); // the client sees the cut, not a second answer
            Assert.Equal(0, rest.Length);
            Assert.Equal(1, fakes.Sum(f => f.Completions));
            Assert.DoesNotContain((await router.MetricsAsync()).Split('\n'), l => l.StartsWith("lmcachesharp_router_lmcache_router_retries{", StringComparison.Ordinal) &&
                fakes.Any(f => l.Contains(f.BaseUrl, StringComparison.Ordinal)));
        }
        finally
        {
            await DisposeAllAsync(fakes);
        }
    }

    /// <summary>
    /// The value of the router's metric <c>lmcache_router.NAME</c> with exactly <paramref name="labels"/>, as its /metrics
    /// exports it (<c>lmcachesharp_router_lmcache_router_NAME{labels} value</c>); fails when absent.
    /// </summary>
    internal static double Metric(string metrics, string name, string labels)
    {
        var prefix = $"lmcachesharp_router_lmcache_router_{name}{{{labels}}} ";
        var line = metrics.Split('\n').FirstOrDefault(l => l.StartsWith(prefix, StringComparison.Ordinal));
        Assert.True(line is not null, $"no {prefix.Trim()} in:\n" + string.Join("\n", metrics.Split('\n').Where(l => l.Contains("lmcache_router_" + name, StringComparison.Ordinal))));
        return double.Parse(line[prefix.Length..], System.Globalization.CultureInfo.InvariantCulture);
    }

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "timed out waiting");
            await Task.Delay(10);
        }
    }
}
