using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace LMCacheSharp.Core.Keys;

/// <summary>
/// A 256-bit chunk key: SHA-256 over the previous chunk's hash and this chunk's tokens (see <see cref="PrefixHasher"/>).
/// It identifies the KV of a whole token prefix under one <see cref="CacheNamespace"/>.
/// </summary>
[StructLayout(LayoutKind.Sequential)]
public readonly struct ChunkHash : IEquatable<ChunkHash>
{
    /// <summary>Size of a chunk hash in bytes.</summary>
    public const int Size = 32;

    private readonly ulong _a;
    private readonly ulong _b;
    private readonly ulong _c;
    private readonly ulong _d;

    /// <summary>Creates a hash from its 32 bytes (big-endian words, so <see cref="ToString"/> matches the byte order).</summary>
    public ChunkHash(ReadOnlySpan<byte> bytes)
    {
        if (bytes.Length != Size)
        {
            throw new ArgumentException($"A chunk hash is {Size} bytes, got {bytes.Length}.", nameof(bytes));
        }

        _a = BinaryPrimitives.ReadUInt64BigEndian(bytes);
        _b = BinaryPrimitives.ReadUInt64BigEndian(bytes[8..]);
        _c = BinaryPrimitives.ReadUInt64BigEndian(bytes[16..]);
        _d = BinaryPrimitives.ReadUInt64BigEndian(bytes[24..]);
    }

    /// <summary>Writes the 32 bytes of the hash into <paramref name="destination"/>.</summary>
    public void WriteTo(Span<byte> destination)
    {
        if (destination.Length < Size)
        {
            throw new ArgumentException($"Need {Size} bytes.", nameof(destination));
        }

        BinaryPrimitives.WriteUInt64BigEndian(destination, _a);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], _b);
        BinaryPrimitives.WriteUInt64BigEndian(destination[16..], _c);
        BinaryPrimitives.WriteUInt64BigEndian(destination[24..], _d);
    }

    /// <summary>
    /// The first 8 bytes of the hash as a big-endian signed integer: the block hash of KV events (vLLM's format carries
    /// 64-bit integers). Its hex form (two's complement) is the first 16 characters of <see cref="ToString"/>.
    /// </summary>
    public long ToInt64() => unchecked((long)_a);

    /// <summary>True for the all-zero value, which no real chunk has.</summary>
    public bool IsEmpty => (_a | _b | _c | _d) == 0;

    /// <summary>Parses 64 hex characters.</summary>
    public static ChunkHash Parse(string hex)
    {
        ArgumentNullException.ThrowIfNull(hex);
        return new ChunkHash(Convert.FromHexString(hex));
    }

    /// <summary>Lower-case hex, 64 characters.</summary>
    public override string ToString()
    {
        Span<byte> bytes = stackalloc byte[Size];
        WriteTo(bytes);
        return Convert.ToHexStringLower(bytes);
    }

    /// <inheritdoc />
    public bool Equals(ChunkHash other) => _a == other._a && _b == other._b && _c == other._c && _d == other._d;

    /// <inheritdoc />
    public override bool Equals(object? obj) => obj is ChunkHash other && Equals(other);

    /// <summary>
    /// A hash code seeded per process (<see cref="HashCode"/>) over all 256 bits: the cache server keeps keys its clients
    /// choose in dictionaries, and an unseeded hash of a few bits would let a client craft keys that all collide. Differs
    /// from process to process: never persist it or send it over the wire.
    /// </summary>
    public override int GetHashCode() => HashCode.Combine(_a, _b, _c, _d);

    /// <summary>Equality.</summary>
    public static bool operator ==(ChunkHash left, ChunkHash right) => left.Equals(right);

    /// <summary>Inequality.</summary>
    public static bool operator !=(ChunkHash left, ChunkHash right) => !left.Equals(right);
}
