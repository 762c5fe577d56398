using System.IO.Hashing;
using System.Text;

namespace LMCacheSharp.Router;

/// <summary>The instance a policy picked, and for kv-aware the cached tokens it expects there.</summary>
/// <param name="Instance">Where the request goes.</param>
/// <param name="PredictedCachedTokens">kv-aware: the memory-tier prefix the instance reported; null for the other policies or without an answer.</param>
public readonly record struct RoutingDecision(RouterInstance Instance, int? PredictedCachedTokens);

/// <summary>Picks an instance for a request. Implementations are thread-safe.</summary>
public interface IRoutingPolicy
{
    /// <summary>The policy's contract name (kv-aware, round-robin, session, least-loaded).</summary>
    string Name { get; }

    /// <summary>Picks one of <paramref name="candidates"/> (healthy, serving the request's model, never empty).</summary>
    ValueTask<RoutingDecision> ChooseAsync(RoutingRequest request, IReadOnlyList<RouterInstance> candidates, CancellationToken cancellationToken);
}

/// <summary><c>round-robin</c>: the healthy candidates in turn.</summary>
public sealed class RoundRobinPolicy : IRoutingPolicy
{
    private uint _next = uint.MaxValue;

    /// <inheritdoc />
    public string Name => "round-robin";

    /// <summary>The next index in 0..<paramref name="count"/>-1.</summary>
    internal int Next(int count) => (int)(Interlocked.Increment(ref _next) % (uint)count);

    /// <inheritdoc />
    public ValueTask<RoutingDecision> ChooseAsync(RoutingRequest request, IReadOnlyList<RouterInstance> candidates, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(candidates);
        return ValueTask.FromResult(new RoutingDecision(candidates[Next(candidates.Count)], null));
    }
}

/// <summary>
/// <c>session</c>: requests of one session (<see cref="RoutingRequest.SessionKey"/>: the <c>X-Session-Id</c> header, else the
/// <c>user</c> field) go to one instance, chosen on a consistent-hash ring of all configured instances, so that adding or
/// losing an instance moves only the sessions that hash next to it. While the session's instance is down its requests go
/// to the next instance on the ring, and come back when it does. Without a session: round-robin.
/// </summary>
public sealed class SessionPolicy : IRoutingPolicy
{
    private readonly Func<IReadOnlyList<RouterInstance>> _members;
    private readonly RoundRobinPolicy _fallback = new();
    private MemberRing _ring;

    /// <summary>Creates the policy over a fixed list of instances.</summary>
    public SessionPolicy(IReadOnlyList<RouterInstance> instances)
    {
        ArgumentNullException.ThrowIfNull(instances);
        _members = () => instances;
        _ring = new MemberRing(instances, new ConsistentHashRing(instances));
    }

    /// <summary>
    /// Creates the policy over the members of <paramref name="instances"/> (with <c>--controller</c> they change): the ring is
    /// rebuilt when they do, which moves only the sessions next to an instance that joined or left.
    /// </summary>
    public SessionPolicy(InstanceSet instances)
    {
        ArgumentNullException.ThrowIfNull(instances);
        _members = () => instances.Current;
        var now = instances.Current;
        _ring = new MemberRing(now, new ConsistentHashRing(now));
    }

    /// <inheritdoc />
    public string Name => "session";

    /// <inheritdoc />
    public ValueTask<RoutingDecision> ChooseAsync(RoutingRequest request, IReadOnlyList<RouterInstance> candidates, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(candidates);
        if (request.SessionKey is not { } session)
        {
            return _fallback.ChooseAsync(request, candidates, cancellationToken);
        }

        var members = _members();
        var ring = Volatile.Read(ref _ring);
        if (!ReferenceEquals(ring.Members, members))
        {
            // Racing rebuilders build equal rings: whichever lands is right.
            ring = new MemberRing(members, new ConsistentHashRing(members));
            Volatile.Write(ref _ring, ring);
        }

        foreach (var instance in ring.Ring.Walk(session))
        {
            if (candidates.Contains(instance))
            {
                return ValueTask.FromResult(new RoutingDecision(instance, null));
            }
        }

        return _fallback.ChooseAsync(request, candidates, cancellationToken); // a candidate not on the ring: cannot happen
    }

    /// <summary>The ring of one membership snapshot.</summary>
    private sealed record MemberRing(IReadOnlyList<RouterInstance> Members, ConsistentHashRing Ring);
}

/// <summary>A consistent-hash ring: each instance at <see cref="PointsPerInstance"/> points (XxHash64 of "name#i"), a key at XxHash64 of its UTF-8.</summary>
public sealed class ConsistentHashRing
{
    /// <summary>Points per instance: enough that each instance's share stays within a few percent of 1/N.</summary>
    public const int PointsPerInstance = 160;

    private readonly ulong[] _points;
    private readonly RouterInstance[] _owners;
    private readonly int _instances;

    /// <summary>Places <paramref name="instances"/> on the ring.</summary>
    public ConsistentHashRing(IReadOnlyList<RouterInstance> instances)
    {
        ArgumentNullException.ThrowIfNull(instances);
        var points = new List<(ulong Hash, RouterInstance Owner)>(instances.Count * PointsPerInstance);
        foreach (var instance in instances)
        {
            for (var i = 0; i < PointsPerInstance; i++)
            {
                points.Add((Hash(instance.Name + "#" + i.ToString(System.Globalization.CultureInfo.InvariantCulture)), instance));
            }
        }

        points.Sort(static (a, b) => a.Hash != b.Hash ? a.Hash.CompareTo(b.Hash) : string.CompareOrdinal(a.Owner.Name, b.Owner.Name));
        _points = [.. points.Select(p => p.Hash)];
        _owners = [.. points.Select(p => p.Owner)];
        _instances = instances.Count;
    }

