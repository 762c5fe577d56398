using LMCacheSharp.Core.Keys;
using LMCacheSharp.KvEvents;

namespace LMCacheSharp.Controller;

/// <summary>The tiers of one instance that hold a chunk.</summary>
[Flags]
public enum TierSet : byte
{
    /// <summary>No tier.</summary>
    None = 0,
    /// <summary>The instance's memory tier (medium "CPU").</summary>
    Memory = 1,
    /// <summary>The instance's disk tier (medium "DISK").</summary>
    Disk = 2,
    /// <summary>The remote tier the instance stored into (medium "REMOTE").</summary>
    Remote = 4,
    /// <summary>Any tier.</summary>
    Any = Memory | Disk | Remote,
}

/// <summary>How many leading tokens of a prompt one instance holds, per tier and in any mix of its tiers.</summary>
/// <param name="Instance">The instance's directory index.</param>
/// <param name="Memory">Tokens restorable from its memory tier alone.</param>
/// <param name="Disk">Tokens in its disk tier alone.</param>
/// <param name="Remote">Tokens it stored in the remote tier.</param>
/// <param name="Total">Tokens when every chunk may come from any of its tiers (what its own lookup would find).</param>
public readonly record struct InstanceHit(int Instance, int Memory, int Disk, int Remote, int Total);

/// <summary>A cached prompt start for the dashboard: a root chunk and what hangs off it.</summary>
/// <param name="RootHash">The first chunk's block hash.</param>
/// <param name="FirstTokens">The first few token ids.</param>
/// <param name="Chunks">Chunks in the subtree (the root included).</param>
/// <param name="Tokens">Tokens in the subtree.</param>
/// <param name="Instances">Distinct instances holding any chunk of it.</param>
public sealed record PrefixSummary(long RootHash, int[] FirstTokens, int Chunks, long Tokens, int Instances);

/// <summary>
/// The fleet's chunk directory: block hash -> (parent, tokens, instances x tiers), built from KV events (soft state).
/// Whole chunks are found by hash (the controller computes the keys the instances compute); the token-exact tail by
/// comparing the request's next tokens with the stored children of the last whole chunk, as an instance's own tail index
/// does. Thread-safe: one lock; a lookup of 32k tokens holds it for microseconds.
/// </summary>
public sealed class ChunkDirectory
{
    private const int TierCount = 3;

    private readonly Lock _lock = new();
    private readonly Dictionary<long, Node> _nodes = [];
    private readonly Dictionary<long, List<long>> _children = [];
    private readonly Dictionary<int, List<long>> _rootsByFirstToken = [];
    private readonly Dictionary<int, InstanceEntries> _instances = [];

    /// <summary>Chunks in the directory.</summary>
    public int Count
    {
        get
        {
            lock (_lock)
            {
                return _nodes.Count;
            }
        }
    }

    /// <summary>Makes <paramref name="instance"/> known: events for an instance not added (or removed) are ignored.</summary>
    public void AddInstance(int instance)
    {
        lock (_lock)
        {
            _instances.TryAdd(instance, new InstanceEntries());
        }
    }

    /// <summary>Forgets <paramref name="instance"/> and every entry it held; later events for it are ignored.</summary>
    public void RemoveInstance(int instance)
    {
        lock (_lock)
        {
            ClearLocked(instance);
            _instances.Remove(instance);
        }
    }

    /// <summary>Removes every entry of <paramref name="instance"/> (AllBlocksCleared, or before a full replay).</summary>
    public void ClearInstance(int instance)
    {
        lock (_lock)
        {
            ClearLocked(instance);
        }
    }

    /// <summary>Chunks <paramref name="instance"/> holds in memory, on disk and in the remote tier.</summary>
    public (long Memory, long Disk, long Remote) CountsOf(int instance)
    {
        lock (_lock)
        {
            return _instances.TryGetValue(instance, out var e) ? (e.PerTier[0], e.PerTier[1], e.PerTier[2]) : (0, 0, 0);
        }
    }

