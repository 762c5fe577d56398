using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Storage;

namespace LMCacheSharp.Core.Engine;

/// <summary>The tiers a <see cref="CacheEngine.CountByTierAsync"/> call asks.</summary>
[Flags]
public enum LookupTiers
{
    /// <summary>The memory tier only: no I/O, never a wait.</summary>
    Memory = 1,

    /// <summary>The local disk tiers (their in-process index).</summary>
    Disk = 2,

    /// <summary>The remote tiers (one round trip per stretch of the run).</summary>
    Remote = 4,

    /// <summary>Every tier.</summary>
    All = Memory | Disk | Remote,
}

/// <summary>
/// Leading tokens of a prompt an instance holds, by tier: <see cref="Memory"/> the run in the memory tier alone (to the
/// token with token-exact reuse), <see cref="Disk"/> the tokens the local disk tiers add to it, <see cref="Remote"/> the
/// tokens the remote tiers add to both. The sum is the longest prefix cached anywhere. Null: that tier was not asked.
/// </summary>
/// <param name="Memory">Leading tokens in memory.</param>
/// <param name="Disk">Tokens past <paramref name="Memory"/> that memory and disk together continue, or null when not asked.</param>
/// <param name="Remote">Tokens past those that every tier together continues, or null when not asked.</param>
public readonly record struct TierTokenCounts(int Memory, int? Disk, int? Remote)
{
    /// <summary>Nothing cached; the tiers not in <paramref name="asked"/> are null.</summary>
    public static TierTokenCounts None(LookupTiers asked) =>
        new(0, (asked & (LookupTiers.Disk | LookupTiers.Remote)) != 0 ? 0 : null, asked.HasFlag(LookupTiers.Remote) ? 0 : null);

    /// <summary>The longest prefix cached in the tiers asked.</summary>
    public int Total => Memory + (Disk ?? 0) + (Remote ?? 0);
}

public sealed partial class CacheEngine
{
    /// <summary>
    /// How many leading tokens of <paramref name="tokens"/> each tier holds (<see cref="TierTokenCounts"/>), without pinning,
    /// fetching or promoting anything: what a router asks to place a request. The memory count includes a token-exact tail
    /// from <see cref="Tails"/> that memory holds; the disk and remote counts go by whole chunks (and a stored partial last
    /// chunk). Not counted as a lookup in the metrics: a router asking every instance would skew their hit rates.
    /// </summary>
    /// <param name="tokens">The tokens to look up (the caller leaves out what the engine must compute anyway).</param>
    /// <param name="ns">The request's namespace (salt, tags), or null for the default.</param>
    /// <param name="tiers">The tiers to ask; memory is always counted, and asking <see cref="LookupTiers.Remote"/> counts disk too (the
    /// remote count is what it adds past both).</param>
    /// <param name="cancellationToken">Cancels a wait on a remote tier.</param>
    public async ValueTask<TierTokenCounts> CountByTierAsync(ReadOnlyMemory<int> tokens, CacheNamespace? ns = null, LookupTiers tiers = LookupTiers.All,
        CancellationToken cancellationToken = default)
    {
        ns ??= Namespace;
        var keys = ComputeKeys(tokens.Span, ns);
        var inMemory = Storage.Memory?.CountPrefix(keys) ?? 0;
        var memory = Math.Min(inMemory * ChunkSize, tokens.Length);
        if (TokenExact && memory < tokens.Length && Storage.Memory is not null && memory == inMemory * ChunkSize)
        {
            var parent = inMemory == 0 ? ns.Seed : keys[inMemory - 1];
            foreach (var match in Tails.Find(parent, tokens.Span[memory..]))
            {
                if (Storage.ContainsInMemory(match.Key))
                {
                    memory += Math.Min(match.Common, tokens.Length - memory);
                    break;
                }
            }
        }

        int? disk = null, remote = null;
        if ((tiers & (LookupTiers.Disk | LookupTiers.Remote)) != 0)
        {
            var local = await Storage.CountPrefixAsync(keys, static k => k is StorageTierKind.Memory or StorageTierKind.Disk, cancellationToken)
                .ConfigureAwait(false);
            var localTokens = Math.Max(memory, Math.Min(local * ChunkSize, tokens.Length));
            disk = localTokens - memory;
            if (tiers.HasFlag(LookupTiers.Remote))
            {
                var all = await Storage.CountPrefixAsync(keys, null, cancellationToken).ConfigureAwait(false);
                remote = Math.Max(0, Math.Min(all * ChunkSize, tokens.Length) - localTokens);
            }
        }

        return new TierTokenCounts(memory, disk, remote);
    }
}
