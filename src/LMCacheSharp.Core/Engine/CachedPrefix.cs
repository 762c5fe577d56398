using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Core.Engine;

/// <summary>
/// The leading cached chunks of a prompt, found by <see cref="CacheEngine.PinAsync"/> and held in memory (one reference
/// each) until <see cref="Dispose"/>: an eviction from the memory tier in between cannot take them away, and
/// <see cref="CacheEngine.Restore"/> writes them into the engine without touching any tier. Dispose it once restored, or
/// when the request is dropped. Not thread-safe.
/// </summary>
public sealed class CachedPrefix : IDisposable
{
    private KvChunk[] _chunks;
    private int _count;

    internal CachedPrefix(CacheNamespace ns, ReadOnlyMemory<int> lookedUp, ChunkHash[] keys, KvChunk[] chunks, int count, int tokens)
    {
        Namespace = ns;
        LookedUp = lookedUp;
        PromptTokens = lookedUp.Length;
        Keys = keys;
        _chunks = chunks;
        _count = count;
        Tokens = tokens;
    }

    /// <summary>An empty prefix (nothing cached, nothing to look for).</summary>
    public static CachedPrefix Empty(CacheNamespace ns) => new(ns, ReadOnlyMemory<int>.Empty, [], [], 0, 0);

    /// <summary>The tokens that were looked up.</summary>
    internal ReadOnlyMemory<int> LookedUp { get; }

    /// <summary>
    /// A stored chunk that continues the whole-chunk run token-exactly (found through the <see cref="TailIndex"/>), or
    /// null. Only its first <see cref="TailTokens"/> tokens are used: restore writes it whole and the engine's caller
    /// removes the cells past them.
    /// </summary>
    internal KvChunk? Tail { get; private set; }

    /// <summary>Tokens of <see cref="Tail"/> that match the request (0 without a tail).</summary>
    public int TailTokens { get; private set; }

    /// <summary>Tokens the tail chunk holds in all (its first <see cref="TailTokens"/> are used), or 0 without a tail.</summary>
    public int TailChunkTokens => Tail?.TokenCount ?? 0;

    /// <summary>Gives up the token-exact tail (the whole-chunk run stays pinned): the caller recomputes those tokens instead.</summary>
    public void DropTail()
    {
        SetTail(null, 0);
        TailDeclined = true;
    }

    /// <summary>Whether the caller gave up the tail (<see cref="DropTail"/>): the engine does not look for one again.</summary>
    internal bool TailDeclined { get; private set; }

    /// <summary>Leading tokens the whole chunks of the run cover.</summary>
    public int RunTokens => Tokens - TailTokens;

    /// <summary>The keys of every chunk of the looked-up tokens (the pinned ones first).</summary>
    internal ChunkHash[] Keys { get; }

    /// <summary>The namespace the chunks were found under.</summary>
    public CacheNamespace Namespace { get; }

    /// <summary>Length of the token sequence that was looked up.</summary>
    public int PromptTokens { get; }

    /// <summary>Leading tokens whose KV the pinned chunks hold (0 once disposed).</summary>
    public int Tokens { get; private set; }

    /// <summary>
    /// Of the leading tokens of the whole-chunk run, those whose chunks <see cref="CacheEngine.PinAsync"/> fetched from a tier
    /// below memory (disk or remote) rather than found in memory: what a request gained from the lower tiers. The token-exact
    /// tail and chunks pinned later from memory (<see cref="CacheEngine.ExtendInMemory"/>) are not counted.
    /// </summary>
    public int LowerTierTokens { get; internal set; }

    /// <summary>Chunks pinned.</summary>
    public int ChunkCount => _count;

    internal ReadOnlySpan<KvChunk> Chunks => _chunks.AsSpan(0, _count);

    /// <summary>Pins one more chunk (the next key's), found in memory after the lookup. Drops the tail, which no longer fits.</summary>
    internal void Append(KvChunk chunk, int runTokens)
    {
        SetTail(null, 0);
        if (_count == _chunks.Length)
        {
            Array.Resize(ref _chunks, Math.Max(4, _chunks.Length * 2));
        }

        _chunks[_count++] = chunk;
        Tokens = runTokens;
    }

    /// <summary>Pins <paramref name="tail"/> (the prefix takes over the caller's reference) for its first <paramref name="tokens"/> tokens; null drops it.</summary>
    internal void SetTail(KvChunk? tail, int tokens)
    {
        Tail?.Release();
        Tokens -= TailTokens;
        Tail = tail;
        TailTokens = tail is null ? 0 : tokens;
        Tokens += TailTokens;
    }

    /// <summary>Releases the pinned chunks. Idempotent.</summary>
    public void Dispose()
    {
        for (var i = 0; i < _count; i++)
        {
            _chunks[i].Release();
        }

        SetTail(null, 0);
        _count = 0;
        Tokens = 0;
        _chunks = [];
    }
}