    /// <summary>The tier a KV event's medium names ("CPU" or "GPU": memory, "DISK", "REMOTE"), or None for an unknown one.</summary>
    public static TierSet TierOf(string? medium) => medium?.ToUpperInvariant() switch
    {
        null or "CPU" or "GPU" or "MEMORY" => TierSet.Memory,
        "DISK" => TierSet.Disk,
        "REMOTE" => TierSet.Remote,
        _ => TierSet.None,
    };

    /// <summary>Applies one batch of <paramref name="instance"/>'s events; returns the events applied (unknown media and types skipped).</summary>
    public int Apply(int instance, KvEventBatch batch)
    {
        ArgumentNullException.ThrowIfNull(batch);
        var applied = 0;
        lock (_lock)
        {
            if (!_instances.TryGetValue(instance, out var entries))
            {
                return 0;
            }

            foreach (var e in batch.Events)
            {
                switch (e)
                {
                    case BlockStoredEvent stored when TierOf(stored.Medium) is var tier and not TierSet.None:
                        StoreLocked(instance, entries, tier, stored);
                        applied++;
                        break;
                    case BlockRemovedEvent removed when TierOf(removed.Medium) is var tier and not TierSet.None:
                        foreach (var hash in removed.BlockHashes)
                        {
                            RemoveLocked(instance, entries, tier, hash);
                        }

                        applied++;
                        break;
                    case AllBlocksClearedEvent:
                        ClearLocked(instance);
                        applied++;
                        break;
                    default:
                        break;
                }
            }
        }

        return applied;
    }

    /// <summary>
    /// For each of <paramref name="instances"/>: the leading tokens of <paramref name="tokens"/> it holds. <paramref name="keys"/>
    /// are the block hashes of the prompt's whole chunks in the instances' namespace (<paramref name="seed"/>, which also
    /// tells a first chunk of this namespace from an equal-token first chunk of another).
    /// </summary>
    public void Lookup(ReadOnlySpan<long> keys, ReadOnlySpan<int> tokens, int chunkSize, ChunkHash seed, ReadOnlySpan<int> instances, Span<InstanceHit> results)
    {
        if (results.Length < instances.Length)
        {
            throw new ArgumentException("results is shorter than instances", nameof(results));
        }

        lock (_lock)
        {
            for (var i = 0; i < instances.Length; i++)
            {
                var id = instances[i];
                results[i] = new InstanceHit(id,
                    WalkLocked(keys, tokens, chunkSize, seed, id, TierSet.Memory),
                    WalkLocked(keys, tokens, chunkSize, seed, id, TierSet.Disk),
                    WalkLocked(keys, tokens, chunkSize, seed, id, TierSet.Remote),
                    WalkLocked(keys, tokens, chunkSize, seed, id, TierSet.Any));
            }
        }
    }

    /// <summary>The <paramref name="count"/> largest cached prompt starts (by chunks), visiting at most <paramref name="maxNodes"/> chunks.</summary>
    public IReadOnlyList<PrefixSummary> TopPrefixes(int count, int maxNodes = 200_000)
    {
        var summaries = new List<PrefixSummary>();
        lock (_lock)
        {
            var visited = 0;
            var stack = new Stack<long>();
            var holders = new HashSet<int>();
            foreach (var roots in _rootsByFirstToken.Values)
            {
                foreach (var root in roots)
                {
                    if (visited >= maxNodes || !_nodes.TryGetValue(root, out var rootNode))
                    {
                        continue;
                    }

                    holders.Clear();
                    stack.Push(root);
                    var chunks = 0;
                    long tokenCount = 0;
                    while (stack.TryPop(out var hash) && visited < maxNodes)
                    {
                        visited++;
                        if (_nodes.TryGetValue(hash, out var node))
                        {
                            chunks++;
                            tokenCount += node.Tokens.Length;
                            foreach (var h in node.Holders)
                            {
                                holders.Add(h.Instance);
                            }
                        }

                        if (_children.TryGetValue(hash, out var kids))
                        {
                            kids.ForEach(stack.Push);
                        }
                    }

                    stack.Clear();
                    summaries.Add(new PrefixSummary(root, rootNode.Tokens[..Math.Min(8, rootNode.Tokens.Length)], chunks, tokenCount, holders.Count));
                }
            }
        }

        return [.. summaries.OrderByDescending(s => s.Chunks).ThenByDescending(s => s.Instances).Take(count)];
    }

