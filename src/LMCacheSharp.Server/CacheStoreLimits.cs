using LMCacheSharp.Core.Keys;

namespace LMCacheSharp.Server;

/// <summary>
/// Pins and quota groups of a <see cref="MemoryCacheStore"/>: how many bytes may be pinned at once, and the byte quota of
/// each quota group (a PUT-IN-GROUP's group: <see cref="CacheNamespace.QuotaGroupOf"/> of the chunk's <c>cache_salt</c>).
/// </summary>
public sealed class CacheStoreLimits
{
    /// <summary>Bytes that may be pinned at once. Default null: half of the store's capacity; range 0..capacity.</summary>
    public long? MaxPinnedBytes { get; init; }

    /// <summary>
    /// Byte quota per quota group, by group id (the wire bytes as ASCII: for a salt, <see cref="CacheNamespace.QuotaGroupOf"/>).
    /// A PUT to a group over its quota evicts that group's least recently used values first. Default empty.
    /// </summary>
    public IReadOnlyDictionary<string, long> GroupQuotas { get; init; } = new Dictionary<string, long>(StringComparer.Ordinal);

    /// <summary>Quota of every group not in <see cref="GroupQuotas"/>. Default null: such groups have none (only the capacity).</summary>
    public long? DefaultGroupQuotaBytes { get; init; }

    /// <summary>No pins beyond the default, no quotas.</summary>
    public static CacheStoreLimits None { get; } = new();

    /// <summary>The limits <paramref name="options"/> configure: its pinned-bytes limit and its salt quotas, salts turned into group ids.</summary>
    public static CacheStoreLimits FromOptions(CacheServerOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var quotas = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (var (salt, bytes) in options.SaltQuotas)
        {
            quotas[CacheNamespace.QuotaGroupOf(salt)] = bytes;
        }

        return new CacheStoreLimits { MaxPinnedBytes = options.MaxPinnedBytes, GroupQuotas = quotas, DefaultGroupQuotaBytes = options.DefaultSaltQuotaBytes };
    }
}

/// <summary>How a <see cref="ICacheStore.Put(ReadOnlySpan{byte}, Core.Kv.KvChunk, ReadOnlySpan{byte})"/> ended.</summary>
public enum CachePutStatus
{
    /// <summary>Stored (evicting what had to go).</summary>
    Stored,

    /// <summary>The value is larger than the store's capacity.</summary>
    LargerThanCapacity,

    /// <summary>The value is larger than its quota group's quota.</summary>
    LargerThanQuota,

    /// <summary>Not stored: what would have to be evicted to make room (in the store, or in the group) is pinned.</summary>
    PinnedFull,
}

/// <summary>The outcome of <see cref="ICacheStore.Pin"/>.</summary>
/// <param name="Pinned">Keys pinned (absent keys are not).</param>
/// <param name="OverLimit">Refused whole: the pin would take the pinned bytes over the limit.</param>
public readonly record struct CachePinResult(int Pinned, bool OverLimit);

/// <summary>One quota group's use, for /metrics.</summary>
/// <param name="Group">The group id.</param>
/// <param name="UsedBytes">Bytes of values held in the group.</param>
/// <param name="QuotaBytes">Its quota.</param>
/// <param name="Evictions">Values evicted to keep the group within its quota.</param>
public readonly record struct QuotaGroupStats(string Group, long UsedBytes, long QuotaBytes, long Evictions);
