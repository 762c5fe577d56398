using System.Buffers.Binary;

namespace LMCacheSharp.Protocol;

/// <summary>
/// The 16-byte header that starts every frame, little-endian:
/// <code>
///  0 u32 magic "LMCP"   4 u8 version (1)   5 u8 opcode   6 u8 status (0 in requests)   7 u8 flags (0)
///  8 u32 request id     12 u32 body length
/// </code>
/// A response carries its request's id and opcode; the server answers each connection's requests in order.
/// </summary>
/// <param name="Opcode">The operation (a response echoes the request's).</param>
/// <param name="Status">The status (always <see cref="StatusCode.Ok"/> in a request).</param>
/// <param name="RequestId">Chosen by the client; echoed by the server.</param>
/// <param name="BodyLength">Bytes of body after the header.</param>
public readonly record struct FrameHeader(Opcode Opcode, StatusCode Status, uint RequestId, int BodyLength)
{
    /// <summary>Header size in bytes.</summary>
    public const int Size = 16;

    /// <summary>The magic, "LMCP" read as a little-endian u32.</summary>
    public const uint Magic = 0x50434D4C;

    /// <summary>The protocol version this build speaks.</summary>
    public const byte Version = 1;

    /// <summary>Writes the header into the first <see cref="Size"/> bytes of <paramref name="destination"/>.</summary>
    public void WriteTo(Span<byte> destination)
    {
        if (destination.Length < Size)
        {
            throw new ArgumentException($"A frame header needs {Size} bytes.", nameof(destination));
        }

        BinaryPrimitives.WriteUInt32LittleEndian(destination, Magic);
        destination[4] = Version;
        destination[5] = (byte)Opcode;
        destination[6] = (byte)Status;
        destination[7] = 0;
        BinaryPrimitives.WriteUInt32LittleEndian(destination[8..], RequestId);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[12..], (uint)BodyLength);
    }

    /// <summary>
    /// Parses and checks a header (magic, version, reserved bits, body length against <paramref name="limits"/>).
    /// Throws <see cref="ProtocolException"/> (a framing violation) for a bad header.
    /// </summary>
    /// <param name="source">At least <see cref="Size"/> bytes.</param>
    /// <param name="limits">The limits to check the body length against.</param>
    /// <param name="isRequest">True on the server (a request must carry status 0).</param>
    public static FrameHeader Parse(ReadOnlySpan<byte> source, ProtocolLimits limits, bool isRequest)
    {
        ArgumentNullException.ThrowIfNull(limits);
        if (source.Length < Size)
        {
            throw new ArgumentException($"A frame header needs {Size} bytes.", nameof(source));
        }

        if (BinaryPrimitives.ReadUInt32LittleEndian(source) != Magic)
        {
            throw new ProtocolException(ProtocolError.BadMagic, "bad magic: not an LMCP frame");
        }

        if (source[4] != Version)
        {
            throw new ProtocolException(ProtocolError.UnsupportedVersion, $"unsupported protocol version {source[4]} (this side speaks {Version})");
        }

        if (source[7] != 0 || (isRequest && source[6] != 0))
        {
            throw new ProtocolException(ProtocolError.InvalidHeader, "reserved header bits are set");
        }

        var length = BinaryPrimitives.ReadUInt32LittleEndian(source[12..]);
        if (length > (uint)limits.MaxFrameBytes)
        {
            throw new ProtocolException(ProtocolError.FrameTooLarge, $"frame body of {length} bytes is over the {limits.MaxFrameBytes}-byte limit");
        }

        return new FrameHeader((Opcode)source[5], (StatusCode)source[6], BinaryPrimitives.ReadUInt32LittleEndian(source[8..]), (int)length);
    }
}
