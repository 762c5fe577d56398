using System.Buffers;
using LMCacheSharp.Core.Codecs;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Storage;

namespace LMCacheSharp.Remote;

/// <summary>
/// The cache server (<c>lm://host:port</c>) as a remote store: keys are the 32 bytes of the chunk hash, values are chunk
/// envelopes. A prompt's prefix lookup is one EXISTS-PREFIX round trip; a raw-codec GET lands straight in a pooled chunk.
/// </summary>
public sealed class LmRemoteConnector : IRemoteConnector
{
    private readonly CacheClient _client;
    private readonly IKvCodec _codec;
    private readonly KvBufferPool _pool;

    /// <summary>Creates the connector over a client it owns.</summary>
    public LmRemoteConnector(CacheClient client, IKvCodec codec, KvBufferPool pool)
    {
        ArgumentNullException.ThrowIfNull(client);
        ArgumentNullException.ThrowIfNull(codec);
        ArgumentNullException.ThrowIfNull(pool);
        _client = client;
        _codec = codec;
        _pool = pool;
    }

    /// <inheritdoc />
    public string Name => "lm";

    /// <summary>The client.</summary>
    public CacheClient Client => _client;

    /// <inheritdoc />
    public async Task<int> CountPrefixAsync(ReadOnlyMemory<ChunkHash> keys, CancellationToken cancellationToken)
    {
        var max = _client.Options.Limits.MaxKeysPerRequest;
        var found = 0;
        var packed = ArrayPool<byte>.Shared.Rent(Math.Min(keys.Length, max) * ChunkHash.Size);
        try
        {
            while (found < keys.Length)
            {
                var batch = keys.Slice(found, Math.Min(max, keys.Length - found));
                for (var i = 0; i < batch.Length; i++)
                {
                    batch.Span[i].WriteTo(packed.AsSpan(i * ChunkHash.Size));
                }

                var n = await _client.ExistsPrefixAsync(packed.AsMemory(0, batch.Length * ChunkHash.Size), ChunkHash.Size, cancellationToken)
                    .ConfigureAwait(false);
                found += n;
                if (n < batch.Length)
                {
                    break;
                }
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(packed);
        }

        return found;
    }

    /// <inheritdoc />
    public Task<RemoteRead> GetAsync(ChunkHash key, CancellationToken cancellationToken) =>
        _client.SendAsync(ChunkWire.KeyBytes(key), new EnvelopeHandler(key, _pool), cancellationToken);

    /// <inheritdoc />
    public async Task<bool> PutAsync(KvChunk chunk, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(chunk);
        using var serialized = SerializedChunk.Create(chunk, _codec);
        // A salted chunk goes into its salt's quota group (an id of the salt, never the salt itself).
        var group = chunk.QuotaGroup is { } id ? System.Text.Encoding.ASCII.GetBytes(id) : default(ReadOnlyMemory<byte>);
        return await _client.PutAsync(ChunkWire.KeyBytes(chunk.Key), serialized.Bytes, group, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>The cache server pins (PIN, UNPIN).</summary>
    public bool CanPin => true;

    /// <inheritdoc />
    public Task<TierPinOutcome> PinAsync(ReadOnlyMemory<ChunkHash> keys, CancellationToken cancellationToken) => PinOrUnpinAsync(keys, pin: true, cancellationToken);

    /// <inheritdoc />
    public Task<TierPinOutcome> UnpinAsync(ReadOnlyMemory<ChunkHash> keys, CancellationToken cancellationToken) => PinOrUnpinAsync(keys, pin: false, cancellationToken);

    private async Task<TierPinOutcome> PinOrUnpinAsync(ReadOnlyMemory<ChunkHash> keys, bool pin, CancellationToken cancellationToken)
    {
        var max = _client.Options.Limits.MaxKeysPerRequest;
        if (keys.Length > max)
        {
            // One request, so that a pin stays all or nothing.
            return new TierPinOutcome(TierPinStatus.OverLimit, 0, $"{keys.Length} chunks: at most {max} can be pinned at once");
        }

        var packed = ArrayPool<byte>.Shared.Rent(Math.Max(keys.Length, 1) * ChunkHash.Size);
        try
        {
            for (var i = 0; i < keys.Length; i++)
            {
                keys.Span[i].WriteTo(packed.AsSpan(i * ChunkHash.Size));
            }

            var bytes = packed.AsMemory(0, keys.Length * ChunkHash.Size);
            var n = pin
                ? await _client.PinAsync(bytes, ChunkHash.Size, cancellationToken).ConfigureAwait(false)
                : await _client.UnpinAsync(bytes, ChunkHash.Size, cancellationToken).ConfigureAwait(false);
            return new TierPinOutcome(TierPinStatus.Ok, n);
        }
        catch (CacheServerException e) when (e.Status == Protocol.StatusCode.TooLarge)
        {
            return new TierPinOutcome(TierPinStatus.OverLimit, 0, "the cache server refused: " + e.Message);
        }
        catch (CacheServerException e) when (e.Status == Protocol.StatusCode.UnknownOpcode)
        {
            return new TierPinOutcome(TierPinStatus.Unsupported, 0, "the cache server does not know PIN (an older version): upgrade it to pin there");
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(packed);
        }
    }

    /// <summary>The cache server keeps a child index (LINK, CHILDREN).</summary>
    public bool HasChildIndex => true;

    /// <inheritdoc />
    public Task LinkAsync(ChunkHash key, ChunkLineage lineage, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(lineage);
        return _client.LinkAsync(ChunkWire.KeyBytes(key), ChunkWire.KeyBytes(lineage.Parent), lineage.Tokens, cancellationToken);
    }

    /// <inheritdoc />
    public async Task<IReadOnlyList<StoredChild>> FindChildrenAsync(ChunkHash parent, ReadOnlyMemory<int> next, int max, CancellationToken cancellationToken)
    {
        max = Math.Min(max, _client.Options.Limits.MaxChildrenPerLookup);
        next = next[..Math.Min(next.Length, _client.Options.Limits.MaxLinkTokens)];
        var children = await _client.ChildrenAsync(ChunkWire.KeyBytes(parent), next, max, cancellationToken).ConfigureAwait(false);
        var result = new List<StoredChild>(children.Count);
        foreach (var (key, tokens) in children)
        {
            if (key.Length == ChunkHash.Size)
            {
                result.Add(new StoredChild(new ChunkHash(key), tokens));
            }
        }

        return result;
    }

    /// <inheritdoc />
    public Task<bool> RemoveAsync(ChunkHash key, CancellationToken cancellationToken) => _client.DeleteAsync(ChunkWire.KeyBytes(key), cancellationToken);

    /// <inheritdoc />
    public Task ClearAsync(CancellationToken cancellationToken) => _client.ClearAsync(cancellationToken);

    /// <summary>Closes the client's connections (requests in flight on them fail); the next call opens a fresh one.</summary>
    public void ResetConnections() => _client.ResetConnections();

    /// <inheritdoc />
    public ValueTask DisposeAsync() => _client.DisposeAsync();
}
