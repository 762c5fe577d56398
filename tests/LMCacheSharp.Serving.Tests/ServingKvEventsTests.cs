using LMCacheSharp.KvEvents;
using Microsoft.Extensions.DependencyInjection;

namespace LMCacheSharp.Serving.Tests;

/// <summary>The server with <c>kv_events_endpoint</c> (<c>lmcache serve --kv-events</c>): a completion's chunks on the wire.</summary>
public sealed class ServingKvEventsTests
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task A_completion_publishes_its_prompts_chunks_with_their_tokens_as_BlockStored()
    {
        await using var server = await TestServer.StartAsync(chunkSize: 16, configureCache: c =>
        {
            c.KvEventsEndpoint = "tcp://127.0.0.1:0";
            c.KvEventsReplayEndpoint = "tcp://127.0.0.1:0";
        });
        var publisher = server.Services.GetRequiredService<ZmqKvEventPublisher>();
        using var subscriber = new KvEventSubscriber(publisher.Endpoint, publisher.ReplayEndpoint, "kv-events");
        const string Prompt = "Once upon a time there was a little cache that remembered every story it had ever been told, chunk by chunk.";
        var tokens = server.Service.TokenizeCompletion(Prompt);
        Assert.True(tokens.Length >= 48, $"the prompt is {tokens.Length} tokens");
        await server.CompleteAsync(Prompt, maxTokens: 4);

        // Read the live stream until the prompt's whole chunks have been stored; what the subscription missed while it
        // was joining (possibly everything: a PUB socket drops what it sends before a subscriber has joined) comes from
        // the replay socket, as a vLLM-format consumer does it.
        var messages = new List<KvEventMessage>();
        var whole = tokens.Length / 16 * 16;
        var deadline = DateTime.UtcNow + Wait;
        while (messages.SelectMany(m => m.Batch.Events).OfType<BlockStoredEvent>().Where(e => e.Medium == "CPU").Sum(e => e.TokenIds.Length) < whole)
        {
            Assert.True(DateTime.UtcNow < deadline, $"no KV events for the whole prompt after a completion ({messages.Count} batches)");
            var next = messages.Count == 0 ? 0 : messages[^1].Sequence + 1;
            if (!subscriber.TryReceive(TimeSpan.FromSeconds(1), out var message))
            {
                messages.AddRange(subscriber.Replay(next, Wait));
                continue;
            }

            if (message!.Sequence > next)
            {
                messages.AddRange(subscriber.Replay(next, Wait).Where(m => m.Sequence < message.Sequence));
            }

            if (message.Sequence >= next)
            {
                messages.Add(message);
            }
        }

        Assert.Equal(Enumerable.Range(0, messages.Count).Select(i => (long)i), messages.Select(m => m.Sequence));
        var stored = messages.SelectMany(m => m.Batch.Events).OfType<BlockStoredEvent>().Where(e => e.Medium == "CPU").ToList();
        Assert.Null(stored[0].ParentBlockHash);
        Assert.All(stored, e => Assert.Equal(16, e.BlockSize));
        var streamed = stored.SelectMany(e => e.TokenIds).ToArray();
        Assert.Equal(tokens[..whole], streamed[..whole]);
        // The prompt's chunks chain; later stores (its token-exact tail, the completion's chunks) hang off chunks already published.
        var seen = new HashSet<long>();
        foreach (var e in stored)
        {
            Assert.True(e.ParentBlockHash is null ? seen.Count == 0 : seen.Contains(e.ParentBlockHash.Value), "a parent never published");
            seen.UnionWith(e.BlockHashes);
        }
    }
}
