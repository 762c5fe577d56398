using System.Text;

namespace LMCacheSharp.Router.Tests;

/// <summary>The policies' decisions, without servers.</summary>
public sealed class RoutingPolicyTests
{
    private static RouterInstance[] Instances(int n) => [.. Enumerable.Range(0, n).Select(i => new RouterInstance(new Uri($"http://10.0.0.{i + 1}:8000")))];

    [Fact]
    public void Kv_aware_picks_the_longest_prefix_when_loads_are_equal()
    {
        Assert.Equal(1, KvAwarePolicy.Choose([(0, 0), (512, 0), (16, 0)], tieTokens: 16, loadWeight: 256, rotation: 0));
        Assert.Equal(1, KvAwarePolicy.Choose([(0, 3), (512, 3), (16, 3)], tieTokens: 16, loadWeight: 256, rotation: 2));
    }

    [Fact]
    public void Kv_aware_breaks_near_ties_by_load()
    {
        // 500 is within the 16-token band of 512: counts as 512, and the idle instance wins.
        Assert.Equal(0, KvAwarePolicy.Choose([(500, 0), (512, 1)], tieTokens: 16, loadWeight: 256, rotation: 1));
        // Outside the band it loses unless the load difference outweighs the tokens (1 request = 256 tokens here).
        Assert.Equal(1, KvAwarePolicy.Choose([(200, 0), (512, 1)], tieTokens: 16, loadWeight: 256, rotation: 0));
        Assert.Equal(0, KvAwarePolicy.Choose([(200, 0), (512, 3)], tieTokens: 16, loadWeight: 256, rotation: 0));
        // Weight 0: load only breaks exact ties.
        Assert.Equal(1, KvAwarePolicy.Choose([(200, 0), (512, 100)], tieTokens: 16, loadWeight: 0, rotation: 0));
        Assert.Equal(0, KvAwarePolicy.Choose([(512, 0), (512, 100)], tieTokens: 16, loadWeight: 0, rotation: 1));
    }

    [Fact]
    public void Kv_aware_takes_ties_within_the_band_in_turn()
    {
        var picks = Enumerable.Range(0, 4).Select(r => KvAwarePolicy.Choose([(0, 0), (0, 0)], 16, 256, r)).ToArray();
        Assert.Equal([0, 1, 0, 1], picks);
        // Both count as 512 within the band at equal load: a few tokens more do not pile every new document onto one instance.
        Assert.Equal([0, 1], Enumerable.Range(0, 2).Select(r => KvAwarePolicy.Choose([(500, 0), (512, 0)], 16, 256, r)));
        Assert.Equal([0, 0], Enumerable.Range(0, 2).Select(r => KvAwarePolicy.Choose([(500, 0), (512, 1)], 16, 0, r))); // then load
    }

    [Fact]
    public async Task Round_robin_goes_around_the_candidates()
    {
        var instances = Instances(3);
        var policy = new RoundRobinPolicy();
        var request = Request();
        var picks = new List<RouterInstance>();
        for (var i = 0; i < 6; i++)
        {
            picks.Add((await policy.ChooseAsync(request, instances, default)).Instance);
        }

        Assert.Equal([.. instances, .. instances], picks);
    }

    [Fact]
    public void Consistent_hashing_moves_only_the_sessions_the_new_instance_takes()
    {
        var four = Instances(4);
        var three = new ConsistentHashRing(four[..3]);
        var withFourth = new ConsistentHashRing(four);
        var sessions = Enumerable.Range(0, 4000).Select(i => "session-" + i).ToArray();
        var moved = 0;
        var shares = new int[4];
        foreach (var s in sessions)
        {
            var before = three.Walk(s).First();
            var after = withFourth.Walk(s).First();
            shares[Array.IndexOf(four, after)]++;
            if (before != after)
            {
                moved++;
                Assert.Same(four[3], after); // a session only ever moves to the new instance
            }
        }

        // About a quarter move (the new instance's share); naive modulo hashing would move three quarters.
        Assert.InRange(moved, sessions.Length / 8, sessions.Length * 3 / 8);
        Assert.All(shares, n => Assert.InRange(n, sessions.Length / 8, sessions.Length * 3 / 8));
    }

    [Fact]
    public async Task Session_falls_over_to_the_next_instance_on_the_ring_and_back()
    {
        var instances = Instances(3);
        var policy = new SessionPolicy(instances);
        var request = Request(session: "alice");
        var home = (await policy.ChooseAsync(request, instances, default)).Instance;
        var others = instances.Where(i => i != home).ToArray();
        var away = (await policy.ChooseAsync(request, others, default)).Instance;
        Assert.NotSame(home, away);
        Assert.Same(away, (await policy.ChooseAsync(request, others, default)).Instance); // sticks while home is down
        Assert.Same(home, (await policy.ChooseAsync(request, instances, default)).Instance); // and returns
    }

    [Fact]
    public void The_session_key_is_the_header_else_the_user_field()
    {
        var body = Encoding.UTF8.GetBytes("""{"model":"m","user":"bob","stream":true,"stream_options":{"include_usage":true}}""");
        var fromUser = RoutingRequest.Parse("/v1/completions", body, "");
        Assert.Equal("bob", fromUser.SessionKey);
        Assert.Equal("m", fromUser.Model);
        Assert.True(fromUser.Stream);
        Assert.True(fromUser.IncludeUsage);
        Assert.Equal("s-1", RoutingRequest.Parse("/v1/completions", body, "s-1").SessionKey);
        var none = RoutingRequest.Parse("/v1/completions", Encoding.UTF8.GetBytes("""{"model": 5, "user": null}"""), null);
        Assert.Null(none.SessionKey);
        Assert.Null(none.Model); // not a string: the instance refuses it by name
        Assert.ThrowsAny<System.Text.Json.JsonException>(() => RoutingRequest.Parse("/v1/completions", Encoding.UTF8.GetBytes("{\"model\": "), null));
    }

    private static RoutingRequest Request(string? session = null) => new() { Path = "/v1/completions", Body = "{}"u8.ToArray(), SessionKey = session };
}
