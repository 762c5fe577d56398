using System.Net;

namespace LMCacheSharp.Serving.Tests;

/// <summary>
/// <c>serve --kv-unified off</c>: a KV stream per sequence (ctx-size / max-concurrent cells each). Shared prefixes come from
/// the cache tiers (no cells are shared in place), greedy text equals the unified server's, n &gt; 1 choices copy the
/// leader's stream, and a prompt over one sequence's cells is refused with the per-request limit.
/// </summary>
public sealed class PerSequenceKvServingTests
{
    private static Task<TestServer> StartAsync(bool kvUnified, int chunkSize = 64) => TestServer.StartAsync(o =>
    {
        o.ContextSize = 4 * 1024;
        o.KvUnified = kvUnified;
    }, chunkSize: chunkSize);

    [Fact]
    public async Task Eight_concurrent_clients_each_get_their_second_question_from_the_cache_and_the_text_of_a_unified_server()
    {
        await using var streams = await StartAsync(kvUnified: false);
        await using var unified = await StartAsync(kvUnified: true);
        Assert.Equal(1024, streams.Service.ContextSize);
        Assert.Equal(4096, unified.Service.ContextSize);
        var documents = Enumerable.Range(0, 8).Select(i => Prompts.Long($"document {i} about topic {i * 7}")).ToArray();
        var results = await Task.WhenAll(documents.Select(async doc =>
        {
            var first = await streams.CompleteAsync(doc + " Question: what is it about?", 6);
            var second = await streams.CompleteAsync(doc + " Question: who wrote it?", 6);
            return (Doc: streams.Service.TokenizeCompletion(doc).Length, First: first, Second: second);
        }));
        Assert.All(results, r => Assert.True(r.Second.Cached >= r.Doc, $"second question cached {r.Second.Cached} of a {r.Doc}-token document"));

        // The same prompts one at a time on the unified server: the same greedy text.
        for (var i = 0; i < documents.Length; i++)
        {
            var (text, _, _) = await unified.CompleteAsync(documents[i] + " Question: who wrote it?", 6);
            Assert.Equal(text, results[i].Second.Text);
        }
    }

    [Fact]
    public async Task Several_choices_copy_the_leaders_stream_and_choice_zero_matches_a_single_request()
    {
        await using var server = await StartAsync(kvUnified: false);
        var prompt = Prompts.Long("choices on streams");
        var before = server.Service.Metrics.TotalPrefilledTokens;
        var json = await server.PostAsync("/v1/completions", new { prompt, max_tokens = 6, temperature = 1.5, seed = 5, n = 3 });
        var promptTokens = json["usage"]!["prompt_tokens"]!.GetValue<int>();
        Assert.Equal(promptTokens, server.Service.Metrics.TotalPrefilledTokens - before); // one prefill for three choices
        Assert.Equal(18, json["usage"]!["completion_tokens"]!.GetValue<int>());
        var single = await server.PostAsync("/v1/completions", new { prompt, max_tokens = 6, temperature = 1.5, seed = 5, cache_salt = "other" });
        Assert.Equal(single["choices"]![0]!["text"]!.GetValue<string>(), json["choices"]![0]!["text"]!.GetValue<string>());

        // Greedy: every choice continues the copied prompt exactly as one request on its own does.
        var greedy = await server.PostAsync("/v1/completions", new { prompt, max_tokens = 6, temperature = 0, n = 3, cache_salt = "greedy" });
        var (alone, _, _) = await server.CompleteAsync(prompt, 6, salt: "alone");
        Assert.All(greedy["choices"]!.AsArray(), c => Assert.Equal(alone, c!["text"]!.GetValue<string>()));
    }

    [Fact]
    public async Task A_client_that_disconnects_mid_stream_frees_its_stream_and_the_next_requests_hit()
    {
        await using var server = await TestServer.StartAsync(o =>
        {
            o.ContextSize = 2 * 1024;
            o.MaxConcurrentRequests = 2;
            o.KvUnified = false;
            o.DefaultMaxTokens = 900;
        });
        for (var i = 0; i < 3; i++)
        {
            using var cts = new CancellationTokenSource();
            using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
            {
                Content = new StringContent("""{"prompt":"go on and on","max_tokens":900,"stream":true}""", System.Text.Encoding.UTF8, "application/json"),
            };
            using var response = await server.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cts.Token);
            using var stream = await response.Content.ReadAsStreamAsync(cts.Token);
            _ = await stream.ReadAsync(new byte[64], cts.Token); // generating
            cts.Cancel();
        }

        // Both streams must be free again (two at a time), and a stored prefix restores into whichever the next one gets.
        var prompt = Prompts.Long("after the disconnects");
        var results = await Task.WhenAll(server.CompleteAsync(prompt, 4), server.CompleteAsync(prompt + " Again.", 4))
            .WaitAsync(TimeSpan.FromSeconds(60), TestContext.Current.CancellationToken);
        var (text, cached, tokens) = await server.CompleteAsync(prompt, 4);
        Assert.Equal(results[0].Text, text);
        Assert.Equal(tokens - 1, cached);
    }

    [Fact]
    public async Task A_prompt_over_one_sequences_cells_gets_400_with_that_limit_and_the_next_request_succeeds()
    {
        await using var server = await StartAsync(kvUnified: false);
        var prompt = string.Concat(Enumerable.Repeat("hello world ", 200)); // ~2,400 tokens: fits the context, not one stream
        var error = await server.PostAsync("/v1/completions", new { prompt, max_tokens = 4 }, 400);
        Assert.Equal("context_length_exceeded", error["error"]!["code"]!.GetValue<string>());
        Assert.Contains("1024 tokens", error["error"]!["message"]!.GetValue<string>(), StringComparison.Ordinal);
        var (_, _, tokens) = await server.CompleteAsync("a short prompt", 2);
        Assert.True(tokens > 0);
        Assert.Equal(HttpStatusCode.OK, (await server.Http.GetAsync("/health")).StatusCode);
    }
}
