namespace LMCacheSharp.Router.Tests;

public sealed class RouterOptionsTests
{
    [Theory]
    [InlineData("kv-aware", RoutingPolicyKind.KvAware)]
    [InlineData("round-robin", RoutingPolicyKind.RoundRobin)]
    [InlineData("session", RoutingPolicyKind.Session)]
    [InlineData("least-loaded", RoutingPolicyKind.LeastLoaded)]
    public void Policies_parse_by_their_contract_names_and_print_back(string name, RoutingPolicyKind kind)
    {
        Assert.Equal(kind, RouterOptions.ParsePolicy(name));
        Assert.Equal(name, RouterOptions.PolicyName(kind));
    }

    [Fact]
    public void Unknown_policies_do_not_parse() => Assert.Null(RouterOptions.ParsePolicy("random"));

    [Fact]
    public void Instance_lists_name_every_bad_entry()
    {
        var problems = new List<string>();
        var urls = RouterOptions.ParseInstances("http://127.0.0.1:8001, 127.0.0.1:8002,ftp://x:1,http://h:1/v1,http://[bad", problems);
        Assert.Equal(["http://127.0.0.1:8001/", "http://127.0.0.1:8002/"], urls.Select(u => u.ToString()));
        Assert.Equal(3, problems.Count);
        Assert.Contains(problems, p => p.Contains("ftp://x:1", StringComparison.Ordinal));
        Assert.Contains(problems, p => p.Contains("http://h:1/v1", StringComparison.Ordinal));
        Assert.Contains(problems, p => p.Contains("http://[bad", StringComparison.Ordinal));
    }

    [Fact]
    public void Every_bad_setting_is_reported_at_once()
    {
        var options = new RouterOptions
        {
            Instances = [new Uri("http://a:1"), new Uri("http://a:1/")],
            MaxBodyBytes = 10,
            LookupTimeout = TimeSpan.Zero,
            KvTieTokens = -1,
            HealthInterval = TimeSpan.FromHours(2),
            PdMinTokens = -1,
        };
        var errors = options.GetErrors();
        Assert.Contains(errors, e => e.StartsWith("--instances: listed more than once", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.StartsWith("--max-body-size", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.StartsWith("--lookup-timeout", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.StartsWith("--kv-tie-tokens", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.StartsWith("--health-interval", StringComparison.Ordinal));
        Assert.Contains("--pd-min-tokens: must be 0..1048576 tokens, got -1", errors);
        Assert.Contains(new RouterOptions().GetErrors(), e => e.StartsWith("--instances", StringComparison.Ordinal));
    }
}
