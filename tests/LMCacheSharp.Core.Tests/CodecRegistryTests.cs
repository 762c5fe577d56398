using LMCacheSharp.Core.Codecs;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Engine;
using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Core.Tests;

public sealed class KvCodecsTests
{
    [Theory]
    [InlineData("naive", KvCodecId.Raw, true)]
    [InlineData("lz4", KvCodecId.Lz4, true)]
    [InlineData("ZSTD", KvCodecId.Zstd, true)]
    [InlineData("int8", KvCodecId.Int8, false)]
    [InlineData("fp8", KvCodecId.Fp8, false)]
    public void Codecs_are_found_by_name_and_id(string name, KvCodecId id, bool lossless)
    {
        var codec = KvCodecs.Find(name);
        Assert.NotNull(codec);
        Assert.Equal(id, codec.Id);
        Assert.Same(codec, KvCodecs.Find(id));
        Assert.Equal(lossless, codec.IsLossless);
        Assert.Empty(new LMCacheOptions { LocalDiskSerde = name, RemoteSerde = name }.GetErrors());
    }

    [Fact]
    public void Lossy_codecs_of_enabled_tiers_go_into_the_namespace_variant()
    {
        var ns = TestData.Namespace();
        Assert.Same(ns, KvCodecs.WithCodecVariant(ns, new LMCacheOptions { LocalDiskSerde = "int8" })); // no disk tier: no effect
        Assert.Same(ns, KvCodecs.WithCodecVariant(ns, new LMCacheOptions { LocalDisk = "/x", LocalDiskSerde = "zstd" }));

        var disk = new LMCacheOptions { LocalDisk = "/x", LocalDiskSerde = "int8" };
        var both = new LMCacheOptions { LocalDisk = "/x", LocalDiskSerde = "int8", RemoteUrl = "lm://h:1", RemoteSerde = "fp8" };
        Assert.Equal("lossy=int8", KvCodecs.WithCodecVariant(ns, disk).Variant);
        Assert.Equal("lossy=fp8+int8", KvCodecs.WithCodecVariant(ns, both).Variant);
        Assert.NotEqual(ns.Seed, KvCodecs.WithCodecVariant(ns, disk).Seed);
        Assert.NotEqual(KvCodecs.WithCodecVariant(ns, disk).Seed, KvCodecs.WithCodecVariant(ns, both).Seed);

        var once = KvCodecs.WithCodecVariant(ns.WithVariant("fa=on"), disk);
        Assert.Equal("fa=on|lossy=int8", once.Variant);
        Assert.Same(once, KvCodecs.WithCodecVariant(once, disk));
    }

    [Fact]
    public void A_lossy_codec_that_cannot_encode_the_namespace_format_is_a_configuration_error()
    {
        var blob = new Keys.CacheNamespace("m", CodecTestData.Format(KvDataType.F16) with { Layout = KvLayout.LlamaCppSequenceState });
        var q8 = new Keys.CacheNamespace("m", CodecTestData.Format(KvDataType.Q8_0));
        var options = new LMCacheOptions { LocalDisk = "/x", LocalDiskSerde = "int8", RemoteUrl = "lm://h:1", RemoteSerde = "fp8" };
        var e = Assert.Throws<LMCacheConfigurationException>(() => KvCodecs.WithCodecVariant(blob, options));
        Assert.Equal(2, e.Errors.Count);
        Assert.StartsWith("local_disk_serde:", e.Errors[0], StringComparison.Ordinal);
        Assert.Throws<LMCacheConfigurationException>(() => KvCodecs.WithCodecVariant(q8, options));
        Assert.Same(q8, KvCodecs.WithCodecVariant(q8, new LMCacheOptions { LocalDisk = "/x", LocalDiskSerde = "zstd" }));
    }

    [Fact]
    public async Task CacheEngine_Create_keys_a_lossy_disk_tier_apart()
    {
        var dir = Directory.CreateTempSubdirectory("lmcache-codec-ns-");
        try
        {
            var options = new LMCacheOptions { ChunkSize = 16, MaxLocalCpuSize = 0.01, LocalDisk = "file://" + dir.FullName, MaxLocalDiskSize = 0.01, LocalDiskSerde = "fp8" };
            await using (var lossy = CacheEngine.Create(options, TestData.Namespace()))
            {
                Assert.Equal("lossy=fp8", lossy.Namespace.Variant);
                Assert.NotEqual(TestData.Namespace().Seed, lossy.Namespace.Seed);
            }

            options.LocalDiskSerde = "lz4";
            await using var lossless = CacheEngine.Create(options, TestData.Namespace());
            Assert.Equal(TestData.Namespace().Seed, lossless.Namespace.Seed);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }
}
