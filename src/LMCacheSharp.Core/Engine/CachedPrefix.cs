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

    internal CachedPrefix(CacheNamespace ns, int promptTokens, ChunkHash[] keys, KvChunk[] chunks, int count, int tokens)
    {
        Namespace = ns;
        PromptTokens = promptTokens;
        Keys = keys;
        _chunks = chunks;
        _count = count;
        Tokens = tokens;
    }

    /// <summary>An empty prefix (nothing cached, nothing to look for).</summary>
    public static CachedPrefix Empty(CacheNamespace ns) => new(ns, 0, [], [], 0, 0);

    /// <summary>The keys of every chunk of the looked-up tokens (the pinned ones first).</summary>
    internal ChunkHash[] Keys { get; }

    /// <summary>The namespace the chunks were found under.</summary>
    public CacheNamespace Namespace { get; }

    /// <summary>Length of the token sequence that was looked up.</summary>
    public int PromptTokens { get; }

    /// <summary>Leading tokens whose KV the pinned chunks hold (0 once disposed).</summary>
    public int Tokens { get; private set; }

    /// <summary>Chunks pinned.</summary>
    public int ChunkCount => _count;

    internal ReadOnlySpan<KvChunk> Chunks => _chunks.AsSpan(0, _count);

    /// <summary>Pins one more chunk (the next key's), found in memory after the lookup.</summary>
    internal void Append(KvChunk chunk, int tokens)
    {
        if (_count == _chunks.Length)
        {
            Array.Resize(ref _chunks, Math.Max(4, _chunks.Length * 2));
        }

        _chunks[_count++] = chunk;
        Tokens = tokens;
    }

    /// <summary>Releases the pinned chunks. Idempotent.</summary>
    public void Dispose()
    {
        for (var i = 0; i < _count; i++)
        {
            _chunks[i].Release();
        }

        _count = 0;
        Tokens = 0;
        _chunks = [];
    }
}
