using LMCacheSharp.Core.Keys;

namespace LMCacheSharp.Core.Tests;

public class CacheNamespaceEncodingTests
{
    [Fact]
    public void A_salt_of_nul_is_not_no_salt()
    {
        var none = new CacheNamespace("m", TestData.SmallFormat);
        Assert.NotEqual(none.Seed, new CacheNamespace("m", TestData.SmallFormat, "\0").Seed);
        Assert.NotEqual(new CacheNamespace("m", TestData.SmallFormat, "\0").Seed, new CacheNamespace("m", TestData.SmallFormat, "\0\0").Seed);
        Assert.NotEqual(none.Seed, new CacheNamespace("m", TestData.SmallFormat, variant: "\0").Seed);
    }
}
