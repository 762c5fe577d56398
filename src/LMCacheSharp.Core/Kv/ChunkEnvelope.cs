using System.Buffers.Binary;
using System.IO.Hashing;
using LMCacheSharp.Core.Codecs;
using LMCacheSharp.Core.Keys;

namespace LMCacheSharp.Core.Kv;

/// <summary>Why a serialized chunk was not accepted. Every value but <see cref="Ok"/> is a cache miss, never wrong KV.</summary>
public enum ChunkReadStatus
{
    /// <summary>Accepted.</summary>
    Ok,
    /// <summary>Fewer bytes than the header or the payload it announces.</summary>
    Truncated,
    /// <summary>Not a chunk envelope.</summary>
    BadMagic,
    /// <summary>A format version this build does not read.</summary>
    UnsupportedVersion,
    /// <summary>The header's own checksum does not match.</summary>
    HeaderCorrupt,
    /// <summary>The envelope holds another key than the one asked for.</summary>
    KeyMismatch,
    /// <summary>The KV format differs from the one expected.</summary>
    FormatMismatch,
    /// <summary>Lengths are inconsistent or over the limit.</summary>
    LengthMismatch,
    /// <summary>The payload checksum does not match.</summary>
    ChecksumMismatch,
    /// <summary>The codec is unknown to this build.</summary>
    UnknownCodec,
    /// <summary>The codec could not decode the payload.</summary>
    DecodeFailed,
}

/// <summary>The fields of a serialized chunk's header.</summary>
public readonly record struct ChunkEnvelopeHeader(
    KvCodecId Codec,
    KvFormat Format,
    int TokenCount,
    int RawLength,
    int EncodedLength,
    ulong RawChecksum,
    ulong EncodedChecksum,
    ChunkHash Key);

/// <summary>
/// The serialized form of a chunk, shared by the disk and remote tiers: a 128-byte little-endian header, then the payload
/// as the codec encoded it.
/// <code>
///   0 u32 magic "LMKV"      4 u16 version (1)     6 u16 header size (128)
///   8 u8 codec  9 u8 layout  10 u8 dtype  11 u8 flags (0)
///  12 u32 layers  16 u32 tokens  20 u32 K bytes/token/layer  24 u32 V bytes/token/layer  28 u32 reserved (0)
///  32 u64 raw length  40 u64 encoded length  48 u64 XxHash3(raw payload)  56 u64 XxHash3(encoded payload)
///  64 32-byte key  96..119 reserved (0)  120 u64 XxHash3(header bytes 0..119)
/// </code>
/// </summary>
public static class ChunkEnvelope
{
    /// <summary>Header size in bytes.</summary>
    public const int HeaderSize = 128;

    /// <summary>The magic, "LMKV" in little-endian.</summary>
    public const uint Magic = 0x564B4D4C;

    /// <summary>Current envelope version.</summary>
    public const ushort Version = 1;

    /// <summary>Largest raw payload accepted when reading (1 GiB).</summary>
    public const int MaxPayloadLength = 1 << 30;

    /// <summary>Bytes needed to serialize <paramref name="chunk"/> with <paramref name="codec"/>.</summary>
    public static int MaxSerializedLength(KvChunk chunk, IKvCodec codec)
    {
        ArgumentNullException.ThrowIfNull(chunk);
        ArgumentNullException.ThrowIfNull(codec);
        return HeaderSize + codec.MaxEncodedLength(chunk.Length, chunk.Format);
    }

    /// <summary>Writes header and encoded payload; returns the bytes written.</summary>
    public static int Serialize(KvChunk chunk, IKvCodec codec, Span<byte> destination)
    {
        ArgumentNullException.ThrowIfNull(chunk);
        ArgumentNullException.ThrowIfNull(codec);
        var raw = chunk.Span;
        var encodedLength = codec.Encode(raw, chunk.Format, destination[HeaderSize..]);
        var encoded = destination.Slice(HeaderSize, encodedLength);
        var encodedChecksum = codec.Id == KvCodecId.Raw ? chunk.Checksum : XxHash3.HashToUInt64(encoded);
        var header = new ChunkEnvelopeHeader(codec.Id, chunk.Format, chunk.TokenCount, raw.Length, encodedLength,
            chunk.Checksum, encodedChecksum, chunk.Key);
        WriteHeader(header, destination);
        return HeaderSize + encodedLength;
    }

