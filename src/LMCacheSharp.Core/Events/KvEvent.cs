using LMCacheSharp.Core.Keys;

namespace LMCacheSharp.Core.Events;

/// <summary>The tier a KV event is about (vLLM's <c>medium</c>).</summary>
public enum KvMedium
{
    /// <summary>The memory tier (chunks in this process's native memory).</summary>
    Cpu,
    /// <summary>The disk tier of this instance.</summary>
    Disk,
    /// <summary>The remote tier (a shared cache server or Redis): stores this instance made there.</summary>
    Remote,
}

/// <summary>What happened to a chunk.</summary>
public enum KvEventKind
{
    /// <summary>A chunk was newly stored in a tier (a refresh of a chunk the tier held already is not an event).</summary>
    Stored,
    /// <summary>A chunk left a tier: evicted, removed, dropped as corrupt, or the tier was cleared.</summary>
    Removed,
    /// <summary>Every tier of the instance was cleared (<see cref="Storage.StorageManager.ClearAsync"/>).</summary>
    AllCleared,
}

/// <summary>
/// One change to what an instance holds. Raised by the tiers on the cache path: a plain value, no allocation beyond what
/// the chunk already carries (<see cref="Tokens"/> is the chunk's own <see cref="Kv.ChunkLineage.Tokens"/> array, shared
/// and never written).
/// </summary>
/// <param name="Kind">What happened.</param>
/// <param name="Medium">Which tier (meaningless for <see cref="KvEventKind.AllCleared"/>).</param>
/// <param name="Key">The chunk (default for <see cref="KvEventKind.AllCleared"/>).</param>
/// <param name="Parent">For a store: the previous chunk of its prompt, or null when it is the first chunk or its place is
/// unknown (see <see cref="Tokens"/>).</param>
/// <param name="Tokens">For a store: the chunk's token ids, or null when unknown (a chunk fetched from a remote store
/// carries no lineage). Never written by anyone.</param>
public readonly record struct KvEvent(KvEventKind Kind, KvMedium Medium, ChunkHash Key, ChunkHash? Parent = null, int[]? Tokens = null)
{
    /// <summary>A store of <paramref name="key"/> in <paramref name="medium"/>.</summary>
    public static KvEvent Stored(KvMedium medium, ChunkHash key, ChunkHash? parent, int[]? tokens) => new(KvEventKind.Stored, medium, key, parent, tokens);

    /// <summary>A removal of <paramref name="key"/> from <paramref name="medium"/>.</summary>
    public static KvEvent Removed(KvMedium medium, ChunkHash key) => new(KvEventKind.Removed, medium, key);

    /// <summary>Every tier cleared.</summary>
    public static KvEvent AllCleared() => new(KvEventKind.AllCleared, KvMedium.Cpu, default);
}

/// <summary>
/// Receives the KV events of an instance's tiers. <see cref="Publish"/> is called on the cache path, at times under a
/// tier's lock (so that events come in the order the tier changed): it must return at once, never block, never call
/// back into the cache and never throw (an exception is caught and counted as a dropped event). <see cref="KvEventQueue"/>
/// is the bounded implementation to hand to the cache; consumers read from it on their own thread.
/// </summary>
public interface IKvEventSink
{
    /// <summary>Takes one event (see the interface's rules).</summary>
    void Publish(in KvEvent kvEvent);
}
