using System.Net.Http.Json;
using System.Text.Json;
using System.Text.Json.Nodes;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.LlamaCpp.Gguf;
using LMCacheSharp.Serving;
using LMCacheSharp.Serving.Inference;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;

[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace LMCacheSharp.Serving.Tests;

/// <summary>A tiny generated model (random weights), made once per test run.</summary>
internal static class TestModel
{
    private static readonly Lazy<string> PathLazy = new(() =>
    {
        var dir = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "lmcachesharp-serving-tests");
        Directory.CreateDirectory(dir);
        var path = System.IO.Path.Combine(dir, "tiny-" + Environment.ProcessId + ".gguf");
        GgufModelWriter.Write(LlamaModelSpec.FromPreset("tiny"), path);
        AppDomain.CurrentDomain.ProcessExit += (_, _) => System.IO.File.Delete(path);
        return path;
    });

    public static string File => PathLazy.Value;
}

/// <summary>A running server on 127.0.0.1 port 0 with its own model context and cache.</summary>
public sealed class TestServer : IAsyncDisposable
{
    private readonly WebApplication _app;

    private TestServer(WebApplication app, string baseUrl)
    {
        _app = app;
        BaseUrl = baseUrl;
        Http = new HttpClient { BaseAddress = new Uri(baseUrl), Timeout = TimeSpan.FromMinutes(2) };
    }

    public string BaseUrl { get; }

    public HttpClient Http { get; }

    public InferenceService Service => _app.Services.GetRequiredService<InferenceService>();

    public IServiceProvider Services => _app.Services;

    public static async Task<TestServer> StartAsync(Action<ServingOptions>? configure = null, int chunkSize = 16,
        Action<LMCacheOptions>? configureCache = null,
        Func<LMCacheSharp.Core.Kv.KvBufferPool, LMCacheSharp.Core.Metrics.CacheMetrics, IEnumerable<LMCacheSharp.Core.Storage.IStorageTier>>? lowerTiers = null,
        Action<WebApplication>? map = null)
    {
        var options = new ServingOptions
        {
            ModelPath = TestModel.File,
            ModelName = "tiny",
            ContextSize = 2048,
            MaxConcurrentRequests = 4,
            Threads = 1,
            FlashAttention = false,
            DefaultMaxTokens = 16,
        };
        configure?.Invoke(options);
        var cache = new LMCacheOptions { ChunkSize = chunkSize, MaxLocalCpuSize = 0.05 };
        configureCache?.Invoke(cache);
        var app = ServingApp.Build(options, cache, ["http://127.0.0.1:0"], lowerTiers);
        map?.Invoke(app); // more endpoints (the fleet's), mapped before the app starts
        await app.StartAsync();
        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        return new TestServer(app, address);
    }

    public async Task<JsonObject> PostAsync(string path, object body, int expectedStatus = 200)
    {
        using var response = await Http.PostAsJsonAsync(path, body);
        var text = await response.Content.ReadAsStringAsync();
        Assert.True((int)response.StatusCode == expectedStatus, $"status {(int)response.StatusCode}, body {text}");
        return JsonNode.Parse(text)!.AsObject();
    }

    public async Task<(string Text, int Cached, int Prompt)> CompleteAsync(string prompt, int maxTokens = 12, string? salt = null, bool skipSave = false)
    {
        var body = new Dictionary<string, object?> { ["prompt"] = prompt, ["max_tokens"] = maxTokens, ["temperature"] = 0 };
        if (salt is not null)
        {
            body["cache_salt"] = salt;
        }

        if (skipSave)
        {
            body["kv_transfer_params"] = new Dictionary<string, object> { ["lmcache.skip_save"] = true };
        }

        var json = await PostAsync("/v1/completions", body);
        return (json["choices"]![0]!["text"]!.GetValue<string>(), json["usage"]!["prompt_tokens_details"]!["cached_tokens"]!.GetValue<int>(),
            json["usage"]!["prompt_tokens"]!.GetValue<int>());
    }

    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}

internal static class Prompts
{
    // About 200 tokens with the byte-level test vocabulary.
    public static string Long(string topic) =>
        string.Join(' ', Enumerable.Range(0, 12).Select(i => $"{topic} paragraph {i}: caches keep the keys and values of every token."));
}