    /// <summary>Writes a header (used by <see cref="Serialize"/> and by writers that encode elsewhere).</summary>
    public static void WriteHeader(in ChunkEnvelopeHeader header, Span<byte> destination)
    {
        var h = destination[..HeaderSize];
        h.Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(h, Magic);
        BinaryPrimitives.WriteUInt16LittleEndian(h[4..], Version);
        BinaryPrimitives.WriteUInt16LittleEndian(h[6..], HeaderSize);
        h[8] = (byte)header.Codec;
        h[9] = (byte)header.Format.Layout;
        h[10] = (byte)header.Format.DataType;
        BinaryPrimitives.WriteUInt32LittleEndian(h[12..], (uint)header.Format.Layers);
        BinaryPrimitives.WriteUInt32LittleEndian(h[16..], (uint)header.TokenCount);
        BinaryPrimitives.WriteUInt32LittleEndian(h[20..], (uint)header.Format.KBytesPerToken);
        BinaryPrimitives.WriteUInt32LittleEndian(h[24..], (uint)header.Format.VBytesPerToken);
        BinaryPrimitives.WriteUInt64LittleEndian(h[32..], (ulong)header.RawLength);
        BinaryPrimitives.WriteUInt64LittleEndian(h[40..], (ulong)header.EncodedLength);
        BinaryPrimitives.WriteUInt64LittleEndian(h[48..], header.RawChecksum);
        BinaryPrimitives.WriteUInt64LittleEndian(h[56..], header.EncodedChecksum);
        header.Key.WriteTo(h[64..]);
        BinaryPrimitives.WriteUInt64LittleEndian(h[120..], XxHash3.HashToUInt64(h[..120]));
    }

    /// <summary>Parses and checks a header (magic, version, header checksum, lengths). Never throws for bad input.</summary>
    public static ChunkReadStatus TryReadHeader(ReadOnlySpan<byte> source, out ChunkEnvelopeHeader header)
    {
        header = default;
        if (source.Length < HeaderSize)
        {
            return ChunkReadStatus.Truncated;
        }

        var h = source[..HeaderSize];
        if (BinaryPrimitives.ReadUInt32LittleEndian(h) != Magic)
        {
            return ChunkReadStatus.BadMagic;
        }

        if (BinaryPrimitives.ReadUInt16LittleEndian(h[4..]) != Version || BinaryPrimitives.ReadUInt16LittleEndian(h[6..]) != HeaderSize)
        {
            return ChunkReadStatus.UnsupportedVersion;
        }

        if (BinaryPrimitives.ReadUInt64LittleEndian(h[120..]) != XxHash3.HashToUInt64(h[..120]))
        {
            return ChunkReadStatus.HeaderCorrupt;
        }

        var layers = BinaryPrimitives.ReadUInt32LittleEndian(h[12..]);
        var tokens = BinaryPrimitives.ReadUInt32LittleEndian(h[16..]);
        var kBytes = BinaryPrimitives.ReadUInt32LittleEndian(h[20..]);
        var vBytes = BinaryPrimitives.ReadUInt32LittleEndian(h[24..]);
        var rawLength = BinaryPrimitives.ReadUInt64LittleEndian(h[32..]);
        var encodedLength = BinaryPrimitives.ReadUInt64LittleEndian(h[40..]);
        if (layers is 0 or > 4096 || kBytes is 0 or > int.MaxValue || vBytes is 0 or > int.MaxValue || tokens > int.MaxValue ||
            rawLength > MaxPayloadLength || encodedLength > MaxPayloadLength)
        {
            return ChunkReadStatus.LengthMismatch;
        }

        var format = new KvFormat((int)layers, (int)kBytes, (int)vBytes, (KvDataType)h[10], (KvLayout)h[9]);
        if ((ulong)format.PayloadLength((int)tokens) != rawLength)
        {
            return ChunkReadStatus.LengthMismatch;
        }

        var rawChecksum = BinaryPrimitives.ReadUInt64LittleEndian(h[48..]);
        var encodedChecksum = BinaryPrimitives.ReadUInt64LittleEndian(h[56..]);
        if ((KvCodecId)h[8] == KvCodecId.Raw && (encodedLength != rawLength || encodedChecksum != rawChecksum))
        {
            // Raw payloads are stored as they are: both lengths and both checksums describe the same bytes.
            return ChunkReadStatus.LengthMismatch;
        }

        header = new ChunkEnvelopeHeader((KvCodecId)h[8], format, (int)tokens, (int)rawLength, (int)encodedLength, rawChecksum, encodedChecksum,
            new ChunkHash(h.Slice(64, 32)));
        return ChunkReadStatus.Ok;
    }

