using System.ClientModel;
using LMCacheSharp.Tests.Shared;
using OpenAI;
using OpenAI.Chat;

namespace LMCacheSharp.Serving.Tests;

/// <summary>Token-exact reuse through the OpenAI API (issue 10): completions are stored, short prompts hit, concurrency.</summary>
public sealed class TokenExactServingTests
{
    [Fact]
    public async Task The_next_turn_restores_the_previous_answer_too()
    {
        // A trained model, so that the answer re-tokenizes as it was generated (a random model's gibberish does not).
        var model = SharedModels.Stories260K(out var reason);
        Assert.SkipWhen(model is null, "stories260K check skipped: " + reason);
        // Two servers that differ only in save_decode_cache; in-context sharing off, so reuse comes from the cache alone.
        await using var on = await TestServer.StartAsync(o => Story(o, model!));
        await using var off = await TestServer.StartAsync(o => Story(o, model!), configureCache: c => c.SaveDecodeCache = false);
        var results = new List<(int Cached, int Prompt, int Stored)>();
        foreach (var server in new[] { on, off })
        {
            var client = new OpenAIClient(new ApiKeyCredential("unused"), new OpenAIClientOptions { Endpoint = new Uri(server.BaseUrl + "/v1") });
            var completions = client.GetChatClient("story"); // the chat surface, with the default template (the model has none)
            var options = new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 24 };
            var messages = new List<ChatMessage> { new UserChatMessage("Once upon a time, there was a little dog.") };
            ChatCompletion first = await completions.CompleteChatAsync(messages, options);
            messages.Add(new AssistantChatMessage(first.Content[0].Text));
            messages.Add(new UserChatMessage("What did the dog do next?"));
            ChatCompletion second = await completions.CompleteChatAsync(messages, options);
            results.Add((second.Usage.InputTokenDetails.CachedTokenCount, second.Usage.InputTokenCount,
                first.Usage.InputTokenCount + first.Usage.OutputTokenCount - 1)); // the last token was sampled, never decoded
        }

        var (withAnswer, prompt, exchange) = results[0];
        var withoutAnswer = results[1].Cached;
        TestContext.Current.TestOutputHelper?.WriteLine(
            $"turn 2: {withAnswer} of {prompt} prompt tokens cached with the decode cache, {withoutAnswer} without; the stored exchange was {exchange} tokens");
        Assert.True(withAnswer > withoutAnswer, $"the stored answer was not reused: {withAnswer} cached with it, {withoutAnswer} without");
        Assert.True(withAnswer <= exchange);
    }

    private static void Story(ServingOptions o, string model)
    {
        o.ModelPath = model;
        o.ModelName = "story";
        o.FlashAttention = false;
        o.EnableInContextSharing = false;
    }

    [Fact]
    public async Task A_prompt_shorter_than_a_chunk_hits_on_its_repeat()
    {
        await using var server = await TestServer.StartAsync(o => o.EnableInContextSharing = false, chunkSize: 256);
        var (_, cold, tokens) = await server.CompleteAsync("A short prompt.", 2);
        Assert.True(tokens < 256);
        Assert.True(cold <= 1);
        var (_, warm, _) = await server.CompleteAsync("A short prompt.", 2);
        Assert.Equal(tokens - 1, warm); // everything but the last token, which is decoded for its logits
    }

    [Fact]
    public async Task Eight_concurrent_clients_each_get_their_second_question_from_the_cache()
    {
        await using var server = await TestServer.StartAsync(o => o.ContextSize = 2048, chunkSize: 64);
        var documents = Enumerable.Range(0, 8).Select(i => Prompts.Long($"document {i} about topic {i * 7}")).ToArray();
        var results = await Task.WhenAll(documents.Select(async doc =>
        {
            var (_, firstCached, _) = await server.CompleteAsync(doc + " Question: what is it about?", 4);
            var (_, secondCached, _) = await server.CompleteAsync(doc + " Question: who wrote it?", 4);
            return (Doc: server.Service.TokenizeCompletion(doc).Length, First: firstCached, Second: secondCached);
        }));
        Assert.All(results, r => Assert.True(r.Second >= r.Doc, $"second question cached {r.Second} of a {r.Doc}-token document"));
    }

    [Fact]
    public async Task A_restarted_instance_reuses_its_disk_cache_to_the_token()
    {
        var dir = Directory.CreateTempSubdirectory("lmcache-serving-tail-").FullName;
        try
        {
            void Disk(Core.Configuration.LMCacheOptions c)
            {
                c.LocalDisk = dir;
                c.MaxLocalDiskSize = 0.05;
            }

            var prompt = Prompts.Long("restart to the token") + " First question?";
            int promptTokens;
            await using (var first = await TestServer.StartAsync(o => o.EnableInContextSharing = false, configureCache: Disk))
            {
                (_, _, promptTokens) = await first.CompleteAsync(prompt, 4);
                await first.Service.Cache!.Engine.FlushAsync(TestContext.Current.CancellationToken);
            }

            await using var second = await TestServer.StartAsync(o => o.EnableInContextSharing = false, configureCache: Disk);
            var next = prompt + " And a second one?";
            var (_, cached, _) = await second.CompleteAsync(next, 4);
            var expected = second.Service.TokenizeCompletion(next).AsSpan().CommonPrefixLength(second.Service.TokenizeCompletion(prompt));
            // Everything the first process held: its prompt and answer (the stored exchange) up to where the new prompt differs.
            Assert.True(cached >= expected, $"cached {cached}, the prompts share {expected} tokens (of {promptTokens})");
            Assert.NotEqual(0, cached % 16); // past the last whole chunk
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
