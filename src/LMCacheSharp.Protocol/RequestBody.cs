using System.Buffers;
using System.Buffers.Binary;

namespace LMCacheSharp.Protocol;

/// <summary>
/// Parses request bodies (the body is complete and contiguous by then). Malformed bodies throw
/// <see cref="ProtocolException"/> with a request-level reason: the server answers with an error and keeps the connection.
/// <code>
///   key       = u16 length (1..MaxKeyBytes), then the key bytes
///   GET, DELETE          body = key
///   PUT                  body = key, then the value (the rest of the body, up to MaxValueBytes)
///   PUT-IN-GROUP         body = u8 group length (1..MaxGroupBytes), the group bytes, then a PUT body
///   MGET, EXISTS-PREFIX, PIN, UNPIN  body = u16 count (0..MaxKeysPerRequest), then count keys
///   AUTH                 body = the token bytes (up to MaxControlBodyBytes)
///   PING, CLEAR, STATS   body = empty
///   LINK                 body = child key, parent key, u32 count (1..MaxLinkTokens), then count x i32 tokens
///   CHILDREN             body = parent key, u16 max (1..MaxChildrenPerLookup), u32 count (0..MaxLinkTokens), count x i32 tokens
/// </code>
/// </summary>
public static class RequestBody
{
    /// <summary>Parses a body that is exactly one key (GET, DELETE) and returns the key.</summary>
    public static ReadOnlySpan<byte> ParseKey(ReadOnlySpan<byte> body, ProtocolLimits limits)
    {
        var key = ReadKey(body, limits, out var consumed);
        if (consumed != body.Length)
        {
            throw new ProtocolException(ProtocolError.TrailingBytes, $"{body.Length - consumed} bytes after the key");
        }

        return key;
    }

    /// <summary>Reads one length-prefixed key at the start of <paramref name="source"/>; <paramref name="consumed"/> = its wire size.</summary>
    public static ReadOnlySpan<byte> ReadKey(ReadOnlySpan<byte> source, ProtocolLimits limits, out int consumed)
    {
        ArgumentNullException.ThrowIfNull(limits);
        if (source.Length < 2)
        {
            throw new ProtocolException(ProtocolError.BodyTruncated, "body ends before the key length");
        }

        var length = BinaryPrimitives.ReadUInt16LittleEndian(source);
        CheckKeyLength(length, limits);
        if (source.Length - 2 < length)
        {
            throw new ProtocolException(ProtocolError.BodyTruncated, $"body ends inside a {length}-byte key");
        }

        consumed = 2 + length;
        return source.Slice(2, length);
    }

    /// <summary>
    /// Reads the start of a PUT body: the key length, and the value length the frame's <paramref name="bodyLength"/> implies.
    /// Returns false while fewer than 2 bytes are there. The key follows at offset 2, the value at offset 2 + key length.
    /// </summary>
    public static bool TryReadPutHead(ReadOnlySequence<byte> bodyStart, int bodyLength, ProtocolLimits limits, out int keyLength, out int valueLength)
    {
        ArgumentNullException.ThrowIfNull(limits);
        keyLength = valueLength = 0;
        if (bodyLength < 2)
        {
            throw new ProtocolException(ProtocolError.BodyTruncated, "PUT body ends before the key length");
        }

        if (bodyStart.Length < 2)
        {
            return false;
        }

        Span<byte> two = stackalloc byte[2];
        bodyStart.Slice(0, 2).CopyTo(two);
        keyLength = BinaryPrimitives.ReadUInt16LittleEndian(two);
        CheckKeyLength(keyLength, limits);
        if (bodyLength - 2 < keyLength)
        {
            throw new ProtocolException(ProtocolError.BodyTruncated, $"PUT body ends inside a {keyLength}-byte key");
        }

        valueLength = bodyLength - 2 - keyLength;
        if (valueLength > limits.MaxValueBytes)
        {
            throw new ProtocolException(ProtocolError.ValueTooLarge, $"value of {valueLength} bytes is over the {limits.MaxValueBytes}-byte limit");
        }

        return true;
    }