    /// <summary>
    /// Checks and decodes a whole serialized chunk into a chunk rented from <paramref name="pool"/>. On anything but
    /// <see cref="ChunkReadStatus.Ok"/> no chunk is returned and nothing is rented. Never throws for bad input.
    /// </summary>
    /// <param name="source">Header and payload, exactly.</param>
    /// <param name="expectedKey">The key that was asked for.</param>
    /// <param name="expectedFormat">The format the engine uses, or null to accept any.</param>
    /// <param name="pool">Where the decoded chunk's buffer comes from.</param>
    /// <param name="chunk">The decoded chunk, holding one reference for the caller.</param>
    public static ChunkReadStatus TryDeserialize(ReadOnlySpan<byte> source, ChunkHash expectedKey, KvFormat? expectedFormat,
        KvBufferPool pool, out KvChunk? chunk)
    {
        ArgumentNullException.ThrowIfNull(pool);
        chunk = null;
        var status = TryReadHeader(source, out var header);
        if (status != ChunkReadStatus.Ok)
        {
            return status;
        }

        if (header.Key != expectedKey)
        {
            return ChunkReadStatus.KeyMismatch;
        }

        if (expectedFormat is { } expected && expected != header.Format)
        {
            return ChunkReadStatus.FormatMismatch;
        }

        if (source.Length - HeaderSize < header.EncodedLength)
        {
            return ChunkReadStatus.Truncated;
        }

        if (source.Length - HeaderSize != header.EncodedLength)
        {
            return ChunkReadStatus.LengthMismatch;
        }

        var codec = KvCodecs.Find(header.Codec);
        if (codec is null)
        {
            return ChunkReadStatus.UnknownCodec;
        }

        var encoded = source.Slice(HeaderSize, header.EncodedLength);
        if (XxHash3.HashToUInt64(encoded) != header.EncodedChecksum)
        {
            return ChunkReadStatus.ChecksumMismatch;
        }

        var result = pool.Rent(header.RawLength);
        try
        {
            bool decoded;
            try
            {
                decoded = codec.TryDecode(encoded, header.Format, result.Span);
            }
            catch (Exception e) when (e is InvalidDataException or ArgumentException or IndexOutOfRangeException or InvalidOperationException)
            {
                decoded = false;
            }

            if (!decoded)
            {
                return ChunkReadStatus.DecodeFailed;
            }

            result.Key = header.Key;
            result.TokenCount = header.TokenCount;
            result.Format = header.Format;
            if (codec.Id == KvCodecId.Raw)
            {
                result.Checksum = header.EncodedChecksum;
            }
            else
            {
                result.SealChecksum();
                if (codec.IsLossless && result.Checksum != header.RawChecksum)
                {
                    return ChunkReadStatus.ChecksumMismatch;
                }
            }

            chunk = result;
            result = null;
            return ChunkReadStatus.Ok;
        }
        finally
        {
            result?.Release();
        }
    }
}
