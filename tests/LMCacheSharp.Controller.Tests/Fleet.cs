using System.Net.Http.Json;
using System.Text.Json.Nodes;
using LMCacheSharp.Core.Events;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.KvEvents;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;

namespace LMCacheSharp.Controller.Tests;

/// <summary>A controller on 127.0.0.1 port 0, with a client.</summary>
public sealed class RunningController : IAsyncDisposable
{
    private readonly WebApplication _app;

    private RunningController(WebApplication app, string url, string? token)
    {
        _app = app;
        Url = url;
        Http = new HttpClient { BaseAddress = new Uri(url), Timeout = TimeSpan.FromSeconds(60) };
        if (token is not null)
        {
            Http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", token);
        }
    }

    public string Url { get; }

    public HttpClient Http { get; }

    public ChunkDirectory Directory => _app.Services.GetRequiredService<ChunkDirectory>();

    public InstanceRegistry Registry => _app.Services.GetRequiredService<InstanceRegistry>();

    public static async Task<RunningController> StartAsync(Action<ControllerOptions>? configure = null)
    {
        var options = new ControllerOptions { Port = 0, HeartbeatInterval = TimeSpan.FromMilliseconds(200), HeartbeatTimeout = TimeSpan.FromSeconds(30) };
        configure?.Invoke(options);
        var app = ControllerApp.Build(options, [$"http://127.0.0.1:{options.Port}"]);
        await app.StartAsync();
        var url = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        return new RunningController(app, url, options.AuthToken);
    }

    public async Task<(int Status, JsonObject Body)> PostAsync(string path, object body)
    {
        using var response = await Http.PostAsJsonAsync(path, body);
        var text = await response.Content.ReadAsStringAsync();
        return ((int)response.StatusCode, JsonNode.Parse(text) as JsonObject ?? []);
    }

    public async Task<JsonObject> OkAsync(string path, object body)
    {
        var (status, json) = await PostAsync(path, body);
        Assert.True(status == 200, $"{path}: {status} {json.ToJsonString()}");
        return json;
    }

    /// <summary>Waits until <paramref name="condition"/> holds (the directory fills from another thread).</summary>
    public static async Task EventuallyAsync(Func<bool> condition, string what, double seconds = 20)
    {
        var deadline = DateTime.UtcNow.AddSeconds(seconds);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "timed out waiting: " + what);
            await Task.Delay(20);
        }
    }

    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}

/// <summary>A fake instance: a real KV event publisher driven directly, with the namespace the controller is told about.</summary>
public sealed class FakeInstance : IDisposable
{
    public const int ChunkSize = 4;

    public FakeInstance(string url = "http://127.0.0.1:1", string? fingerprint = null)
    {
        Url = url;
        Namespace = new CacheNamespace(fingerprint ?? "fp-" + Guid.NewGuid().ToString("N"), new KvFormat(2, 8, 8, KvDataType.F16, KvLayout.LayerKV));
        Publisher = new ZmqKvEventPublisher(new KvEventPublisherOptions { Endpoint = "tcp://127.0.0.1:0", ReplayEndpoint = "tcp://127.0.0.1:0", BlockSize = ChunkSize });
    }

    public string Url { get; }

    public CacheNamespace Namespace { get; }

    public ZmqKvEventPublisher Publisher { get; }

    public string? Id { get; set; }

    public object Registration(string model = "tiny") => new
    {
        url = Url,
        model,
        chunk_size = ChunkSize,
        tiers = new[] { "memory", "disk" },
        @namespace = new
        {
            fingerprint = Namespace.ModelFingerprint,
            layers = Namespace.Format.Layers,
            k_bytes_per_token = Namespace.Format.KBytesPerToken,
            v_bytes_per_token = Namespace.Format.VBytesPerToken,
            dtype = Namespace.Format.DataType.ToString(),
            layout = Namespace.Format.Layout.ToString(),
        },
        kv_events = Publisher.Endpoint,
        kv_events_replay = Publisher.ReplayEndpoint,
        kv_events_topic = Publisher.Topic,
    };

    public async Task<string> RegisterAsync(RunningController controller, string model = "tiny")
    {
        var json = await controller.OkAsync("/instances/register", Registration(model));
        Id = json["id"]!.GetValue<string>();
        return Id;
    }

    /// <summary>Publishes the prompt's whole chunks (and its partial tail when asked) as stored in <paramref name="medium"/>.</summary>
    public ChunkHash[] Store(int[] tokens, KvMedium medium = KvMedium.Cpu, bool tail = false, string? salt = null)
    {
        var ns = salt is null ? Namespace : Namespace.WithSalt(salt);
        var keys = PrefixHasher.ComputeKeys(ns, tokens, ChunkSize, includePartial: tail);
        for (var i = 0; i < keys.Length; i++)
        {
            var chunk = tokens[(i * ChunkSize)..Math.Min(tokens.Length, (i + 1) * ChunkSize)];
            Publisher.Publish(KvEvent.Stored(medium, keys[i], i == 0 ? null : keys[i - 1], chunk));
        }

        return keys;
    }

    public void Remove(ChunkHash key, KvMedium medium = KvMedium.Cpu) => Publisher.Publish(KvEvent.Removed(medium, key));

    public Task FlushAsync() => Publisher.FlushAsync();

    public void Dispose() => Publisher.Dispose();
}
