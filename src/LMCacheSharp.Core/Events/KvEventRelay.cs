using System.Collections.Concurrent;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Metrics;

namespace LMCacheSharp.Core.Events;

/// <summary>
/// Between the tiers and the user's <see cref="IKvEventSink"/>: turns a first chunk's parent (its namespace seed, which
/// is no chunk) into null, and makes sure a misbehaving sink never throws into the cache path. The engine registers the
/// seed of every namespace it works under (<see cref="AddRoot"/>); a chunk read back from disk knows its parent hash but
/// not whether that is a seed, so the check is made here rather than carried on the chunk.
/// </summary>
internal sealed class KvEventRelay(IKvEventSink sink, CacheMetrics? metrics)
{
    // Namespaces are few (model x format x salt); the bound only stops an unbounded number of salts from growing it forever.
    // When full it starts again: a namespace in use is registered again by its next call.
    private const int MaxRoots = 65_536;
    private readonly ConcurrentDictionary<ChunkHash, byte> _roots = new();

    public void AddRoot(ChunkHash seed)
    {
        if (_roots.ContainsKey(seed))
        {
            return;
        }

        if (_roots.Count >= MaxRoots)
        {
            _roots.Clear();
        }

        _roots.TryAdd(seed, 0);
    }

    public void Stored(KvMedium medium, ChunkHash key, Kv.ChunkLineage? lineage)
    {
        ChunkHash? parent = lineage is null || _roots.ContainsKey(lineage.Parent) ? null : lineage.Parent;
        Publish(KvEvent.Stored(medium, key, parent, lineage?.Tokens));
    }

    public void Removed(KvMedium medium, ChunkHash key) => Publish(KvEvent.Removed(medium, key));

    public void AllCleared() => Publish(KvEvent.AllCleared());

    private void Publish(in KvEvent kvEvent)
    {
        try
        {
            sink.Publish(kvEvent);
        }
        catch (Exception)
        {
            metrics?.DroppedKvEvent(); // the sink broke its contract; the cache goes on
        }
    }
}
