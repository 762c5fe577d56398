using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Security.Cryptography;

namespace LMCacheSharp.Core.Keys;

/// <summary>
/// Cuts a token sequence into chunks and derives each chunk's key:
/// hash[i] = SHA-256(hash[i-1] || tokens of chunk i as little-endian int32), hash[-1] = the namespace seed.
/// The result depends only on the namespace and the tokens: the same in every process and on every machine.
/// </summary>
public static class PrefixHasher
{
    /// <summary>Largest chunk size accepted (tokens).</summary>
    public const int MaxChunkSize = 65536;

    private const int StackTokens = 2048;

    /// <summary>Number of chunks that <paramref name="tokenCount"/> tokens make.</summary>
    /// <param name="tokenCount">Tokens in the prompt.</param>
    /// <param name="chunkSize">Tokens per chunk.</param>
    /// <param name="includePartial">Whether a trailing partial chunk counts.</param>
    public static int ChunkCount(int tokenCount, int chunkSize, bool includePartial)
    {
        ValidateChunkSize(chunkSize);
        ArgumentOutOfRangeException.ThrowIfNegative(tokenCount);
        return includePartial ? (tokenCount + chunkSize - 1) / chunkSize : tokenCount / chunkSize;
    }

    /// <summary>
    /// Computes the keys of the chunks of <paramref name="tokens"/> into <paramref name="destination"/>; returns how many.
    /// Allocates nothing for chunk sizes up to 2048 tokens.
    /// </summary>
    public static int ComputeKeys(ChunkHash seed, ReadOnlySpan<int> tokens, int chunkSize, bool includePartial, Span<ChunkHash> destination)
    {
        var count = ChunkCount(tokens.Length, chunkSize, includePartial);
        if (destination.Length < count)
        {
            throw new ArgumentException($"Destination holds {destination.Length} keys, {count} needed.", nameof(destination));
        }

        var bufferLength = ChunkHash.Size + (Math.Min(chunkSize, tokens.Length) * sizeof(int));
        byte[]? rented = null;
        Span<byte> buffer = chunkSize <= StackTokens
            ? stackalloc byte[ChunkHash.Size + (StackTokens * sizeof(int))]
            : (rented = ArrayPool<byte>.Shared.Rent(bufferLength));
        Span<byte> digest = stackalloc byte[ChunkHash.Size];
        try
        {
            var previous = seed;
            for (var i = 0; i < count; i++)
            {
                var start = i * chunkSize;
                var chunk = tokens.Slice(start, Math.Min(chunkSize, tokens.Length - start));
                previous.WriteTo(buffer);
                var tokenBytes = buffer.Slice(ChunkHash.Size, chunk.Length * sizeof(int));
                if (BitConverter.IsLittleEndian)
                {
                    MemoryMarshal.AsBytes(chunk).CopyTo(tokenBytes);
                }
                else
                {
                    for (var t = 0; t < chunk.Length; t++)
                    {
                        BinaryPrimitives.WriteInt32LittleEndian(tokenBytes[(t * 4)..], chunk[t]);
                    }
                }

                SHA256.HashData(buffer[..(ChunkHash.Size + tokenBytes.Length)], digest);
                previous = new ChunkHash(digest);
                destination[i] = previous;
            }
        }
        finally
        {
            if (rented is not null)
            {
                ArrayPool<byte>.Shared.Return(rented);
            }
        }

        return count;
    }

    /// <summary>Computes the keys into a new array (convenience for tests and tools).</summary>
    public static ChunkHash[] ComputeKeys(CacheNamespace ns, ReadOnlySpan<int> tokens, int chunkSize, bool includePartial = false)
    {
        ArgumentNullException.ThrowIfNull(ns);
        var keys = new ChunkHash[ChunkCount(tokens.Length, chunkSize, includePartial)];
        ComputeKeys(ns.Seed, tokens, chunkSize, includePartial, keys);
        return keys;
    }

    private static void ValidateChunkSize(int chunkSize)
    {
        if (chunkSize is < 1 or > MaxChunkSize)
        {
            throw new ArgumentOutOfRangeException(nameof(chunkSize), chunkSize, $"chunk size must be 1..{MaxChunkSize} tokens");
        }
    }
}
