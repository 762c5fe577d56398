using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Core.Tests;

public class CacheNamespaceTests
{
    private static readonly KvFormat Format = TestData.SmallFormat;

    [Fact]
    public void Equal_fields_give_equal_seeds_in_any_order_of_tags()
    {
        var a = new CacheNamespace("m", Format, "s", [new("a", "1"), new("b", "2")]);
        var b = new CacheNamespace("m", Format, "s", [new("b", "2"), new("a", "1")]);
        Assert.Equal(a.Seed, b.Seed);
        Assert.Equal(a, b);
    }

    public static TheoryData<string> Variations() => ["model", "format", "dtype", "layout", "salt", "tag", "tagvalue", "variant"];

    [Theory]
    [MemberData(nameof(Variations))]
    public void Any_field_that_makes_kv_incompatible_changes_the_seed(string field)
    {
        var baseNs = new CacheNamespace("m", Format, "s", [new("t", "1")], "v");
        var other = field switch
        {
            "model" => new CacheNamespace("m2", Format, "s", [new("t", "1")], "v"),
            "format" => new CacheNamespace("m", Format with { Layers = 3 }, "s", [new("t", "1")], "v"),
            "dtype" => new CacheNamespace("m", Format with { DataType = KvDataType.F32 }, "s", [new("t", "1")], "v"),
            "layout" => new CacheNamespace("m", Format with { Layout = KvLayout.LayerKTransposedV }, "s", [new("t", "1")], "v"),
            "salt" => baseNs.WithSalt("other"),
            "tag" => baseNs.WithTags([new("u", "1")]),
            "tagvalue" => baseNs.WithTags([new("t", "2")]),
            "variant" => baseNs.WithVariant("int8"),
            _ => throw new ArgumentOutOfRangeException(nameof(field)),
        };
        Assert.NotEqual(baseNs.Seed, other.Seed);
    }

    [Fact]
    public void Field_boundaries_cannot_be_shifted_to_collide()
    {
        // "ab"+"c" and "a"+"bc" must not encode alike.
        var a = new CacheNamespace("ab", Format, "c");
        var b = new CacheNamespace("a", Format, "bc");
        Assert.NotEqual(a.Seed, b.Seed);
    }

    [Fact]
    public void Empty_salt_is_no_salt()
    {
        Assert.Equal(new CacheNamespace("m", Format).Seed, new CacheNamespace("m", Format, "").Seed);
    }

    [Fact]
    public void Invalid_inputs_are_rejected()
    {
        Assert.Throws<ArgumentException>(() => new CacheNamespace("", Format));
        Assert.Throws<ArgumentException>(() => new CacheNamespace("m", Format with { Layers = 0 }));
        Assert.Throws<ArgumentException>(() => new CacheNamespace("m", Format with { KBytesPerToken = 0 }));
    }
}
