using System.Collections.Concurrent;
using LMCacheSharp.Core.Codecs;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Storage;

namespace LMCacheSharp.LlamaCpp.Tests;

/// <summary>
/// A minimal disk tier for tests: one <see cref="ChunkEnvelope"/> file per chunk in a folder, so KV stored by one
/// process can be read by another, and files can be corrupted on purpose. Counts why reads were refused.
/// </summary>
internal sealed class DirectoryTier(string directory, KvBufferPool pool) : IStorageTier
{
    public ConcurrentDictionary<ChunkReadStatus, int> Refused { get; } = new();

    public string Name => "testdir";

    public StorageTierKind Kind => StorageTierKind.Disk;

    public string PathOf(ChunkHash key) => Path.Combine(directory, key + ".kv");

    public ValueTask<int> CountPrefixAsync(ReadOnlyMemory<ChunkHash> keys, CancellationToken cancellationToken = default)
    {
        var n = 0;
        while (n < keys.Length && File.Exists(PathOf(keys.Span[n])))
        {
            n++;
        }

        return ValueTask.FromResult(n);
    }

    public ValueTask<KvChunk?> GetAsync(ChunkHash key, CancellationToken cancellationToken = default)
    {
        var path = PathOf(key);
        if (!File.Exists(path))
        {
            return ValueTask.FromResult<KvChunk?>(null);
        }

        var status = ChunkEnvelope.TryDeserialize(File.ReadAllBytes(path), key, null, pool, out var chunk);
        if (status != ChunkReadStatus.Ok)
        {
            Refused.AddOrUpdate(status, 1, (_, n) => n + 1);
            return ValueTask.FromResult<KvChunk?>(null);
        }

        return ValueTask.FromResult(chunk);
    }

    public ValueTask<bool> PutAsync(KvChunk chunk, CancellationToken cancellationToken = default)
    {
        Directory.CreateDirectory(directory);
        var bytes = new byte[ChunkEnvelope.MaxSerializedLength(chunk, RawCodec.Instance)];
        var n = ChunkEnvelope.Serialize(chunk, RawCodec.Instance, bytes);
        var path = PathOf(chunk.Key);
        File.WriteAllBytes(path + ".tmp", bytes.AsSpan(0, n).ToArray());
        File.Move(path + ".tmp", path, overwrite: true);
        return ValueTask.FromResult(true);
    }

    public ValueTask<bool> RemoveAsync(ChunkHash key, CancellationToken cancellationToken = default)
    {
        var path = PathOf(key);
        var existed = File.Exists(path);
        File.Delete(path);
        return ValueTask.FromResult(existed);
    }

    public ValueTask ClearAsync(CancellationToken cancellationToken = default)
    {
        foreach (var f in Directory.EnumerateFiles(directory, "*.kv"))
        {
            File.Delete(f);
        }

        return ValueTask.CompletedTask;
    }

    public StorageTierStats GetStats() => new(Directory.Exists(directory) ? Directory.GetFiles(directory, "*.kv").Length : 0, 0, -1);

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