    /// <summary>
    /// Reads the group length at the start of a PUT-IN-GROUP body (its first byte, <paramref name="first"/>) and checks it
    /// against the frame's <paramref name="bodyLength"/>: the group's bytes follow, then a PUT body of
    /// <paramref name="bodyLength"/> - 1 - group length bytes (read with <see cref="TryReadPutHead"/>).
    /// </summary>
    public static int ReadGroupLength(byte first, int bodyLength)
    {
        if (first is 0 or > ProtocolLimits.MaxGroupBytes)
        {
            throw new ProtocolException(ProtocolError.InvalidField,
                $"a quota group is 1..{ProtocolLimits.MaxGroupBytes} bytes, got {first}");
        }

        if (bodyLength - 1 < first)
        {
            throw new ProtocolException(ProtocolError.BodyTruncated, $"PUT-IN-GROUP body ends inside its {first}-byte group");
        }

        return first;
    }

    /// <summary>
    /// Parses a whole PUT-IN-GROUP body (small values and tests; the server streams values): returns the group; the key and
    /// value follow as in <see cref="ParsePut"/>.
    /// </summary>
    public static ReadOnlySpan<byte> ParsePutInGroup(ReadOnlySpan<byte> body, ProtocolLimits limits, out ReadOnlySpan<byte> key, out ReadOnlySpan<byte> value)
    {
        if (body.IsEmpty)
        {
            throw new ProtocolException(ProtocolError.BodyTruncated, "PUT-IN-GROUP body ends before the group length");
        }

        var length = ReadGroupLength(body[0], body.Length);
        key = ParsePut(body[(1 + length)..], limits, out value);
        return body.Slice(1, length);
    }

    /// <summary>Parses a whole PUT body (for small values and tests; the server streams large values instead).</summary>
    public static ReadOnlySpan<byte> ParsePut(ReadOnlySpan<byte> body, ProtocolLimits limits, out ReadOnlySpan<byte> value)
    {
        var key = ReadKey(body, limits, out var consumed);
        value = body[consumed..];
        if (value.Length > limits.MaxValueBytes)
        {
            throw new ProtocolException(ProtocolError.ValueTooLarge, $"value of {value.Length} bytes is over the {limits.MaxValueBytes}-byte limit");
        }

        return key;
    }

    /// <summary>Parses a LINK body: returns the child key; <paramref name="parent"/> and <paramref name="tokens"/> (i32 little-endian each) follow it.</summary>
    public static ReadOnlySpan<byte> ParseLink(ReadOnlySpan<byte> body, ProtocolLimits limits, out ReadOnlySpan<byte> parent, out ReadOnlySpan<byte> tokens)
    {
        var child = ReadKey(body, limits, out var consumed);
        parent = ReadKey(body[consumed..], limits, out var parentBytes);
        tokens = ReadTokens(body[(consumed + parentBytes)..], limits, minimum: 1, "LINK");
        return child;
    }

    /// <summary>Parses a CHILDREN body: returns the parent key, the most children wanted and the request's next tokens.</summary>
    public static ReadOnlySpan<byte> ParseChildren(ReadOnlySpan<byte> body, ProtocolLimits limits, out int max, out ReadOnlySpan<byte> tokens)
    {
        var parent = ReadKey(body, limits, out var consumed);
        body = body[consumed..];
        if (body.Length < 2)
        {
            throw new ProtocolException(ProtocolError.BodyTruncated, "CHILDREN body ends before the child count");
        }

        max = BinaryPrimitives.ReadUInt16LittleEndian(body);
        if (max is 0 || max > limits.MaxChildrenPerLookup)
        {
            throw new ProtocolException(max is 0 ? ProtocolError.InvalidField : ProtocolError.TooManyKeys,
                $"{max} children asked: must be 1..{limits.MaxChildrenPerLookup}");
        }

        tokens = ReadTokens(body[2..], limits, minimum: 0, "CHILDREN");
        return parent;
    }

    /// <summary>Checks that an empty body is empty (PING, CLEAR, STATS).</summary>
    public static void ParseEmpty(ReadOnlySpan<byte> body)
    {
        if (!body.IsEmpty)
        {
            throw new ProtocolException(ProtocolError.TrailingBytes, $"expected an empty body, got {body.Length} bytes");
        }
    }

