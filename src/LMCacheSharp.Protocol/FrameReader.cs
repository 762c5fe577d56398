using System.Buffers;

namespace LMCacheSharp.Protocol;

/// <summary>
/// Reads frames off a <see cref="ReadOnlySequence{T}"/> (a pipe's buffer). Returns false ("need more data") on partial
/// input and never throws for it; throws <see cref="ProtocolException"/> for malformed input.
/// </summary>
public static class FrameReader
{
    /// <summary>
    /// Reads a header. On success <paramref name="buffer"/> is advanced past it; on false it is unchanged.
    /// </summary>
    public static bool TryReadHeader(ref ReadOnlySequence<byte> buffer, ProtocolLimits limits, bool isRequest, out FrameHeader header)
    {
        if (buffer.Length < FrameHeader.Size)
        {
            header = default;
            return false;
        }

        Span<byte> bytes = stackalloc byte[FrameHeader.Size];
        buffer.Slice(0, FrameHeader.Size).CopyTo(bytes);
        header = FrameHeader.Parse(bytes, limits, isRequest);
        buffer = buffer.Slice(FrameHeader.Size);
        return true;
    }

    /// <summary>
    /// Reads a whole frame (header and body). On success <paramref name="buffer"/> is advanced past the frame and
    /// <paramref name="body"/> is a slice of the input; on false <paramref name="buffer"/> is unchanged. A malformed header
    /// throws as soon as its 16 bytes are there, before the body arrives.
    /// </summary>
    public static bool TryReadFrame(ref ReadOnlySequence<byte> buffer, ProtocolLimits limits, bool isRequest, out FrameHeader header,
        out ReadOnlySequence<byte> body)
    {
        body = default;
        var rest = buffer;
        if (!TryReadHeader(ref rest, limits, isRequest, out header))
        {
            return false;
        }

        if (rest.Length < header.BodyLength)
        {
            header = default;
            return false;
        }

        body = rest.Slice(0, header.BodyLength);
        buffer = rest.Slice(header.BodyLength);
        return true;
    }
}
