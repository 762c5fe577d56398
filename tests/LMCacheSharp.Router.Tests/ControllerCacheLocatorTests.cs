using System.Text;
using LMCacheSharp.Controller.Tests;
using Publisher = LMCacheSharp.Controller.Tests.FakeInstance;

namespace LMCacheSharp.Router.Tests;

/// <summary>
/// kv-aware with <c>--controller</c>: a real controller in process whose directory is fed by real KV event publishers, over
/// scripted instances whose own /lookup says the opposite, so that the answering instance tells which source was used.
/// </summary>
public sealed class ControllerCacheLocatorTests
{
    // 4 whole chunks of the publishers' chunk size (4): sent as a token-id prompt, which the controller looks up as "tokens".
    private static readonly int[] Document = [.. Enumerable.Range(500, 16)];

    private static Action<RouterOptions> ControllerMode(RunningController controller, double intervalSeconds) => o =>
    {
        o.Controller = new Uri(controller.Url);
        o.ControllerInterval = TimeSpan.FromSeconds(intervalSeconds);
        o.KvTieTokens = 0; // 16 tokens against 0 or 50 decide: no near-tie band
    };

    /// <summary>A and B registered with the controller; only B's events stored the document; A's own /lookup claims 50 tokens.</summary>
    private static async Task<(FakeInstance A, FakeInstance B, Publisher PA, Publisher PB)> FleetAsync(RunningController controller)
    {
        var a = await FakeInstance.StartAsync();
        var b = await FakeInstance.StartAsync();
        a.CachedTokens = 50;
        var pa = new Publisher(a.BaseUrl);
        var pb = new Publisher(b.BaseUrl, pa.Namespace.ModelFingerprint);
        await pa.RegisterAsync(controller, "fake");
        await pb.RegisterAsync(controller, "fake");
        pb.Store(Document);
        await pb.FlushAsync();
        await RunningController.EventuallyAsync(() => controller.Directory.Count == 4, "B's 4 chunks in the directory");
        return (a, b, pa, pb);
    }

    [Fact]
    public async Task Kv_aware_picks_the_instance_the_controllers_directory_says_holds_the_prefix_in_one_round_trip()
    {
        await using var controller = await RunningController.StartAsync();
        var (a, b, pa, pb) = await FleetAsync(controller);
        try
        {
            await using var router = await RouterHost.StartAsync(RoutingPolicyKind.KvAware, [], ControllerMode(controller, 60));
            Assert.Equal(new[] { a.BaseUrl, b.BaseUrl }.Order(StringComparer.Ordinal), router.Members.Select(m => m.Name).Order(StringComparer.Ordinal));
            for (var i = 0; i < 3; i++)
            {
                var (status, instance, _) = await router.PostAsync("/v1/completions", new { model = "fake", prompt = Document, max_tokens = 1 });
                Assert.Equal(200, status);
                Assert.Equal(b.BaseUrl, instance);
            }

            // One lookup per request, at the controller; none at the instances.
            Assert.Equal(0, a.Lookups + b.Lookups);
            var metrics = await router.MetricsAsync();
            Assert.Equal(3, RouterTests.Metric(metrics, "controller_lookups", "outcome=\"ok\"")); // this router's registry: its own counts only
            // A prompt of another document: nothing cached anywhere, so it goes to either.
            var (other, _, _) = await router.PostAsync("/v1/completions", new { model = "fake", prompt = new[] { 1, 2, 3, 4, 5 } });
            Assert.Equal(200, other);
        }
        finally
        {
            pa.Dispose();
            pb.Dispose();
            await a.DisposeAsync();
            await b.DisposeAsync();
        }
    }

    [Fact]
    public async Task With_the_controllers_lookup_down_kv_aware_asks_the_instances_directly_for_the_interval_and_keeps_the_list()
    {
        var controller = await RunningController.StartAsync();
        var (a, b, pa, pb) = await FleetAsync(controller);
        try
        {
            await using var router = await RouterHost.StartAsync(RoutingPolicyKind.KvAware, [], ControllerMode(controller, 60));
            Assert.Equal(b.BaseUrl, (await router.PostAsync("/v1/completions", new { model = "fake", prompt = Document })).Instance);
            await controller.DisposeAsync(); // connection refused from now on

            // The instances' own /lookup answers instead: A claims 50 cached tokens, B none.
            for (var i = 0; i < 3; i++)
            {
                var (status, instance, _) = await router.PostAsync("/v1/completions", new { model = "fake", prompt = Document });
                Assert.Equal(200, status);
                Assert.Equal(a.BaseUrl, instance);
            }

            Assert.Equal(3, a.Lookups);
            Assert.Equal(3, b.Lookups);
            var metrics = await router.MetricsAsync();
            Assert.Equal(1, RouterTests.Metric(metrics, "controller_lookups", "outcome=\"error\""));
            Assert.Equal(2, RouterTests.Metric(metrics, "controller_lookups", "outcome=\"skipped\"")); // within the fallback window
            // The instance list stays as the controller last gave it; the router's own probes keep it honest.
            Assert.False(await router.Link.RefreshAsync());
            Assert.Equal(2, router.Members.Count(m => m.Healthy));
            Assert.NotNull(router.Link.LastError);
        }
        finally
        {
            pa.Dispose();
            pb.Dispose();
            await a.DisposeAsync();
            await b.DisposeAsync();
        }
    }

    [Fact]
    public void The_lookup_body_carries_the_model_salt_and_prompt_or_messages_and_refuses_a_batch()
    {
        static string? Body(string json) => ControllerCacheLocator.LookupBody(RoutingRequest.Parse("/v1/completions", Encoding.UTF8.GetBytes(json), null)) is { } b
            ? Encoding.UTF8.GetString(b)
            : null;

        Assert.Equal("""{"model":"m","cache_salt":"t","prompt":"hello"}""", Body("""{"model":"m","prompt":"hello","max_tokens":5,"cache_salt":"t"}"""));
        Assert.Equal("""{"tokens":[1,2,3]}""", Body("""{"prompt":[1,2,3],"stream":true}"""));
        Assert.Equal("""{"model":"m","messages":[{"role":"user","content":"hi"}]}""", Body("""{"model":"m","messages":[{"role":"user","content":"hi"}],"user":"u"}"""));
        Assert.Null(Body("""{"prompt":["a","b"]}"""));
        Assert.Null(Body("""[1,2]"""));
    }
}
