using System.Buffers.Binary;
using System.Text;

namespace LMCacheSharp.Protocol;

/// <summary>
/// Response bodies, by opcode and status:
/// <code>
///   Ok to GET               the value
///   Ok to MGET              u16 count, then per key: u32 length, then that many bytes; or u32 0xFFFFFFFF (absent)
///                           or u32 0xFFFFFFFE (omitted: the response reached MaxFrameBytes; ask again)
///   Ok to EXISTS-PREFIX     u32 count of leading present keys
///   Ok to STATS             u16 count, then per counter: u8 name length, ASCII name, i64 value
///   Ok to CHILDREN          u16 count, then per child: u16 key length, key, u32 token count, count x i32 tokens
///   Ok to PUT, DELETE, CLEAR, AUTH, PING, LINK; NotFound    empty
///   any error status        a short UTF-8 message (at most 1024 bytes)
/// </code>
/// </summary>
public static class ResponseBody
{
    /// <summary>MGET entry length meaning "absent".</summary>
    public const uint MultiGetAbsent = 0xFFFFFFFF;

    /// <summary>MGET entry length meaning "not included: the response reached its size limit".</summary>
    public const uint MultiGetOmitted = 0xFFFFFFFE;

    /// <summary>Longest error message in bytes.</summary>
    public const int MaxMessageBytes = 1024;

    /// <summary>Parses an EXISTS-PREFIX count.</summary>
    public static int ParseCount(ReadOnlySpan<byte> body, int keysAsked)
    {
        if (body.Length != 4)
        {
            throw new ProtocolException(ProtocolError.InvalidResponse, $"count body must be 4 bytes, got {body.Length}");
        }

        var count = BinaryPrimitives.ReadUInt32LittleEndian(body);
        if (count > (uint)keysAsked)
        {
            throw new ProtocolException(ProtocolError.InvalidResponse, $"count {count} is over the {keysAsked} keys asked");
        }

        return (int)count;
    }

    /// <summary>Parses a CHILDREN body: at most <paramref name="maxAsked"/> children, each with its key and tokens.</summary>
    public static IReadOnlyList<(byte[] Key, int[] Tokens)> ParseChildren(ReadOnlySpan<byte> body, int maxAsked, ProtocolLimits limits)
    {
        ArgumentNullException.ThrowIfNull(limits);
        if (body.Length < 2)
        {
            throw new ProtocolException(ProtocolError.InvalidResponse, "CHILDREN body ends before the count");
        }

        var count = BinaryPrimitives.ReadUInt16LittleEndian(body);
        if (count > maxAsked)
        {
            throw new ProtocolException(ProtocolError.InvalidResponse, $"{count} children is over the {maxAsked} asked");
        }

        var children = new List<(byte[], int[])>(count);
        var offset = 2;
        for (var i = 0; i < count; i++)
        {
            var key = RequestBody.ReadKey(body[offset..], limits, out var consumed);
            offset += consumed;
            if (body.Length - offset < 4)
            {
                throw new ProtocolException(ProtocolError.InvalidResponse, "CHILDREN body ends before a token count");
            }

            var tokenCount = BinaryPrimitives.ReadUInt32LittleEndian(body[offset..]);
            offset += 4;
            if (tokenCount == 0 || tokenCount > limits.MaxLinkTokens || (body.Length - offset) / 4 < tokenCount)
            {
                throw new ProtocolException(ProtocolError.InvalidResponse, $"a child of {tokenCount} tokens does not fit the body");
            }

            var tokens = new int[tokenCount];
            for (var t = 0; t < tokens.Length; t++)
            {
                tokens[t] = BinaryPrimitives.ReadInt32LittleEndian(body[(offset + (4 * t))..]);
            }

            offset += 4 * tokens.Length;
            children.Add((key.ToArray(), tokens));
        }

        if (offset != body.Length)
        {
            throw new ProtocolException(ProtocolError.InvalidResponse, $"{body.Length - offset} bytes after the last child");
        }

        return children;
    }

    /// <summary>Parses a STATS body.</summary>
    public static IReadOnlyDictionary<string, long> ParseStats(ReadOnlySpan<byte> body)
    {
        if (body.Length < 2)
        {
            throw new ProtocolException(ProtocolError.InvalidResponse, "stats body ends before the count");
        }

        var count = BinaryPrimitives.ReadUInt16LittleEndian(body);
        var result = new Dictionary<string, long>(count, StringComparer.Ordinal);
        var offset = 2;
        for (var i = 0; i < count; i++)
        {
            if (offset >= body.Length || body.Length - offset - 1 < body[offset] + 8)
            {
                throw new ProtocolException(ProtocolError.InvalidResponse, "stats body ends inside a counter");
            }

            var nameLength = body[offset];
            var name = Encoding.ASCII.GetString(body.Slice(offset + 1, nameLength));
            result[name] = BinaryPrimitives.ReadInt64LittleEndian(body[(offset + 1 + nameLength)..]);
            offset += 1 + nameLength + 8;
        }

        if (offset != body.Length)
        {
            throw new ProtocolException(ProtocolError.InvalidResponse, "bytes after the last counter");
        }

        return result;
    }

    /// <summary>
    /// Parses an MGET body into one entry per key: the value's range in <paramref name="body"/>, or null with
    /// <paramref name="omitted"/> set where the server left the value out.
    /// </summary>
    public static Range?[] ParseMultiGet(ReadOnlySpan<byte> body, int keysAsked, bool[] omitted)
    {
        ArgumentNullException.ThrowIfNull(omitted);
        if (body.Length < 2)
        {
            throw new ProtocolException(ProtocolError.InvalidResponse, "MGET body ends before the count");
        }

        var count = BinaryPrimitives.ReadUInt16LittleEndian(body);
        if (count != keysAsked || omitted.Length < count)
        {
            throw new ProtocolException(ProtocolError.InvalidResponse, $"MGET answered {count} entries for {keysAsked} keys");
        }

        var result = new Range?[count];
        var offset = 2;
        for (var i = 0; i < count; i++)
        {
            if (body.Length - offset < 4)
            {
                throw new ProtocolException(ProtocolError.InvalidResponse, "MGET body ends inside an entry");
            }

            var length = BinaryPrimitives.ReadUInt32LittleEndian(body[offset..]);
            offset += 4;
            if (length is MultiGetAbsent or MultiGetOmitted)
            {
                omitted[i] = length == MultiGetOmitted;
                continue;
            }

            if ((uint)(body.Length - offset) < length)
            {
                throw new ProtocolException(ProtocolError.InvalidResponse, "MGET body ends inside a value");
            }

            result[i] = new Range(offset, offset + (int)length);
            offset += (int)length;
        }

        if (offset != body.Length)
        {
            throw new ProtocolException(ProtocolError.InvalidResponse, "bytes after the last MGET entry");
        }

        return result;
    }

    /// <summary>The message of an error response (invalid UTF-8 is replaced, long messages are cut).</summary>
    public static string ParseMessage(ReadOnlySpan<byte> body) =>
        Encoding.UTF8.GetString(body.Length > MaxMessageBytes ? body[..MaxMessageBytes] : body);
}