    /// <summary>Checks the length of a non-PUT request body before it is buffered.</summary>
    public static void CheckControlBodyLength(int bodyLength, ProtocolLimits limits)
    {
        ArgumentNullException.ThrowIfNull(limits);
        if (bodyLength > limits.MaxControlBodyBytes)
        {
            throw new ProtocolException(ProtocolError.BodyTooLarge, $"request body of {bodyLength} bytes is over the {limits.MaxControlBodyBytes}-byte limit");
        }
    }

    // u32 count, then exactly count x i32: the rest of the body.
    private static ReadOnlySpan<byte> ReadTokens(ReadOnlySpan<byte> source, ProtocolLimits limits, int minimum, string what)
    {
        if (source.Length < 4)
        {
            throw new ProtocolException(ProtocolError.BodyTruncated, $"{what} body ends before the token count");
        }

        var count = BinaryPrimitives.ReadUInt32LittleEndian(source);
        if (count < minimum || count > limits.MaxLinkTokens)
        {
            throw new ProtocolException(count < minimum ? ProtocolError.InvalidField : ProtocolError.BodyTooLarge,
                $"{count} tokens: must be {minimum}..{limits.MaxLinkTokens}");
        }

        var bytes = (long)count * 4;
        if (source.Length - 4 < bytes)
        {
            throw new ProtocolException(ProtocolError.BodyTruncated, $"{what} body ends inside its {count} tokens");
        }

        if (source.Length - 4 > bytes)
        {
            throw new ProtocolException(ProtocolError.TrailingBytes, $"{source.Length - 4 - bytes} bytes after the tokens");
        }

        return source.Slice(4, (int)bytes);
    }

    private static void CheckKeyLength(int length, ProtocolLimits limits)
    {
        if (length == 0)
        {
            throw new ProtocolException(ProtocolError.EmptyKey, "empty key");
        }

        if (length > limits.MaxKeyBytes)
        {
            throw new ProtocolException(ProtocolError.KeyTooLarge, $"key of {length} bytes is over the {limits.MaxKeyBytes}-byte limit");
        }
    }
}

/// <summary>
/// A key list body (MGET, EXISTS-PREFIX, PIN, UNPIN): the constructor checks the whole body (count, every key, no trailing bytes), so
/// iteration never throws. Allocates nothing.
/// </summary>
public ref struct KeyListReader
{
    private readonly ReadOnlySpan<byte> _body;
    private readonly ProtocolLimits _limits;
    private int _offset;

    /// <summary>Checks <paramref name="body"/>; throws <see cref="ProtocolException"/> when it is malformed.</summary>
    public KeyListReader(ReadOnlySpan<byte> body, ProtocolLimits limits)
    {
        ArgumentNullException.ThrowIfNull(limits);
        if (body.Length < 2)
        {
            throw new ProtocolException(ProtocolError.BodyTruncated, "body ends before the key count");
        }

        Count = BinaryPrimitives.ReadUInt16LittleEndian(body);
        if (Count > limits.MaxKeysPerRequest)
        {
            throw new ProtocolException(ProtocolError.TooManyKeys, $"{Count} keys is over the {limits.MaxKeysPerRequest}-key limit");
        }

        var offset = 2;
        for (var i = 0; i < Count; i++)
        {
            RequestBody.ReadKey(body[offset..], limits, out var consumed);
            offset += consumed;
        }

        if (offset != body.Length)
        {
            throw new ProtocolException(ProtocolError.TrailingBytes, $"{body.Length - offset} bytes after the last key");
        }

        _body = body;
        _limits = limits;
        _offset = 2;
    }

    /// <summary>Number of keys.</summary>
    public int Count { get; }

    /// <summary>The next key, or false after the last.</summary>
    public bool TryReadNext(out ReadOnlySpan<byte> key)
    {
        if (_offset >= _body.Length)
        {
            key = default;
            return false;
        }

        key = RequestBody.ReadKey(_body[_offset..], _limits, out var consumed);
        _offset += consumed;
        return true;
    }
}
