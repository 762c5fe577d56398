using LMCacheSharp.Core.Configuration;

namespace LMCacheSharp.Core.Tests;

public sealed class ConfigLoaderTests
{
    private sealed class Options
    {
        public int Count { get; set; } = 1;

        public TimeSpan Wait { get; set; } = TimeSpan.FromSeconds(1);

        public IEnumerable<string> GetErrors()
        {
            if (Count is < 1 or > 10)
            {
                yield return $"count: must be 1..10, got {Count}";
            }

            if (Wait > TimeSpan.FromSeconds(60))
            {
                yield return $"wait time: must be at most 60 s, got {Wait.TotalSeconds} s";
            }

            yield return "other: a problem of no key";
        }
    }

    private static readonly ConfigLoader<Options> Loader = new ConfigLoader<Options>("TEST_", "TEST_CONFIG_FILE")
        .Add("count", (o, v) => o.Count = ConfigParsers.ParseInt(v))
        .Add("wait", (o, v) => o.Wait = ConfigParsers.ParseSeconds(v), "wait time");

    [Fact]
    public void A_validation_error_takes_the_key_and_the_source_of_its_last_value()
    {
        var environment = new Dictionary<string, string?> { ["TEST_COUNT"] = "20", ["TEST_WAIT"] = "61" };
        var e = Assert.Throws<LMCacheConfigurationException>(() => Loader.Load(new Options(), null, environment, [new("count", "11", "--count")], null,
            (o, _) => o.GetErrors()));
        Assert.Equal(["count (--count): must be 1..10, got 11", "wait (TEST_WAIT): must be at most 60 s, got 61 s", "other: a problem of no key"], e.Errors);
    }

    [Fact]
    public void An_unreadable_file_is_one_problem_among_the_others()
    {
        var missing = Path.Combine(Path.GetTempPath(), "lmcache-no-such-dir-" + Guid.NewGuid().ToString("N"), "x.yaml");
        var e = Assert.Throws<LMCacheConfigurationException>(() => Loader.Load(new Options(), null,
            new Dictionary<string, string?> { ["TEST_CONFIG_FILE"] = missing, ["TEST_COUNT"] = "many" }, null, null, null));
        Assert.Equal(2, e.Errors.Count);
        Assert.StartsWith($"config file '{missing}': cannot be read", e.Errors[0], StringComparison.Ordinal);
        Assert.Equal("count (TEST_COUNT): 'many' is not an integer", e.Errors[1]);
    }

    [Theory]
    [InlineData("1.5", 1.5)]
    [InlineData("0", 0)]
    [InlineData("1000000", 1e6)]
    public void Seconds_parse_with_decimals(string text, double seconds) => Assert.Equal(TimeSpan.FromSeconds(seconds), ConfigParsers.ParseSeconds(text));

    [Theory]
    [InlineData("soon")]
    [InlineData("-1")]
    [InlineData("1e7")]
    [InlineData("NaN")]
    public void Seconds_refuse_what_is_not_a_finite_time(string text) =>
        Assert.Contains("is not a number of seconds", Assert.Throws<FormatException>(() => ConfigParsers.ParseSeconds(text)).Message, StringComparison.Ordinal);

    [Fact]
    public void Sizes_and_booleans_name_the_value()
    {
        Assert.Equal(4L << 30, ConfigParsers.ParseSize("4GB"));
        Assert.StartsWith("'8XB' is not a size", Assert.Throws<FormatException>(() => ConfigParsers.ParseSize("8XB")).Message, StringComparison.Ordinal);
        Assert.True(ConfigParsers.ParseBool("On"));
        Assert.Equal("'maybe' is not a boolean (true/false)", Assert.Throws<FormatException>(() => ConfigParsers.ParseBool("maybe")).Message);
    }
}
