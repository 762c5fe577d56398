using System.Text.Json.Nodes;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.KvEvents;
using LMCacheSharp.LlamaCpp.Gguf;
using LMCacheSharp.Serving;
using LMCacheSharp.Serving.Fleet;
using LMCacheSharp.Serving.Inference;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;

namespace LMCacheSharp.Controller.Tests;

/// <summary>A real <c>lmcache serve</c> (the generated tiny model) registered with a controller, as <c>--controller</c> wires it.</summary>
public sealed class ServeWithControllerTests
{
    private static readonly Lazy<string> Model = new(() =>
    {
        var path = Path.Combine(Path.GetTempPath(), $"lmcachesharp-controller-tests-{Environment.ProcessId}.gguf");
        GgufModelWriter.Write(LlamaModelSpec.FromPreset("tiny"), path);
        AppDomain.CurrentDomain.ProcessExit += (_, _) => File.Delete(path);
        return path;
    });

    [Fact]
    public async Task A_completion_on_a_registered_instance_is_found_by_a_lookup_by_prompt_and_a_clear_removes_it()
    {
        await using var controller = await RunningController.StartAsync(o => o.AuthToken = "fleet");
        var options = new ServingOptions { ModelPath = Model.Value, ModelName = "tiny", ContextSize = 2048, Threads = 1, FlashAttention = false, DefaultMaxTokens = 4 };
        var cache = new LMCacheOptions { ChunkSize = 16, MaxLocalCpuSize = 0.05, KvEventsEndpoint = "tcp://127.0.0.1:0", KvEventsReplayEndpoint = "tcp://127.0.0.1:0" };
        await using var app = ServingApp.Build(options, cache, ["http://127.0.0.1:0"]);
        var service = app.Services.GetRequiredService<InferenceService>();
        app.MapFleet(service, "fleet");
        await app.StartAsync();
        var url = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        await using (var registration = ControllerRegistration.Start(new Uri(controller.Url), "fleet", url, service, app.Services.GetRequiredService<ZmqKvEventPublisher>(), NullLogger.Instance))
        {
            await RunningController.EventuallyAsync(() => registration.InstanceId is not null, "the instance registers");
            const string Prompt = "The controller knows where every chunk lives: this prompt is long enough to fill a few chunks of sixteen tokens.";
            using var http = new HttpClient { BaseAddress = new Uri(url) };
            using (var response = await http.PostAsync("/v1/completions", System.Net.Http.Json.JsonContent.Create(new { prompt = Prompt, max_tokens = 2, temperature = 0 })))
            {
                Assert.True(response.IsSuccessStatusCode, await response.Content.ReadAsStringAsync());
            }

            var tokens = service.TokenizeCompletion(Prompt);
            var whole = tokens.Length / 16 * 16;
            JsonObject lookup = [];
            await RunningController.EventuallyAsync(() =>
            {
                lookup = controller.OkAsync("/lookup", new { model = "tiny", prompt = Prompt }).GetAwaiter().GetResult();
                return lookup["instances"]![0]!["cached_tokens"]!["memory"]!.GetValue<int>() >= whole;
            }, "the prompt's chunks in the directory");
            Assert.Equal(tokens.Length, lookup["prompt_tokens"]!.GetValue<int>());
            Assert.Equal(registration.InstanceId, lookup["instances"]![0]!["id"]!.GetValue<string>());

            // Heartbeats carry load and cache figures.
            await RunningController.EventuallyAsync(() => controller.Registry.Find(registration.InstanceId!)!.Stats.LookupTokens > 0, "a heartbeat with stats");

            // The instance's own admin endpoint needs the fleet token; through the controller it has it.
            using (var denied = await http.PostAsync("/lmcache/clear", System.Net.Http.Json.JsonContent.Create(new { all = true })))
            {
                Assert.Equal(401, (int)denied.StatusCode);
            }

            // Bad inputs to the admin endpoints (with the token): clear 4xx in OpenAI's shape; the next good request succeeds.
            http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", "fleet");
            foreach (var (path, body, status) in new[]
            {
                ("/lmcache/prefetch", "{not json", 400), ("/lmcache/clear", "[1, 2]", 400), ("/lmcache/tokenize", "\"just a string\"", 400),
                ("/lmcache/prefetch", "{\"prompt\": 5}", 400), ("/lmcache/pin", "{}", 400),
                ("/lmcache/unpin", "{\"tokens\": [1], \"tier\": \"remote\"}", 400), // this instance has no remote tier
            })
            {
                using var bad = await http.PostAsync(path, new StringContent(body, System.Text.Encoding.UTF8, "application/json"));
                Assert.True((int)bad.StatusCode == status, $"{path} {body}: {(int)bad.StatusCode} {await bad.Content.ReadAsStringAsync()}");
                Assert.Contains("\"error\"", await bad.Content.ReadAsStringAsync(), StringComparison.Ordinal);
            }

            http.DefaultRequestHeaders.Authorization = null;
            var prefetch = await controller.OkAsync("/prefetch", new { model = "tiny", prompt = Prompt });
            Assert.Equal(200, prefetch["instances"]![0]!["status"]!.GetValue<int>());
            Assert.True(prefetch["instances"]![0]!["result"]!["tokens_in_memory"]!.GetValue<int>() >= whole, prefetch.ToJsonString());

            // Pin through the controller: forwarded to the instance with the fleet token, answered per instance.
            var pin = await controller.OkAsync("/pin", new { model = "tiny", prompt = Prompt });
            Assert.Equal(200, pin["instances"]![0]!["status"]!.GetValue<int>());
            Assert.Equal(whole / 16, pin["instances"]![0]!["result"]!["memory"]!["pinned_chunks"]!.GetValue<int>());
            Assert.Equal(whole, pin["instances"]![0]!["result"]!["memory"]!["pinned_tokens"]!.GetValue<int>());
            Assert.Equal(whole / 16, service.Cache!.Engine.Metrics.Pinned.Chunks);
            var unpin = await controller.OkAsync("/unpin", new { instance = registration.InstanceId, prompt = Prompt });
            Assert.Equal(whole / 16, unpin["instances"]![0]!["result"]!["memory"]!["unpinned_chunks"]!.GetValue<int>());
            Assert.Equal(0, service.Cache.Engine.Metrics.Pinned.Chunks);

            var clear = await controller.OkAsync("/clear", new { all = true });
            Assert.Equal(200, clear["instances"]![0]!["status"]!.GetValue<int>());
            await RunningController.EventuallyAsync(() => controller.Directory.Count == 0, "the clear's events empty the directory");
        }

        // Disposing the registration deregisters the instance.
        Assert.Equal(0, controller.Registry.Count);
        await app.StopAsync();
    }

    [Fact]
    public async Task Registration_retries_until_the_controller_comes_up()
    {
        // A free port with nothing on it yet.
        var probe = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        probe.Start();
        var port = ((System.Net.IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop();
        var options = new ServingOptions { ModelPath = Model.Value, ModelName = "tiny", ContextSize = 512, Threads = 1, FlashAttention = false };
        await using var app = ServingApp.Build(options, new LMCacheOptions { ChunkSize = 16, MaxLocalCpuSize = 0.05 }, ["http://127.0.0.1:0"]);
        await app.StartAsync();
        var service = app.Services.GetRequiredService<InferenceService>();
        await using var registration = ControllerRegistration.Start(new Uri($"http://127.0.0.1:{port}"), null, "http://127.0.0.1:1", service, null, NullLogger.Instance);
        await Task.Delay(500);
        Assert.Null(registration.InstanceId); // nothing there: serving goes on
        await using var controller = await RunningController.StartAsync(o => o.Port = port);
        await RunningController.EventuallyAsync(() => registration.InstanceId is not null, "registered after the controller came up", 30);
        await app.StopAsync();
    }
}
