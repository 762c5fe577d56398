using LMCacheSharp.Core.Keys;
using LMCacheSharp.KvEvents;

namespace LMCacheSharp.Controller;

/// <summary>One instance's answer to a lookup.</summary>
/// <param name="Instance">The instance.</param>
/// <param name="Hit">Its cached tokens per tier.</param>
public readonly record struct InstanceLookup(FleetInstance Instance, InstanceHit Hit);

/// <summary>
/// A lookup over the directory: the prompt's chunk keys are computed per namespace (the instances' own namespace with the
/// request's <c>cache_salt</c>, so a salted tenant never sees another tenant's prefixes), then every instance's leading run
/// is walked. Instances that registered no namespace (no cache) report zero.
/// </summary>
public static class FleetLookup
{
    /// <summary>Looks <paramref name="tokens"/> up on each of <paramref name="instances"/>; the answers come in the same order.</summary>
    public static InstanceLookup[] Lookup(ChunkDirectory directory, IReadOnlyList<FleetInstance> instances, ReadOnlySpan<int> tokens, string? cacheSalt)
    {
        ArgumentNullException.ThrowIfNull(directory);
        ArgumentNullException.ThrowIfNull(instances);
        var results = new InstanceLookup[instances.Count];
        // Instances of one model usually share a namespace and chunk size: keys are computed once per distinct pair.
        var keysBySeed = new Dictionary<(ChunkHash, int), (ChunkHash Seed, long[] Keys)>();
        Span<int> one = stackalloc int[1];
        Span<InstanceHit> hit = stackalloc InstanceHit[1];
        for (var i = 0; i < instances.Count; i++)
        {
            var instance = instances[i];
            var registration = instance.Registration;
            if (registration.Namespace is not { } ns || tokens.Length == 0)
            {
                results[i] = new InstanceLookup(instance, new InstanceHit(instance.Index, 0, 0, 0, 0));
                continue;
            }

            if (!keysBySeed.TryGetValue((ns.Seed, registration.ChunkSize), out var keyed))
            {
                var salted = string.IsNullOrEmpty(cacheSalt) ? ns : ns.WithSalt(cacheSalt);
                keyed = (salted.Seed, BlockHashes(salted.Seed, tokens, registration.ChunkSize));
                keysBySeed[(ns.Seed, registration.ChunkSize)] = keyed;
            }

            one[0] = instance.Index;
            directory.Lookup(keyed.Keys, tokens, registration.ChunkSize, keyed.Seed, one, hit);
            results[i] = new InstanceLookup(instance, hit[0]);
        }

        return results;
    }

    /// <summary>The block hashes (as KV events carry them) of the whole chunks of <paramref name="tokens"/> under <paramref name="seed"/>.</summary>
    public static long[] BlockHashes(ChunkHash seed, ReadOnlySpan<int> tokens, int chunkSize)
    {
        var count = PrefixHasher.ChunkCount(tokens.Length, chunkSize, includePartial: false);
        Span<ChunkHash> keys = count <= 512 ? stackalloc ChunkHash[count] : new ChunkHash[count];
        PrefixHasher.ComputeKeys(seed, tokens, chunkSize, includePartial: false, keys);
        var hashes = new long[count];
        for (var i = 0; i < count; i++)
        {
            hashes[i] = KvEventWire.BlockHash(keys[i]);
        }

        return hashes;
    }
}
