using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace LMCacheSharp.Bench.Tests;

public sealed class PeerWorkloadsTests
{
    [Fact]
    public void A_document_is_the_same_text_for_the_same_index_on_every_run()
    {
        var first = PeerWorkloads.Document(3, 200);
        Assert.Equal(first, PeerWorkloads.Document(3, 200));
        Assert.NotEqual(first, PeerWorkloads.Document(4, 200));
        Assert.StartsWith("Document 3. ", first, StringComparison.Ordinal);
        Assert.Equal(200 + 2, first.Split(' ', StringSplitOptions.RemoveEmptyEntries).Length); // "Document 3." and the words
        // A longer document of the same index continues the shorter one: the prefix a cache shares.
        Assert.StartsWith(first.TrimEnd(), PeerWorkloads.Document(3, 400), StringComparison.Ordinal);
    }

    [Fact]
    public void Questions_differ_per_round_and_name_their_document()
    {
        Assert.Contains("document 7", PeerWorkloads.Question(7, 0), StringComparison.Ordinal);
        Assert.Equal(3, new[] { PeerWorkloads.Question(1, 0), PeerWorkloads.Question(1, 1), PeerWorkloads.Question(1, 2) }.Distinct().Count());
    }

    [Fact]
    public void The_table_has_a_row_per_workload_and_configuration_with_cold_warm_medians()
    {
        PeerWorkloads.Result R(string config, bool cold, double ttft, int cached) => new(config, "doc-qa", cold, ttft, ttft * 2, 100, cached, 4, 1, 2, cold ? 0 : 1);
        List<PeerWorkloads.Result> results = [R("off", true, 100, 0), R("off", false, 90, 0), R("on", true, 100, 0), R("on", false, 10, 96), R("on", false, 30, 96)];
        var table = PeerWorkloads.Table(results, [], ["off", "on"]).Split(Environment.NewLine, StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(4, table.Length); // header, separator, two rows
        Assert.StartsWith("| workload | config | cold n |", table[0], StringComparison.Ordinal);
        Assert.Equal("| doc-qa | on | 1 | 100.0 | 2 | 20.0 | 5.00x | 100 | 96 | 1.0 | 2.0 |", table[3]);
    }

    [Fact]
    public async Task A_streamed_request_is_measured_from_its_events_usage_and_timings()
    {
        await using var app = await FakeOpenAiAsync();
        using var http = new HttpClient { BaseAddress = new Uri(Address(app)) };
        var (result, text) = await PeerWorkloads.SendAsync(http, "on", "doc-qa", false, "/v1/completions", new JsonObject { ["prompt"] = "hello" }, 2, 1,
            TestContext.Current.CancellationToken);
        Assert.Equal("Hi there", text);
        Assert.Equal(("on", "doc-qa", false, 1), (result.Config, result.Workload, result.Cold, result.Round));
        Assert.Equal((12, 8, 2), (result.PromptTokens, result.CachedTokens, result.CompletionTokens));
        Assert.Equal((1.5, 3.25, 5), (result.RestoreMs, result.PromptMs, result.LowerTierTokens));
        Assert.Equal("http://instance-7", result.Instance);
        Assert.InRange(result.TtftMs, 0, result.TotalMs);
        Assert.True(result.TotalMs >= 50, $"total {result.TotalMs} ms: the stream's delay before its last event counts");
    }

    private static string Address(WebApplication app) => app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();

    // An OpenAI endpoint that streams two text events, then usage and serve's timings, then [DONE]; it checks the request.
    private static async Task<WebApplication> FakeOpenAiAsync()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.ClearProviders();
        var app = builder.Build();
        app.MapPost("/v1/completions", async (HttpContext context) =>
        {
            var body = JsonNode.Parse(await new StreamReader(context.Request.Body).ReadToEndAsync())!;
            if (body["stream"]?.GetValue<bool>() != true || body["max_tokens"]?.GetValue<int>() != 2 || body["temperature"]?.GetValue<int>() != 0)
            {
                context.Response.StatusCode = 400;
                return;
            }

            context.Response.Headers["X-LMCache-Instance"] = "http://instance-7";
            context.Response.ContentType = "text/event-stream";
            async Task Event(string data)
            {
                await context.Response.WriteAsync("data: " + data + "\n\n");
                await context.Response.Body.FlushAsync();
            }

            await Event("""{"choices":[{"text":"Hi"}]}""");
            await Task.Delay(50);
            await Event("""{"choices":[{"text":" there"}]}""");
            await Event("""{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":8}},"timings":{"restore_ms":1.5,"prompt_ms":3.25,"cache_lower_tier_n":5}}""");
            await Event("[DONE]");
        });
        await app.StartAsync();
        return app;
    }
}
