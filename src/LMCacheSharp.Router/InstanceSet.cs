namespace LMCacheSharp.Router;

/// <summary>
/// The instances the router routes over: fixed (<c>--instances</c>), or the controller's list (<c>--controller</c>), which
/// <see cref="ControllerLink"/> replaces as instances register and expire. Readers take <see cref="Current"/>, an immutable
/// snapshot, once per request; an instance that stays in the list keeps its <see cref="RouterInstance"/> (health, in-flight
/// count) across updates. Thread-safe.
/// </summary>
public sealed class InstanceSet
{
    private readonly Lock _lock = new();
    private RouterInstance[] _current;

    /// <summary>Creates the set with <paramref name="urls"/> (base URLs; empty for a controller's set before its first answer).</summary>
    public InstanceSet(IEnumerable<Uri> urls)
    {
        ArgumentNullException.ThrowIfNull(urls);
        _current = [.. urls.Select(u => new RouterInstance(u))];
    }

    /// <summary>The instances now, in the order given (the controller's order, or <c>--instances</c>'). Never changes once read.</summary>
    public IReadOnlyList<RouterInstance> Current => Volatile.Read(ref _current);

    /// <summary>
    /// Makes <paramref name="urls"/> the members: an instance already listed (same <see cref="RouterOptions.Key"/>) is kept as it is,
    /// a new one is added (not healthy until its first probe), the rest leave (requests in flight to them finish).
    /// </summary>
    /// <returns>The instances added and those that left.</returns>
    internal (IReadOnlyList<RouterInstance> Added, IReadOnlyList<RouterInstance> Removed) Replace(IEnumerable<Uri> urls)
    {
        lock (_lock)
        {
            var old = _current;
            var byName = old.ToDictionary(i => i.Name, StringComparer.Ordinal);
            var next = new List<RouterInstance>();
            var added = new List<RouterInstance>();
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var url in urls)
            {
                var name = RouterOptions.Key(url);
                if (!seen.Add(name))
                {
                    continue;
                }

                if (byName.TryGetValue(name, out var kept))
                {
                    next.Add(kept);
                }
                else
                {
                    var instance = new RouterInstance(url);
                    next.Add(instance);
                    added.Add(instance);
                }
            }

            var removed = old.Where(i => !seen.Contains(i.Name)).ToList();
            if (added.Count > 0 || removed.Count > 0 || !next.SequenceEqual(old))
            {
                Volatile.Write(ref _current, [.. next]);
            }

            return (added, removed);
        }
    }
}