    /// <summary>The instances in ring order from <paramref name="key"/>'s point: the owner first, then each next distinct one.</summary>
    public IEnumerable<RouterInstance> Walk(string key)
    {
        ArgumentNullException.ThrowIfNull(key);
        if (_points.Length == 0)
        {
            yield break;
        }

        var at = Array.BinarySearch(_points, Hash(key));
        at = at < 0 ? ~at : at;
        var seen = new HashSet<RouterInstance>();
        for (var n = 0; n < _points.Length && seen.Count < _instances; n++)
        {
            var owner = _owners[(at + n) % _points.Length];
            if (seen.Add(owner))
            {
                yield return owner;
            }
        }
    }

    private static ulong Hash(string text) => XxHash64.HashToUInt64(Encoding.UTF8.GetBytes(text));
}

/// <summary>
/// <c>least-loaded</c>: the candidate with the smallest <see cref="RouterInstance.Load"/> (the larger of the router's own
/// in-flight count and the instance's reported running + queued requests); ties in turn.
/// </summary>
public sealed class LeastLoadedPolicy : IRoutingPolicy
{
    private readonly RoundRobinPolicy _ties = new();

    /// <inheritdoc />
    public string Name => "least-loaded";

    /// <inheritdoc />
    public ValueTask<RoutingDecision> ChooseAsync(RoutingRequest request, IReadOnlyList<RouterInstance> candidates, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(candidates);
        var loads = candidates.Select(c => c.Load()).ToArray();
        var least = loads.Min();
        var tied = candidates.Where((_, i) => loads[i] == least).ToArray();
        return ValueTask.FromResult(new RoutingDecision(tied[_ties.Next(tied.Length)], null));
    }
}

/// <summary>
/// <c>kv-aware</c>: asks the <see cref="ICacheLocator"/> how much of the prompt each candidate's memory tier holds and picks the
/// lowest cost = load x load weight - cached tokens, where cached tokens within the tie band of the longest count as the
/// longest (so near-ties go to the less loaded). Equal costs: the lower load, then in turn. An instance that did not
/// answer counts as holding nothing.
/// </summary>
public sealed class KvAwarePolicy : IRoutingPolicy
{
    private readonly ICacheLocator _locator;
    private readonly int _tieTokens;
    private readonly int _loadWeight;
    private readonly RoundRobinPolicy _ties = new();

    /// <summary>Creates the policy.</summary>
    /// <param name="locator">Where the cached prefixes come from.</param>
    /// <param name="tieTokens">The near-tie band (<see cref="RouterOptions.KvTieTokens"/>).</param>
    /// <param name="loadWeightTokens">Tokens one request of load is worth (<see cref="RouterOptions.KvLoadWeightTokens"/>).</param>
    public KvAwarePolicy(ICacheLocator locator, int tieTokens, int loadWeightTokens)
    {
        _locator = locator ?? throw new ArgumentNullException(nameof(locator));
        _tieTokens = tieTokens;
        _loadWeight = loadWeightTokens;
    }

    /// <inheritdoc />
    public string Name => "kv-aware";

    /// <inheritdoc />
    public async ValueTask<RoutingDecision> ChooseAsync(RoutingRequest request, IReadOnlyList<RouterInstance> candidates, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(candidates);
        // A retry reuses the first answers: the instances that are left said what they hold a moment ago.
        request.Reports ??= await _locator.LocateAsync(request, candidates, cancellationToken).ConfigureAwait(false);
        var scored = new (int Cached, int Load)[candidates.Count];
        var reports = new CacheReport?[candidates.Count];
        for (var i = 0; i < candidates.Count; i++)
        {
            var report = request.Reports.FirstOrDefault(r => r.Instance == candidates[i]);
            reports[i] = report.Instance is null ? null : report;
            scored[i] = (report is { Answered: true } ? report.CachedTokens : 0, candidates[i].Load(report.Answered ? report.Load : null));
        }

        var chosen = Choose(scored, _tieTokens, _loadWeight, _ties.Next(candidates.Count));
        var predicted = reports[chosen] is { Answered: true } r ? r.CachedTokens : (int?)null;
        return new RoutingDecision(candidates[chosen], predicted);
    }

    /// <summary>
    /// The index of the lowest cost among <paramref name="candidates"/> (cost = load x <paramref name="loadWeight"/> - cached, with cached
    /// tokens within <paramref name="tieTokens"/> of the longest counted as the longest); equal costs to the lower load, then the
    /// first at or after <paramref name="rotation"/>.
    /// </summary>
    internal static int Choose(IReadOnlyList<(int Cached, int Load)> candidates, int tieTokens, int loadWeight, int rotation)
    {
        var best = candidates.Max(c => c.Cached);
        var chosen = -1;
        long chosenCost = 0;
        for (var n = 0; n < candidates.Count; n++)
        {
            var i = (rotation + n) % candidates.Count;
            var (cached, load) = candidates[i];
            var effective = cached >= best - tieTokens ? best : cached;
            var cost = (long)load * loadWeight - effective;
            // Within the band the exact prefix does not matter: equal costs are taken in turn, which spreads new documents
            // (every instance holding next to nothing) instead of piling them onto whichever holds a few tokens more.
            if (chosen < 0 || cost < chosenCost || (cost == chosenCost && load < candidates[chosen].Load))
            {
                chosen = i;
                chosenCost = cost;
            }
        }

        return chosen;
    }
}
