using System.Net.Http.Json;
using System.Text.Json.Nodes;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.LlamaCpp.Gguf;
using LMCacheSharp.Serving;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace LMCacheSharp.Router.Tests;

internal static class Addresses
{
    public static string Of(WebApplication app) => app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
}

/// <summary>A tiny generated model (random weights), made once per test run.</summary>
internal static class TinyModel
{
    private static readonly Lazy<string> PathLazy = new(() =>
    {
        var dir = Path.Combine(Path.GetTempPath(), "lmcachesharp-router-tests");
        Directory.CreateDirectory(dir);
        var path = Path.Combine(dir, "tiny-" + Environment.ProcessId + ".gguf");
        GgufModelWriter.Write(LlamaModelSpec.FromPreset("tiny"), path);
        AppDomain.CurrentDomain.ProcessExit += (_, _) => System.IO.File.Delete(path);
        return path;
    });

    public static string File => PathLazy.Value;

    // About 200 tokens with the byte-level test vocabulary.
    public static string Document(string topic) =>
        string.Join(' ', Enumerable.Range(0, 12).Select(i => $"{topic} paragraph {i}: caches keep the keys and values of every token."));
}

/// <summary>A real <c>lmcache serve</c> on 127.0.0.1 port 0 with the tiny model, its own context and memory cache (16-token chunks).</summary>
public sealed class ServeInstance : IAsyncDisposable
{
    private readonly WebApplication _app;
    private bool _stopped;

    private ServeInstance(WebApplication app)
    {
        _app = app;
        BaseUrl = Addresses.Of(app);
        Http = new HttpClient { BaseAddress = new Uri(BaseUrl), Timeout = TimeSpan.FromMinutes(2) };
    }

    public string BaseUrl { get; }

    public HttpClient Http { get; }

    public static async Task<ServeInstance> StartAsync(string modelName = "tiny", ServeRole role = ServeRole.Both, string? remoteUrl = null)
    {
        var options = new ServingOptions
        {
            ModelPath = TinyModel.File,
            ModelName = modelName,
            ContextSize = 2048,
            MaxConcurrentRequests = 2,
            Threads = 1,
            FlashAttention = false,
            DefaultMaxTokens = 16,
            EnableInContextSharing = false, // reuse comes from the cache tiers alone, which is what /lookup counts
            LogLevel = LogLevel.Warning,
            Role = role,
        };
        var app = ServingApp.Build(options, new LMCacheOptions { ChunkSize = 16, MaxLocalCpuSize = 0.05, RemoteUrl = remoteUrl }, ["http://127.0.0.1:0"]);
        await app.StartAsync();
        return new ServeInstance(app);
    }

    /// <summary>Stops the server (a killed instance): its port refuses connections from now on.</summary>
    public async Task StopAsync()
    {
        if (!_stopped)
        {
            _stopped = true;
            await _app.StopAsync();
        }
    }

    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        await StopAsync();
        await _app.DisposeAsync();
    }
}

/// <summary>
/// A scripted OpenAI-compatible instance: answers /health, /v1/models, /load and /lookup as told, and completions with
/// {"instance": name, "prompt": ...}; a completion whose prompt is "hold" waits until <see cref="Release"/>.
/// </summary>
public sealed class FakeInstance : IAsyncDisposable
{
    private readonly WebApplication _app;
    private TaskCompletionSource _release = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _completions;
    private int _holding;
    private int _lookups;

    private FakeInstance(WebApplication app, string model)
    {
        _app = app;
        Model = model;
        BaseUrl = Addresses.Of(app);
    }

    public string BaseUrl { get; }

    public string Model { get; }

    public int HealthStatus { get; set; } = 200;

    public int CompletionStatus { get; set; } = 200;

    public int Running { get; set; }

    public int Queued { get; set; }

    public int CachedTokens { get; set; }

    /// <summary>Completions answered or held (not counting those refused with <see cref="CompletionStatus"/>).</summary>
    public int Completions => Volatile.Read(ref _completions);

    public int Holding => Volatile.Read(ref _holding);

    /// <summary>POST /lookup calls answered (kv-aware asking this instance directly).</summary>
    public int Lookups => Volatile.Read(ref _lookups);

    /// <summary>Streamed completions write these pieces, flushing after each, waiting on <see cref="StreamGate"/> after the first.</summary>
    public IReadOnlyList<byte[]> StreamPieces { get; set; } = [];

    public TaskCompletionSource? StreamGate { get; set; }

