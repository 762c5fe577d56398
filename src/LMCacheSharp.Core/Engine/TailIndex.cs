using LMCacheSharp.Core.Keys;

namespace LMCacheSharp.Core.Engine;

/// <summary>A stored chunk that may continue a prefix: its key and how many leading tokens it shares with the request.</summary>
/// <param name="Key">The child chunk's key.</param>
/// <param name="Tokens">The tokens the child chunk covers (a read-only view of the index's own copy).</param>
/// <param name="Common">Leading tokens the child shares with the request's next tokens.</param>
public readonly record struct TailMatch(ChunkHash Key, ReadOnlyMemory<int> Tokens, int Common)
{
    /// <summary>Tokens the child chunk covers.</summary>
    public int ChunkTokens => Tokens.Length;
}

/// <summary>
/// Token-exact reuse past the last whole-chunk hit (DESIGN section 10): for each stored chunk, its parent (the previous
/// chunk's key, or the namespace seed for a first chunk) and its token ids. After the run of whole-chunk hits ends at a
/// parent, the children of that parent are compared token by token with the request's next tokens; the best child is
/// restored and the cells past the common prefix removed. Exact, because the KV of a position depends only on the tokens
/// up to it, and safe, because tokens are compared, never trusted from a hash. Bounded: at most <see cref="Capacity"/>
/// children, the oldest registrations forgotten first. Thread-safe.
/// </summary>
public sealed class TailIndex
{
    private readonly Lock _lock = new();
    private readonly Dictionary<ChunkHash, List<Child>> _children = [];
    private readonly Queue<(ChunkHash Parent, ChunkHash Key)> _order = new();
    private int _count;
    private long _tokens;

    /// <summary>Creates an index.</summary>
    /// <param name="capacity">Children remembered at most. Default 65,536; range 1..16,777,216.</param>
    /// <param name="maxTokens">Tokens remembered at most over all children (4 bytes each), or null for no limit but the capacity.</param>
    public TailIndex(int capacity = 65_536, long? maxTokens = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(capacity, 1 << 24);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxTokens ?? 1, 1);
        Capacity = capacity;
        MaxTokens = maxTokens ?? long.MaxValue;
    }

    /// <summary>Children remembered at most.</summary>
    public int Capacity { get; }

    /// <summary>Tokens remembered at most over all children; the oldest children are forgotten first.</summary>
    public long MaxTokens { get; }

    /// <summary>Tokens remembered now over all children.</summary>
    public long TokenCount
    {
        get
        {
            lock (_lock)
            {
                return _tokens;
            }
        }
    }

    /// <summary>Children remembered now.</summary>
    public int Count
    {
        get
        {
            lock (_lock)
            {
                return _count;
            }
        }
    }

    /// <summary>
    /// Records that <paramref name="key"/> (covering <paramref name="tokens"/>) continues <paramref name="parent"/>. A child
    /// whose tokens are a strict prefix of these is dominated (anything it could serve, this one serves too): it is
    /// forgotten and its key added to <paramref name="dominated"/>, so that the caller can free it.
    /// </summary>
    public void Add(ChunkHash parent, ChunkHash key, ReadOnlySpan<int> tokens, List<ChunkHash>? dominated = null)
    {
        if (tokens.IsEmpty)
        {
            return;
        }

        lock (_lock)
        {
            if (!_children.TryGetValue(parent, out var list))
            {
                list = [];
                _children.Add(parent, list);
            }

            for (var i = list.Count - 1; i >= 0; i--)
            {
                var child = list[i];
                if (child.Key == key)
                {
                    return;
                }

                if (child.Tokens.Length < tokens.Length && tokens.StartsWith(child.Tokens))
                {
                    dominated?.Add(child.Key);
                    list.RemoveAt(i);
                    _count--;
                    _tokens -= child.Tokens.Length;
                }
                else if (child.Tokens.Length >= tokens.Length && child.Tokens.AsSpan().StartsWith(tokens))
                {
                    dominated?.Add(key); // the new one is dominated by a child already known
                    return;
                }
            }

            list.Add(new Child(key, tokens.ToArray()));
            _count++;
            _tokens += tokens.Length;
            _order.Enqueue((parent, key));
            while ((_count > Capacity || _tokens > MaxTokens) && _order.TryDequeue(out var oldest))
            {
                RemoveLocked(oldest.Parent, oldest.Key);
            }

            if (_order.Count > 2 * Math.Max(Capacity, 1024))
            {
                // Removals leave stale entries behind: rebuild the order from what is remembered.
                var live = new HashSet<(ChunkHash, ChunkHash)>(_children.SelectMany(p => p.Value.Select(c => (p.Key, c.Key))));
                var kept = _order.Where(live.Remove).ToList();
                _order.Clear();
                kept.ForEach(_order.Enqueue);
            }
        }
    }

    /// <summary>
    /// The children of <paramref name="parent"/> that share at least one leading token with <paramref name="next"/>, best
    /// first (most tokens in common; among equals the shortest chunk, the least to restore).
    /// </summary>
    public IReadOnlyList<TailMatch> Find(ChunkHash parent, ReadOnlySpan<int> next, int max = 4)
    {
        if (next.IsEmpty)
        {
            return [];
        }

        List<TailMatch>? matches = null;
        lock (_lock)
        {
            if (!_children.TryGetValue(parent, out var list))
            {
                return [];
            }

            foreach (var child in list)
            {
                var common = next.CommonPrefixLength(child.Tokens);
                if (common > 0)
                {
                    (matches ??= []).Add(new TailMatch(child.Key, child.Tokens, common));
                }
            }
        }

        if (matches is null)
        {
            return [];
        }

        matches.Sort(static (a, b) => a.Common != b.Common ? b.Common.CompareTo(a.Common) : a.ChunkTokens.CompareTo(b.ChunkTokens));
        return matches.Count > max ? matches.GetRange(0, max) : matches;
    }

    /// <summary>Forgets a child (its chunk is gone).</summary>
    public void Remove(ChunkHash parent, ChunkHash key)
    {
        lock (_lock)
        {
            RemoveLocked(parent, key);
        }
    }

    /// <summary>Forgets everything.</summary>
    public void Clear()
    {
        lock (_lock)
        {
            _children.Clear();
            _order.Clear();
            _count = 0;
            _tokens = 0;
        }
    }

    private void RemoveLocked(ChunkHash parent, ChunkHash key)
    {
        if (!_children.TryGetValue(parent, out var list))
        {
            return;
        }

        var i = list.FindIndex(c => c.Key == key);
        if (i < 0)
        {
            return;
        }

        _tokens -= list[i].Tokens.Length;
        list.RemoveAt(i);
        _count--;
        if (list.Count == 0)
        {
            _children.Remove(parent);
        }
    }

    private sealed record Child(ChunkHash Key, int[] Tokens);
}