    private int WalkLocked(ReadOnlySpan<long> keys, ReadOnlySpan<int> tokens, int chunkSize, ChunkHash seed, int instance, TierSet tiers)
    {
        var run = 0;
        while (run < keys.Length && _nodes.TryGetValue(keys[run], out var node) && (node.TiersOf(instance) & tiers) != 0)
        {
            run++;
        }

        var cached = run * chunkSize;
        if (cached >= tokens.Length)
        {
            return tokens.Length;
        }

        // The token-exact tail: the stored child of the run's last chunk (or a first chunk) sharing the most next tokens.
        var next = tokens[cached..];
        List<long>? candidates;
        if (run == 0)
        {
            _rootsByFirstToken.TryGetValue(next[0], out candidates);
        }
        else
        {
            _children.TryGetValue(keys[run - 1], out candidates);
        }

        if (candidates is null)
        {
            return cached;
        }

        var best = 0;
        Span<ChunkHash> rootKey = stackalloc ChunkHash[1];
        foreach (var hash in candidates)
        {
            if (!_nodes.TryGetValue(hash, out var child) || (child.TiersOf(instance) & tiers) == 0)
            {
                continue;
            }

            var common = child.Tokens.AsSpan().CommonPrefixLength(next);
            if (common <= best)
            {
                continue;
            }

            // A first chunk has no parent to pin its namespace: it is ours when its tokens hash to it from our seed.
            if (run == 0 && (PrefixHasher.ComputeKeys(seed, child.Tokens, child.Tokens.Length, true, rootKey) != 1 ||
                KvEventWire.BlockHash(rootKey[0]) != hash))
            {
                continue;
            }

            best = common;
        }

        return cached + Math.Min(best, chunkSize);
    }

    private void StoreLocked(int instance, InstanceEntries entries, TierSet tier, BlockStoredEvent stored)
    {
        var parent = stored.ParentBlockHash;
        var blockSize = Math.Max(1, stored.BlockSize);
        for (var i = 0; i < stored.BlockHashes.Length; i++)
        {
            var hash = stored.BlockHashes[i];
            // One block per event may be partial (lmcache's tail); otherwise block i holds tokens [i*bs, (i+1)*bs).
            var tokens = stored.BlockHashes.Length == 1
                ? stored.TokenIds
                : stored.TokenIds.Length >= (i + 1) * blockSize ? stored.TokenIds[(i * blockSize)..((i + 1) * blockSize)] : [];
            if (!_nodes.TryGetValue(hash, out var node))
            {
                node = new Node(hash, parent, tokens);
                _nodes.Add(hash, node);
                Link(node);
            }
            else if (node.Tokens.Length == 0 && tokens.Length > 0)
            {
                // Known by hash only (a remote fetch carries no tokens): now it can take part in tail comparisons.
                Unlink(node);
                node = new Node(hash, parent ?? node.Parent, tokens) { Holders = node.Holders };
                _nodes[hash] = node;
                Link(node);
            }

            if (node.Add(instance, tier))
            {
                entries.Hashes.Add(hash);
                entries.PerTier[TierIndex(tier)]++;
            }

            parent = hash;
        }
    }

    private void RemoveLocked(int instance, InstanceEntries entries, TierSet tier, long hash)
    {
        if (!_nodes.TryGetValue(hash, out var node) || !node.Remove(instance, tier, out var instanceLeft))
        {
            return;
        }

        entries.PerTier[TierIndex(tier)]--;
        if (instanceLeft)
        {
            entries.Hashes.Remove(hash);
        }

        if (node.Holders.Count == 0)
        {
            _nodes.Remove(hash);
            Unlink(node);
        }
    }

