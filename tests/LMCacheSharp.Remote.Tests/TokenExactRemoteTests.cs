using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Engine;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Server;

namespace LMCacheSharp.Remote.Tests;

/// <summary>
/// Token-exact reuse across instances: the tail after the last whole-chunk hit is found in the shared store's child index
/// (lm:// LINK/CHILDREN, a Redis list per parent), its tokens checked against its key, and restored to the token.
/// </summary>
public class TokenExactRemoteTests
{
    private const int ChunkSize = 16;
    private static readonly CancellationToken TestToken = TestContext.Current.CancellationToken;

    // A 40-token document, then a question: the document ends in the middle of the third chunk.
    private static readonly int[] Document = [.. Enumerable.Range(0, 40).Select(i => 100 + ((i * 37) % 500))];
    private static readonly int[] First = [.. Document, .. Enumerable.Range(0, 10).Select(i => 900 + i)];
    private static readonly int[] Second = [.. Document, .. Enumerable.Range(0, 10).Select(i => 700 + i)];

    public static TheoryData<string> Targets => new() { "lm", "LMCACHE_TEST_REDIS_URL", "LMCACHE_TEST_REDIS_CLUSTER_URL" };

    private static LMCacheOptions Options(string url) =>
        new() { RemoteUrl = url, RemoteTimeoutMs = 5000, ChunkSize = ChunkSize, MaxLocalCpuSize = 0.05 };

    private static async Task<(string Url, IAsyncDisposable? Server)> TargetAsync(string target)
    {
        if (target == "lm")
        {
            var server = CacheServer.Create(new CacheServerOptions { Port = 0, CapacityBytes = 64L << 20 });
            await server.StartAsync(TestToken);
            return (server.Url, server);
        }

        var url = TestChunks.ServiceUrl(target);
        Assert.SkipUnless(await TestChunks.ReachableAsync(url), $"{target} is not set or not reachable: run .ci/services start (needs redis-server)");
        return (url + "?prefix=lmtest-" + Guid.NewGuid().ToString("N")[..8] + ":", null);
    }

    private static async Task StoreInAnotherInstanceAsync(LMCacheOptions options, CacheNamespace ns, int[] tokens)
    {
        await using var first = CacheEngine.Create(options, ns, lowerTiers: RemoteTierFactory.LowerTiers(options));
        Assert.Equal(tokens.Length, await first.StoreAsync(tokens, new FakeSequence(TestChunks.Format, tokens), cancellationToken: TestToken));
        await first.FlushAsync(TestToken);
    }

    [Theory]
    [MemberData(nameof(Targets))]
    public async Task A_second_instance_reuses_a_shared_document_to_the_token(string target)
    {
        var (url, server) = await TargetAsync(target);
        await using var _ = server;
        var options = Options(url);
        var ns = new CacheNamespace("tail-model", TestChunks.Format);
        await StoreInAnotherInstanceAsync(options, ns, First);

        await using var second = CacheEngine.Create(options, ns, lowerTiers: RemoteTierFactory.LowerTiers(options));
        Assert.Equal(0, second.Storage.Memory!.Count);
        using var prefix = await second.PinAsync(Second, cancellationToken: TestToken);
        Assert.Equal(Document.Length, prefix.Tokens); // 2 whole chunks and 8 tokens of the first request's third chunk

        var sink = new FakeSequence(TestChunks.Format, Second);
        Assert.Equal(Document.Length, second.Restore(prefix, sink));
        sink.AssertPrefixRestored(Document.Length);
    }

    [Theory]
    [MemberData(nameof(Targets))]
    public async Task A_prompt_shorter_than_a_chunk_hits_in_another_instance(string target)
    {
        var (url, server) = await TargetAsync(target);
        await using var _ = server;
        var options = Options(url);
        var ns = new CacheNamespace("tail-model", TestChunks.Format);
        int[] stored = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14];
        await StoreInAnotherInstanceAsync(options, ns, stored);

        await using var second = CacheEngine.Create(options, ns, lowerTiers: RemoteTierFactory.LowerTiers(options));
        int[] asked = [5, 6, 7, 8, 9, 10, 11, 99, 98];
        using var prefix = await second.PinAsync(asked, cancellationToken: TestToken);
        Assert.Equal(7, prefix.Tokens);
        var sink = new FakeSequence(TestChunks.Format, asked);
        Assert.Equal(7, second.Restore(prefix, sink));
        sink.AssertPrefixRestored(7);
    }

    [Fact]
    public async Task A_child_whose_tokens_do_not_hash_to_its_key_is_never_used()
    {
        var (url, server) = await TargetAsync("lm");
        await using var _ = server;
        var options = Options(url);
        var ns = new CacheNamespace("tail-model", TestChunks.Format);
        await StoreInAnotherInstanceAsync(options, ns, First);

        // A forged record: a copy of the real third chunk's value under another key, linked with the second request's
        // tokens, so that it would match all 16 of them if its word were taken.
        var keys = PrefixHasher.ComputeKeys(ns, First, ChunkSize);
        var uri = new Uri(url);
        await using var client = new CacheClient(new CacheClientOptions { Host = uri.Host, Port = uri.Port });
        var value = await client.GetAsync(KeyBytes(keys[2]), TestToken);
        Assert.NotNull(value);
        var forged = TestChunks.Key(77);
        Assert.True(await client.PutAsync(KeyBytes(forged), value, TestToken));
        await client.LinkAsync(KeyBytes(forged), KeyBytes(keys[1]), Second.AsMemory(32, 16), TestToken);

        await using var second = CacheEngine.Create(options, ns, lowerTiers: RemoteTierFactory.LowerTiers(options));
        using var prefix = await second.PinAsync(Second, cancellationToken: TestToken);
        Assert.Equal(Document.Length, prefix.Tokens); // the real child, 8 tokens in common; never the forged one
        Assert.True(second.Metrics.Snapshot().CorruptChunks >= 1);
    }

    private static byte[] KeyBytes(ChunkHash key)
    {
        var bytes = new byte[ChunkHash.Size];
        key.WriteTo(bytes);
        return bytes;
    }

    [Fact]
    public async Task Without_a_reachable_remote_the_lookup_is_a_local_miss_not_an_error()
    {
        var options = Options("lm://127.0.0.1:1");
        options.RemoteTimeoutMs = 300;
        var ns = new CacheNamespace("tail-model", TestChunks.Format);
        await using var engine = CacheEngine.Create(options, ns, lowerTiers: RemoteTierFactory.LowerTiers(options));
        using var prefix = await engine.PinAsync(Second, cancellationToken: TestToken);
        Assert.Equal(0, prefix.Tokens);
    }
}
