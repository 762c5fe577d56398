using System.Buffers.Binary;
using System.IO.Hashing;
using LMCacheSharp.Core.Keys;

namespace LMCacheSharp.Core.Kv;

/// <summary>
/// Where a chunk sits in its prompt: the key of the chunk before it (or the namespace seed for a first chunk) and its own
/// token ids. The tail index of token-exact reuse is built from these; the disk tier persists them in each file's header
/// block so that a restarted process finds its partial chunks again.
/// <code>
///   0 u32 magic "LMLN"   4 u32 token count   8 32-byte parent key   40 count x i32 tokens   then u64 XxHash3 of all before
/// </code>
/// </summary>
/// <param name="Parent">The previous chunk's key, or the namespace seed.</param>
/// <param name="Tokens">The chunk's token ids.</param>
public sealed record ChunkLineage(ChunkHash Parent, int[] Tokens)
{
    /// <summary>The magic, "LMLN" in little-endian.</summary>
    public const uint Magic = 0x4E4C4D4C;

    /// <summary>Bytes the serialized form takes for <paramref name="tokens"/> tokens.</summary>
    public static int SerializedLength(int tokens) => 8 + ChunkHash.Size + (4 * tokens) + 8;

    /// <summary>Writes the lineage; false (nothing written) when <paramref name="destination"/> is too small.</summary>
    public bool TryWrite(Span<byte> destination)
    {
        var length = SerializedLength(Tokens.Length);
        if (destination.Length < length)
        {
            return false;
        }

        BinaryPrimitives.WriteUInt32LittleEndian(destination, Magic);
        BinaryPrimitives.WriteInt32LittleEndian(destination[4..], Tokens.Length);
        Parent.WriteTo(destination[8..]);
        for (var i = 0; i < Tokens.Length; i++)
        {
            BinaryPrimitives.WriteInt32LittleEndian(destination[(40 + (4 * i))..], Tokens[i]);
        }

        BinaryPrimitives.WriteUInt64LittleEndian(destination[(length - 8)..], XxHash3.HashToUInt64(destination[..(length - 8)]));
        return true;
    }

    /// <summary>Reads a lineage written by <see cref="TryWrite"/>; null for anything else (absent, torn, altered). Never throws.</summary>
    public static ChunkLineage? TryRead(ReadOnlySpan<byte> source, int expectedTokens)
    {
        if (source.Length < SerializedLength(0) || BinaryPrimitives.ReadUInt32LittleEndian(source) != Magic)
        {
            return null;
        }

        var count = BinaryPrimitives.ReadInt32LittleEndian(source[4..]);
        if (count != expectedTokens || count <= 0 || count > (source.Length - SerializedLength(0)) / 4)
        {
            return null;
        }

        var length = SerializedLength(count);
        if (BinaryPrimitives.ReadUInt64LittleEndian(source[(length - 8)..]) != XxHash3.HashToUInt64(source[..(length - 8)]))
        {
            return null;
        }

        var tokens = new int[count];
        for (var i = 0; i < count; i++)
        {
            tokens[i] = BinaryPrimitives.ReadInt32LittleEndian(source[(40 + (4 * i))..]);
        }

        return new ChunkLineage(new ChunkHash(source.Slice(8, ChunkHash.Size)), tokens);
    }
}