    public void Release()
    {
        _release.TrySetResult();
        _release = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    public static async Task<FakeInstance> StartAsync(string model = "fake")
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        var app = builder.Build();
        FakeInstance? self = null;
        app.MapGet("/health", () => Results.Json(new { status = self!.HealthStatus == 200 ? "ok" : "unhealthy" }, statusCode: self!.HealthStatus));
        app.MapGet("/v1/models", () => Results.Json(new { @object = "list", data = new[] { new { id = self!.Model, @object = "model", owned_by = "fake" } } }));
        app.MapGet("/load", () => Results.Json(new { in_flight = self!.Running, queued = self!.Queued }));
        app.MapPost("/lookup", () =>
        {
            Interlocked.Increment(ref self!._lookups);
            return Results.Json(new
            {
                prompt_tokens = 100,
                cached_tokens = new { memory = self!.CachedTokens, disk = (int?)null, remote = (int?)null },
                load = new { in_flight = self!.Running, queued = self!.Queued },
            });
        });
        app.MapPost("/v1/completions", (HttpContext http) => self!.CompleteAsync(http));
        app.MapPost("/v1/chat/completions", (HttpContext http) => self!.CompleteAsync(http));
        await app.StartAsync();
        self = new FakeInstance(app, model);
        return self;
    }

    private async Task CompleteAsync(HttpContext http)
    {
        var body = await http.Request.ReadFromJsonAsync<JsonObject>();
        if (CompletionStatus != 200)
        {
            http.Response.StatusCode = CompletionStatus;
            await http.Response.WriteAsJsonAsync(new { error = new { message = "scripted failure", type = "server_error" } });
            return;
        }

        Interlocked.Increment(ref _completions);
        var prompt = body?["prompt"]?.ToString();
        if (prompt == "hold")
        {
            Interlocked.Increment(ref _holding);
            try
            {
                await _release.Task.WaitAsync(TimeSpan.FromSeconds(60), http.RequestAborted);
            }
            finally
            {
                Interlocked.Decrement(ref _holding);
            }
        }

        if (body?["stream"]?.GetValue<bool>() == true)
        {
            http.Response.ContentType = "text/event-stream";
            for (var i = 0; i < StreamPieces.Count; i++)
            {
                await http.Response.Body.WriteAsync(StreamPieces[i]);
                await http.Response.Body.FlushAsync();
                if (i == 0 && StreamGate is { } gate)
                {
                    await gate.Task.WaitAsync(TimeSpan.FromSeconds(60));
                }

                if (i == 0 && prompt == "die")
                {
                    http.Abort(); // a crash in the middle of a stream
                    return;
                }
            }

            return;
        }

        await http.Response.WriteAsJsonAsync(new
        {
            instance = BaseUrl,
            prompt,
            usage = new { prompt_tokens = 100, completion_tokens = 1, prompt_tokens_details = new { cached_tokens = CachedTokens } },
        });
    }

    public async ValueTask DisposeAsync()
    {
        Release();
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}

/// <summary>A router on 127.0.0.1 port 0 over the given instances.</summary>
public sealed class RouterHost : IAsyncDisposable
{
    private readonly WebApplication _app;

    private RouterHost(WebApplication app)
    {
        _app = app;
        BaseUrl = Addresses.Of(app);
        Http = new HttpClient { BaseAddress = new Uri(BaseUrl), Timeout = TimeSpan.FromMinutes(2) };
    }

    public string BaseUrl { get; }

    public HttpClient Http { get; }

    public HealthMonitor Monitor => _app.Services.GetRequiredService<HealthMonitor>();

    public RouterMetrics Metrics => _app.Services.GetRequiredService<RouterMetrics>();

    /// <summary>The instances the router routes over now.</summary>
    public IReadOnlyList<RouterInstance> Members => _app.Services.GetRequiredService<InstanceSet>().Current;

    /// <summary>With --controller: the link to it.</summary>
    public ControllerLink Link => _app.Services.GetRequiredService<ControllerLink>();

    public static async Task<RouterHost> StartAsync(RoutingPolicyKind policy, IEnumerable<string> instances, Action<RouterOptions>? configure = null)
    {
        var options = new RouterOptions
        {
            Instances = [.. instances.Select(u => new Uri(u))],
            Policy = policy,
            HealthInterval = TimeSpan.FromSeconds(60), // tests probe when they mean to (Monitor.ProbeAllAsync)
            LookupTimeout = TimeSpan.FromSeconds(5), // this machine is shared and slow; the default is 50 ms
            LogLevel = LogLevel.Warning,
        };
        configure?.Invoke(options);
        var app = RouterApp.Build(options, ["http://127.0.0.1:0"]);
        await app.StartAsync();
        return new RouterHost(app);
    }

    /// <summary>POSTs <paramref name="body"/> as JSON; returns the status, the answering instance (X-LMCache-Instance) and the body.</summary>
    public async Task<(int Status, string? Instance, JsonObject? Body)> PostAsync(string path, object body, string? session = null)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = JsonContent.Create(body) };
        if (session is not null)
        {
            request.Headers.Add("X-Session-Id", session);
        }

        using var response = await Http.SendAsync(request);
        var text = await response.Content.ReadAsStringAsync();
        var instance = response.Headers.TryGetValues("X-LMCache-Instance", out var values) ? values.Single() : null;
        return ((int)response.StatusCode, instance, text.Length > 0 && text[0] == '{' ? JsonNode.Parse(text)!.AsObject() : null);
    }

    public async Task<string> MetricsAsync() => await Http.GetStringAsync("/metrics");

    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
