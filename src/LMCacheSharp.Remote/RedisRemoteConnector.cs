using System.Buffers;
using System.Buffers.Binary;
using LMCacheSharp.Core.Codecs;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Storage;
using StackExchange.Redis;

namespace LMCacheSharp.Remote;

/// <summary>
/// Redis or Valkey (a single node or a cluster) as a remote store, through StackExchange.Redis: one string per chunk under
/// <c>prefix + 32 hash bytes</c>, the value a chunk envelope. A prefix lookup sends every EXISTS in one pipelined batch
/// (one round trip; in a cluster, one per node, in parallel). The multiplexer connects on first use and reconnects by itself.
/// Capacity and eviction are Redis's (<c>maxmemory</c>, <c>maxmemory-policy allkeys-lru</c>).
/// </summary>
public sealed class RedisRemoteConnector : IRemoteConnector
{
    private readonly ConfigurationOptions _configuration;
    private readonly byte[] _prefix;
    private readonly IKvCodec _codec;
    private readonly KvBufferPool _pool;
    private readonly SemaphoreSlim _connectLock = new(1, 1);
    private ConnectionMultiplexer? _connection;

    /// <summary>Creates the connector; nothing connects until the first call.</summary>
    /// <param name="configuration">StackExchange.Redis configuration (endpoints, password, TLS, timeouts).</param>
    /// <param name="keyPrefix">Bytes put before each 32-byte key (default "lmcache:").</param>
    /// <param name="codec">Codec of the stored envelopes.</param>
    /// <param name="pool">Where read chunks come from.</param>
    public RedisRemoteConnector(ConfigurationOptions configuration, ReadOnlySpan<byte> keyPrefix, IKvCodec codec, KvBufferPool pool)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        ArgumentNullException.ThrowIfNull(codec);
        ArgumentNullException.ThrowIfNull(pool);
        _configuration = configuration;
        _prefix = keyPrefix.ToArray();
        _codec = codec;
        _pool = pool;
    }

    /// <inheritdoc />
    public string Name => "redis";

    /// <inheritdoc />
    public async Task<int> CountPrefixAsync(ReadOnlyMemory<ChunkHash> keys, CancellationToken cancellationToken)
    {
        if (keys.IsEmpty)
        {
            return 0;
        }

        var db = (await ConnectAsync(cancellationToken).ConfigureAwait(false)).GetDatabase();
        var batch = db.CreateBatch();
        var exists = new Task<bool>[keys.Length];
        for (var i = 0; i < exists.Length; i++)
        {
            exists[i] = batch.KeyExistsAsync(Key(keys.Span[i]));
        }

        batch.Execute();
        await Task.WhenAll(exists).WaitAsync(cancellationToken).ConfigureAwait(false);
        var found = 0;
        while (found < exists.Length && exists[found].Result)
        {
            found++;
        }

        return found;
    }

    /// <inheritdoc />
    public async Task<RemoteRead> GetAsync(ChunkHash key, CancellationToken cancellationToken)
    {
        var db = (await ConnectAsync(cancellationToken).ConfigureAwait(false)).GetDatabase();
        var read = db.StringGetLeaseAsync(Key(key));
        try
        {
            using var lease = await read.WaitAsync(cancellationToken).ConfigureAwait(false);
            return lease is null ? RemoteRead.Miss : ChunkWire.Read(lease.Span, key, _pool);
        }
        catch (OperationCanceledException)
        {
            // Abandoned: the lease (a pooled buffer) that arrives later goes back to its pool, not to the GC.
            _ = read.ContinueWith(static t => t.Result?.Dispose(), CancellationToken.None, TaskContinuationOptions.OnlyOnRanToCompletion,
                TaskScheduler.Default);
            throw;
        }
    }

    /// <inheritdoc />
    public async Task<bool> PutAsync(KvChunk chunk, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(chunk);
        var db = (await ConnectAsync(cancellationToken).ConfigureAwait(false)).GetDatabase();
        var serialized = SerializedChunk.Create(chunk, _codec);
        byte[]? rented = null;
        Task<bool> send;
        try
        {
            var value = serialized.ToContiguous(out rented);
            send = db.StringSetAsync(Key(chunk.Key), value);
        }
        catch
        {
            Return(serialized, rented);
            throw;
        }

        // StackExchange.Redis holds the value's memory (no copy) until the command is written: the pooled arrays go back only
        // when Redis is done with the command, even when the caller stops waiting first (cancellation, the tier's timeout).
        _ = send.ContinueWith(static (_, state) =>
        {
            var (s, r) = ((SerializedChunk, byte[]?))state!;
            Return(s, r);
        }, (serialized, rented), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        return await send.WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Children per parent a Redis list keeps (the newest first; older ones are trimmed).</summary>
    public const int ChildrenPerParent = 64;

    /// <summary>A child index of Redis lists, one per parent (<c>{prefix}c:{parent}</c>), each entry the child's key and tokens.</summary>
    public bool HasChildIndex => true;

    /// <inheritdoc />
    public async Task LinkAsync(ChunkHash key, ChunkLineage lineage, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(lineage);
        var db = (await ConnectAsync(cancellationToken).ConfigureAwait(false)).GetDatabase();
        var entry = new byte[ChunkHash.Size + (4 * lineage.Tokens.Length)];
        key.WriteTo(entry);
        for (var i = 0; i < lineage.Tokens.Length; i++)
        {
            BinaryPrimitives.WriteInt32LittleEndian(entry.AsSpan(ChunkHash.Size + (4 * i)), lineage.Tokens[i]);
        }

        // One pipelined batch: drop an older copy of the entry, push it first, keep the newest ChildrenPerParent.
        var list = ChildrenKey(lineage.Parent);
        var batch = db.CreateBatch();
        var remove = batch.ListRemoveAsync(list, entry);
        var push = batch.ListLeftPushAsync(list, entry);
        var trim = batch.ListTrimAsync(list, 0, ChildrenPerParent - 1);
        batch.Execute();
        await Task.WhenAll(remove, push, trim).WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <inheritdoc />
    public async Task<IReadOnlyList<StoredChild>> FindChildrenAsync(ChunkHash parent, ReadOnlyMemory<int> next, int max, CancellationToken cancellationToken)
    {
        var db = (await ConnectAsync(cancellationToken).ConfigureAwait(false)).GetDatabase();
        var entries = await db.ListRangeAsync(ChildrenKey(parent), 0, ChildrenPerParent - 1).WaitAsync(cancellationToken).ConfigureAwait(false);
        var found = new List<(StoredChild Child, int Common)>();
        foreach (var entry in entries)
        {
            var bytes = (byte[]?)entry;
            if (bytes is null || bytes.Length <= ChunkHash.Size || (bytes.Length - ChunkHash.Size) % 4 != 0)
            {
                continue; // not an entry this connector wrote
            }

            var tokens = new int[(bytes.Length - ChunkHash.Size) / 4];
            for (var i = 0; i < tokens.Length; i++)
            {
                tokens[i] = BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(ChunkHash.Size + (4 * i)));
            }

            var common = next.Span.CommonPrefixLength(tokens);
            if (common > 0)
            {
                found.Add((new StoredChild(new ChunkHash(bytes.AsSpan(0, ChunkHash.Size)), tokens), common));
            }
        }

        found.Sort(static (a, b) => a.Common != b.Common ? b.Common.CompareTo(a.Common) : a.Child.Tokens.Length.CompareTo(b.Child.Tokens.Length));
        return [.. found.Take(max).Select(f => f.Child)];
    }

    /// <inheritdoc />
    public async Task<bool> RemoveAsync(ChunkHash key, CancellationToken cancellationToken)
    {
        var db = (await ConnectAsync(cancellationToken).ConfigureAwait(false)).GetDatabase();
        return await db.KeyDeleteAsync(Key(key)).WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Deletes every key under this connector's prefix, on every primary (SCAN, then DEL in batches).</summary>
    public async Task ClearAsync(CancellationToken cancellationToken)
    {
        var connection = await ConnectAsync(cancellationToken).ConfigureAwait(false);
        var db = connection.GetDatabase();
        RedisValue pattern = (byte[])[.. EscapeGlob(_prefix), (byte)'*'];
        foreach (var server in connection.GetServers())
        {
            if (!server.IsConnected || server.IsReplica)
            {
                continue;
            }

            var batch = new List<RedisKey>(256);
            await foreach (var key in server.KeysAsync(db.Database, pattern, pageSize: 256).WithCancellation(cancellationToken).ConfigureAwait(false))
            {
                batch.Add(key);
                if (batch.Count == 256)
                {
                    await DeleteAsync(db, batch).ConfigureAwait(false);
                }
            }

            await DeleteAsync(db, batch).ConfigureAwait(false);
        }
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        if (_connection is not null)
        {
            await _connection.DisposeAsync().ConfigureAwait(false);
        }

        _connectLock.Dispose();
    }

    private static void Return(SerializedChunk serialized, byte[]? rented)
    {
        serialized.Dispose();
        if (rented is not null)
        {
            ArrayPool<byte>.Shared.Return(rented);
        }
    }

    private static async Task DeleteAsync(IDatabase db, List<RedisKey> keys)
    {
        // One DEL per key: in a cluster the keys of a batch live in different slots.
        await Task.WhenAll(keys.Select(k => db.KeyDeleteAsync(k))).ConfigureAwait(false);
        keys.Clear();
    }

    private static byte[] EscapeGlob(byte[] prefix)
    {
        var escaped = new List<byte>(prefix.Length + 4);
        foreach (var b in prefix)
        {
            if (b is (byte)'*' or (byte)'?' or (byte)'[' or (byte)']' or (byte)'\\')
            {
                escaped.Add((byte)'\\');
            }

            escaped.Add(b);
        }

        return [.. escaped];
    }

    private RedisKey ChildrenKey(ChunkHash parent)
    {
        var key = new byte[_prefix.Length + 2 + ChunkHash.Size];
        _prefix.CopyTo(key, 0);
        key[_prefix.Length] = (byte)'c';
        key[_prefix.Length + 1] = (byte)':';
        parent.WriteTo(key.AsSpan(_prefix.Length + 2));
        return key;
    }

    private RedisKey Key(ChunkHash hash)
    {
        var key = new byte[_prefix.Length + ChunkHash.Size];
        _prefix.CopyTo(key, 0);
        hash.WriteTo(key.AsSpan(_prefix.Length));
        return key;
    }

    private async ValueTask<ConnectionMultiplexer> ConnectAsync(CancellationToken cancellationToken)
    {
        if (Volatile.Read(ref _connection) is { } existing)
        {
            return existing;
        }

        await _connectLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            // AbortOnConnectFail=false: the multiplexer comes back even while the server is down and keeps reconnecting.
            _connection ??= await ConnectionMultiplexer.ConnectAsync(_configuration).WaitAsync(cancellationToken).ConfigureAwait(false);
            return _connection;
        }
        finally
        {
            _connectLock.Release();
        }
    }
}
