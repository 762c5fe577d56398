using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Storage;

namespace LMCacheSharp.Core.Engine;

/// <summary>What <see cref="CacheEngine.PinPrefixAsync"/> or <see cref="CacheEngine.UnpinPrefix"/> did in the memory tier.</summary>
/// <param name="PromptTokens">Tokens of the prompt given.</param>
/// <param name="PromptChunks">Chunk keys of the prompt (whole chunks, and the partial last one with <c>save_unfull_chunk</c>).</param>
/// <param name="Tokens">Leading tokens whose chunks are pinned after the call (0 when the pin was refused).</param>
/// <param name="Memory">The memory tier's answer: chunks pinned or unpinned, missing, the totals, whether over the limit.</param>
public readonly record struct PrefixPinResult(int PromptTokens, int PromptChunks, int Tokens, PinResult Memory);

public sealed partial class CacheEngine
{
    /// <summary>
    /// Pins the leading cached chunks of <paramref name="tokens"/> in the memory tier, exempt from eviction until as many
    /// <see cref="UnpinPrefix"/> calls: the chunks are found in any tier and promoted into memory first (as
    /// <see cref="PinAsync"/> does for a request), then pinned at once, all or nothing against
    /// <see cref="MemoryTier.MaxPinnedBytes"/> (<see cref="PinResult.OverLimit"/>). Whole chunks only: a token-exact tail is
    /// not pinned. Unlike <see cref="PinAsync"/>, which holds a request's chunks for its restore, this pin outlives the call
    /// (<c>POST /lmcache/pin</c>). Throws <see cref="InvalidOperationException"/> without a memory tier.
    /// </summary>
    public async ValueTask<PrefixPinResult> PinPrefixAsync(ReadOnlyMemory<int> tokens, CacheNamespace? ns = null, CancellationToken cancellationToken = default)
    {
        var memory = Storage.Memory ?? throw new InvalidOperationException("there is no memory tier to pin in (local_cpu: false)");
        ns ??= Namespace;
        using var prefix = await PinAsync(tokens, ns, cancellationToken).ConfigureAwait(false);
        var run = prefix.Chunks;
        foreach (var chunk in run)
        {
            // Promoted by the lookup, but evicted since (or never taken by a full memory tier): it is held here, put it back.
            if (!memory.Contains(chunk.Key))
            {
                memory.Put(chunk);
            }
        }

        var keys = prefix.Keys.AsSpan(0, run.Length);
        var result = memory.Pin(keys);
        return new PrefixPinResult(tokens.Length, prefix.Keys.Length, result.OverLimit ? 0 : PinnedTokens(memory, keys, tokens.Length), result);
    }

    /// <summary>
    /// Takes one pin off each pinned chunk of <paramref name="tokens"/> in the memory tier (<see cref="PinPrefixAsync"/>);
    /// a chunk whose last pin goes is evictable again. Throws <see cref="InvalidOperationException"/> without a memory tier.
    /// </summary>
    public PrefixPinResult UnpinPrefix(ReadOnlySpan<int> tokens, CacheNamespace? ns = null)
    {
        var memory = Storage.Memory ?? throw new InvalidOperationException("there is no memory tier to pin in (local_cpu: false)");
        var keys = ComputeKeys(tokens, ns);
        var result = memory.Unpin(keys);
        return new PrefixPinResult(tokens.Length, keys.Length, PinnedTokens(memory, keys, tokens.Length), result);
    }

    // Leading tokens whose chunks are pinned now.
    private int PinnedTokens(MemoryTier memory, ReadOnlySpan<ChunkHash> keys, int promptTokens)
    {
        var n = 0;
        while (n < keys.Length && memory.PinCount(keys[n]) > 0)
        {
            n++;
        }

        return Math.Min(n * ChunkSize, promptTokens);
    }
}
