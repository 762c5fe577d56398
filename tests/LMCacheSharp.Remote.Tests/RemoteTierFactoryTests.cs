using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Storage;

namespace LMCacheSharp.Remote.Tests;

public class RemoteTierFactoryTests
{
    [Theory]
    [InlineData("lm://127.0.0.1:65432", typeof(LmRemoteConnector))]
    [InlineData("lm://:secret@127.0.0.1:1?connections=2", typeof(LmRemoteConnector))]
    [InlineData("redis://127.0.0.1:6379", typeof(RedisRemoteConnector))]
    [InlineData("rediss://user:pw@cache.example:6380/2?prefix=x:", typeof(RedisRemoteConnector))]
    [InlineData("valkey://127.0.0.1", typeof(RedisRemoteConnector))]
    public async Task Builds_the_connector_the_scheme_names_without_connecting(string url, Type connector)
    {
        using var pool = new KvBufferPool();
        await using var tier = RemoteTierFactory.Create(url, new LMCacheOptions(), pool);
        var remote = Assert.IsType<RemoteStorageTier>(tier);
        Assert.IsType(connector, remote.Connector);
        Assert.Equal(StorageTierKind.Remote, tier.Kind);
    }

    [Fact]
    public async Task Blackhole_accepts_and_forgets()
    {
        using var pool = new KvBufferPool();
        await using var tier = RemoteTierFactory.Create("blackhole://", new LMCacheOptions(), pool);
        var chunk = TestChunks.Make(pool, TestChunks.Key(1), 4, 1);
        Assert.True(await tier.PutAsync(chunk));
        chunk.Release();
        Assert.Null(await tier.GetAsync(TestChunks.Key(1)));
        Assert.Equal(0, await tier.CountPrefixAsync(new[] { TestChunks.Key(1) }));
        Assert.Equal(1, ((BlackholeTier)tier).Accepted);
    }

    [Theory]
    [InlineData("ftp://host:1")]
    [InlineData("not a url")]
    [InlineData("lm://:1")]
    [InlineData("lm://127.0.0.1:1?connections=0")]
    [InlineData("redis://127.0.0.1:1/notanumber")]
    public void Bad_urls_are_clear_errors(string url)
    {
        using var pool = new KvBufferPool();
        var e = Assert.Throws<ArgumentException>(() => RemoteTierFactory.Create(url, new LMCacheOptions(), pool));
        Assert.StartsWith("remote_url", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Lower_tiers_is_null_without_a_remote_url_and_checks_the_url_up_front()
    {
        Assert.Null(RemoteTierFactory.LowerTiers(new LMCacheOptions()));
        Assert.NotNull(RemoteTierFactory.LowerTiers(new LMCacheOptions { RemoteUrl = "blackhole://" }));
        Assert.Throws<ArgumentException>(() => RemoteTierFactory.LowerTiers(new LMCacheOptions { RemoteUrl = "gopher://x" }));
    }
}