    private void ClearLocked(int instance)
    {
        if (!_instances.TryGetValue(instance, out var entries))
        {
            return;
        }

        foreach (var hash in entries.Hashes)
        {
            if (_nodes.TryGetValue(hash, out var node) && node.RemoveInstance(instance) && node.Holders.Count == 0)
            {
                _nodes.Remove(hash);
                Unlink(node);
            }
        }

        entries.Hashes.Clear();
        Array.Clear(entries.PerTier);
    }

    private void Link(Node node)
    {
        if (node.Tokens.Length == 0)
        {
            return; // nothing to compare: found by hash only
        }

        List<long>? list;
        if (node.Parent is { } parent)
        {
            if (!_children.TryGetValue(parent, out list))
            {
                _children[parent] = list = [];
            }
        }
        else if (!_rootsByFirstToken.TryGetValue(node.Tokens[0], out list))
        {
            _rootsByFirstToken[node.Tokens[0]] = list = [];
        }

        list.Add(node.Hash);
    }

    private void Unlink(Node node)
    {
        if (node.Tokens.Length == 0)
        {
            return;
        }

        if (node.Parent is { } parent)
        {
            if (_children.TryGetValue(parent, out var list) && list.Remove(node.Hash) && list.Count == 0)
            {
                _children.Remove(parent);
            }
        }
        else if (_rootsByFirstToken.TryGetValue(node.Tokens[0], out var roots) && roots.Remove(node.Hash) && roots.Count == 0)
        {
            _rootsByFirstToken.Remove(node.Tokens[0]);
        }
    }

    private static int TierIndex(TierSet tier) => tier switch
    {
        TierSet.Memory => 0,
        TierSet.Disk => 1,
        _ => 2,
    };

    private sealed class InstanceEntries
    {
        public HashSet<long> Hashes { get; } = [];

        public long[] PerTier { get; } = new long[TierCount];
    }

    private readonly record struct Holder(int Instance, TierSet Tiers);

    private sealed class Node(long hash, long? parent, int[] tokens)
    {
        public long Hash { get; } = hash;

        public long? Parent { get; } = parent;

        public int[] Tokens { get; } = tokens;

        public List<Holder> Holders { get; init; } = new(1);

        public TierSet TiersOf(int instance)
        {
            foreach (var h in Holders)
            {
                if (h.Instance == instance)
                {
                    return h.Tiers;
                }
            }

            return TierSet.None;
        }

        /// <summary>True when the tier is new for the instance.</summary>
        public bool Add(int instance, TierSet tier)
        {
            for (var i = 0; i < Holders.Count; i++)
            {
                if (Holders[i].Instance == instance)
                {
                    if ((Holders[i].Tiers & tier) != 0)
                    {
                        return false;
                    }

                    Holders[i] = Holders[i] with { Tiers = Holders[i].Tiers | tier };
                    return true;
                }
            }

            Holders.Add(new Holder(instance, tier));
            return true;
        }

        /// <summary>True when the instance held it in that tier; <paramref name="instanceLeft"/>: it now holds it in none.</summary>
        public bool Remove(int instance, TierSet tier, out bool instanceLeft)
        {
            instanceLeft = false;
            for (var i = 0; i < Holders.Count; i++)
            {
                if (Holders[i].Instance == instance && (Holders[i].Tiers & tier) != 0)
                {
                    var left = Holders[i].Tiers & ~tier;
                    if (left == TierSet.None)
                    {
                        Holders.RemoveAt(i);
                        instanceLeft = true;
                    }
                    else
                    {
                        Holders[i] = Holders[i] with { Tiers = left };
                    }

                    return true;
                }
            }

            return false;
        }

        public bool RemoveInstance(int instance) => Holders.RemoveAll(h => h.Instance == instance) > 0;
    }
}
