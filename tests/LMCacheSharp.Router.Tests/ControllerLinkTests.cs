using System.Text.Json.Nodes;
using LMCacheSharp.Controller.Tests;

namespace LMCacheSharp.Router.Tests;

/// <summary><c>router --controller</c>: the instance list follows the controller's registry, and decisions reach its dashboard.</summary>
public sealed class ControllerLinkTests
{
    private static async Task<string> RegisterAsync(RunningController controller, FakeInstance instance) =>
        (await controller.OkAsync("/instances/register", new { url = instance.BaseUrl, model = instance.Model }))["id"]!.GetValue<string>();

    private static async Task EventuallyAsync(Func<Task<bool>> condition, string what, double seconds = 20)
    {
        var deadline = DateTime.UtcNow.AddSeconds(seconds);
        while (!await condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "timed out waiting: " + what);
            await Task.Delay(20);
        }
    }

    private static async Task<List<string?>> SendAsync(RouterHost router, int n)
    {
        var answered = new List<string?>();
        for (var i = 0; i < n; i++)
        {
            var (status, instance, _) = await router.PostAsync("/v1/completions", new { model = "fake", prompt = "hi" });
            Assert.Equal(200, status);
            answered.Add(instance);
        }

        return answered;
    }

    [Fact]
    public async Task An_instance_registered_later_gets_traffic_and_an_expired_one_none()
    {
        await using var controller = await RunningController.StartAsync(o =>
        {
            o.HeartbeatInterval = TimeSpan.FromMilliseconds(100);
            o.HeartbeatTimeout = TimeSpan.FromMilliseconds(1500);
        });
        await using var a = await FakeInstance.StartAsync();
        await using var b = await FakeInstance.StartAsync();
        var alive = new System.Collections.Concurrent.ConcurrentDictionary<string, bool>();
        alive[await RegisterAsync(controller, a)] = true;
        using var stop = new CancellationTokenSource();
        var heartbeats = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                foreach (var (id, beating) in alive.ToArray())
                {
                    if (beating)
                    {
                        await controller.PostAsync("/instances/heartbeat", new { id, load = new { in_flight = 0, queued = 0 } });
                    }
                }

                await Task.Delay(100);
            }
        });
        try
        {
            await using var router = await RouterHost.StartAsync(RoutingPolicyKind.RoundRobin, [], o =>
            {
                o.Controller = new Uri(controller.Url);
                o.ControllerInterval = TimeSpan.FromMilliseconds(100);
            });
            Assert.All(await SendAsync(router, 3), i => Assert.Equal(a.BaseUrl, i));

            // B registers: the next refresh adds it and probes it at once.
            var bId = await RegisterAsync(controller, b);
            alive[bId] = true;
            await EventuallyAsync(() => Task.FromResult(router.Members.Count(m => m.Healthy) == 2), "B joins the router");
            Assert.Equal(bId, router.Members.Single(m => m.Name == b.BaseUrl).ControllerId);
            Assert.Equal(new[] { a.BaseUrl, b.BaseUrl }.Order(StringComparer.Ordinal), (await SendAsync(router, 4)).Distinct().Order(StringComparer.Ordinal));

            // A stops heartbeating: the controller expires it, and the router drops it at its next refresh.
            alive[alive.Keys.Single(k => k != bId)] = false;
            await EventuallyAsync(() => Task.FromResult(router.Members.Count == 1), "A expires and leaves the router");
            var before = a.Completions;
            Assert.All(await SendAsync(router, 4), i => Assert.Equal(b.BaseUrl, i));
            Assert.Equal(before, a.Completions);
            var health = JsonNode.Parse(await router.Http.GetStringAsync("/health"))!;
            Assert.Equal(b.BaseUrl, health["instances"]!.AsArray().Single()!["url"]!.GetValue<string>());
            Assert.Equal(controller.Url.TrimEnd('/') + "/", health["controller"]!["url"]!.GetValue<string>());
        }
        finally
        {
            await stop.CancelAsync();
            await heartbeats;
        }
    }

    [Fact]
    public async Task The_router_reports_its_decisions_to_the_controller_with_its_token_and_a_wrong_token_is_refused()
    {
        await using var controller = await RunningController.StartAsync(o => o.AuthToken = "s3cret");
        await using var a = await FakeInstance.StartAsync();
        await RegisterAsync(controller, a);
        await using var router = await RouterHost.StartAsync(RoutingPolicyKind.RoundRobin, [], o =>
        {
            o.Controller = new Uri(controller.Url);
            o.ControllerToken = "s3cret";
            o.ControllerInterval = TimeSpan.FromMilliseconds(100);
        });
        await using var wrong = await RouterHost.StartAsync(RoutingPolicyKind.LeastLoaded, [], o =>
        {
            o.Controller = new Uri(controller.Url);
            o.ControllerToken = "guess";
            o.ControllerInterval = TimeSpan.FromMilliseconds(100);
        });
        await SendAsync(router, 3);

        JsonArray routers = [];
        await EventuallyAsync(async () =>
        {
            var text = await controller.Http.GetStringAsync("/events?limit=1");
            var data = text.Split('\n').Single(l => l.StartsWith("data: ", StringComparison.Ordinal))["data: ".Length..];
            routers = JsonNode.Parse(data)!["routers"]!.AsArray();
            return routers.Any(r => r!["router"]!.GetValue<string>() == router.BaseUrl && r["decisions_total"]!.GetValue<long>() == 3);
        }, "the router's 3 decisions on the controller's dashboard");
        Assert.Equal("round-robin", routers.Single(r => r!["router"]!.GetValue<string>() == router.BaseUrl)!["policy"]!.GetValue<string>());
        // The wrong token still reads the instance list (GET needs no token) but its reports are refused.
        Assert.Single(wrong.Members);
        await EventuallyAsync(() => Task.FromResult(wrong.Link.LastError?.Contains("401", StringComparison.Ordinal) == true), "the refused report");
        // Only the router with the token, and only under its address (no report before it listened).
        Assert.Equal([router.BaseUrl], routers.Select(r => r!["router"]!.GetValue<string>()));
    }
}
