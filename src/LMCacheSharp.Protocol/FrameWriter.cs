using System.Buffers;
using System.Buffers.Binary;
using System.Text;

namespace LMCacheSharp.Protocol;

/// <summary>Writes frames into an <see cref="IBufferWriter{T}"/> (a pipe writer, an array buffer writer). Allocates nothing.</summary>
public static class FrameWriter
{
    /// <summary>Writes a frame header.</summary>
    public static void WriteHeader(IBufferWriter<byte> writer, in FrameHeader header)
    {
        ArgumentNullException.ThrowIfNull(writer);
        header.WriteTo(writer.GetSpan(FrameHeader.Size));
        writer.Advance(FrameHeader.Size);
    }

    /// <summary>Writes a frame with an empty body (PING, CLEAR, STATS requests; Ok and NotFound responses).</summary>
    public static void WriteEmpty(IBufferWriter<byte> writer, Opcode opcode, StatusCode status, uint requestId) =>
        WriteHeader(writer, new FrameHeader(opcode, status, requestId, 0));

    /// <summary>Writes a request whose body is one key (GET, DELETE).</summary>
    public static void WriteKeyRequest(IBufferWriter<byte> writer, Opcode opcode, uint requestId, ReadOnlySpan<byte> key)
    {
        CheckKey(key);
        WriteHeader(writer, new FrameHeader(opcode, StatusCode.Ok, requestId, 2 + key.Length));
        WriteKey(writer, key);
    }

    /// <summary>
    /// Writes the header and key of a PUT whose <paramref name="valueLength"/>-byte value the caller writes (or sends) next.
    /// </summary>
    public static void WritePutHead(IBufferWriter<byte> writer, uint requestId, ReadOnlySpan<byte> key, int valueLength)
    {
        CheckKey(key);
        ArgumentOutOfRangeException.ThrowIfNegative(valueLength);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(valueLength, int.MaxValue - 2 - key.Length);
        WriteHeader(writer, new FrameHeader(Opcode.Put, StatusCode.Ok, requestId, 2 + key.Length + valueLength));
        WriteKey(writer, key);
    }

    /// <summary>
    /// Writes the header, group and key of a PUT-IN-GROUP whose <paramref name="valueLength"/>-byte value the caller writes
    /// (or sends) next. <paramref name="group"/> is 1..<see cref="ProtocolLimits.MaxGroupBytes"/> bytes.
    /// </summary>
    public static void WritePutInGroupHead(IBufferWriter<byte> writer, uint requestId, ReadOnlySpan<byte> group, ReadOnlySpan<byte> key, int valueLength)
    {
        CheckKey(key);
        if (group.IsEmpty || group.Length > ProtocolLimits.MaxGroupBytes)
        {
            throw new ArgumentException($"A quota group is 1..{ProtocolLimits.MaxGroupBytes} bytes.", nameof(group));
        }

        ArgumentOutOfRangeException.ThrowIfNegative(valueLength);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(valueLength, int.MaxValue - 3 - group.Length - key.Length);
        WriteHeader(writer, new FrameHeader(Opcode.PutInGroup, StatusCode.Ok, requestId, 1 + group.Length + 2 + key.Length + valueLength));
        var span = writer.GetSpan(1 + group.Length);
        span[0] = (byte)group.Length;
        group.CopyTo(span[1..]);
        writer.Advance(1 + group.Length);
        WriteKey(writer, key);
    }

    /// <summary>Writes a whole PUT-IN-GROUP.</summary>
    public static void WritePutInGroup(IBufferWriter<byte> writer, uint requestId, ReadOnlySpan<byte> group, ReadOnlySpan<byte> key, ReadOnlySpan<byte> value)
    {
        WritePutInGroupHead(writer, requestId, group, key, value.Length);
        WriteRaw(writer, value);
    }

    /// <summary>Writes a whole PUT.</summary>
    public static void WritePut(IBufferWriter<byte> writer, uint requestId, ReadOnlySpan<byte> key, ReadOnlySpan<byte> value)
    {
        WritePutHead(writer, requestId, key, value.Length);
        WriteRaw(writer, value);
    }

    /// <summary>Writes a key-list request (MGET, EXISTS-PREFIX, PIN, UNPIN) of fixed-size keys packed in <paramref name="keys"/>.</summary>
    public static void WriteKeyListRequest(IBufferWriter<byte> writer, Opcode opcode, uint requestId, ReadOnlySpan<byte> keys, int keySize)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(keySize, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(keySize, ushort.MaxValue);
        if (keys.Length % keySize != 0)
        {
            throw new ArgumentException($"{keys.Length} bytes is not a whole number of {keySize}-byte keys.", nameof(keys));
        }

        var count = keys.Length / keySize;
        ArgumentOutOfRangeException.ThrowIfGreaterThan(count, ushort.MaxValue, nameof(keys));
        WriteHeader(writer, new FrameHeader(opcode, StatusCode.Ok, requestId, 2 + (count * (2 + keySize))));
        WriteUInt16(writer, (ushort)count);
        for (var i = 0; i < count; i++)
        {
            WriteKey(writer, keys.Slice(i * keySize, keySize));
        }
    }

    /// <summary>Writes a key-list request (MGET, EXISTS-PREFIX).</summary>
    public static void WriteKeyListRequest(IBufferWriter<byte> writer, Opcode opcode, uint requestId, IReadOnlyList<ReadOnlyMemory<byte>> keys)
    {
        ArgumentNullException.ThrowIfNull(keys);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(keys.Count, ushort.MaxValue, nameof(keys));
        var length = 2;
        foreach (var key in keys)
        {
            CheckKey(key.Span);
            length += 2 + key.Length;
        }

        WriteHeader(writer, new FrameHeader(opcode, StatusCode.Ok, requestId, length));
        WriteUInt16(writer, (ushort)keys.Count);
        foreach (var key in keys)
        {
            WriteKey(writer, key.Span);
        }
    }

    /// <summary>Writes a LINK request: <paramref name="child"/> continues <paramref name="parent"/> and covers <paramref name="tokens"/>.</summary>
    public static void WriteLinkRequest(IBufferWriter<byte> writer, uint requestId, ReadOnlySpan<byte> child, ReadOnlySpan<byte> parent, ReadOnlySpan<int> tokens)
    {
        CheckKey(child);
        CheckKey(parent);
        WriteHeader(writer, new FrameHeader(Opcode.Link, StatusCode.Ok, requestId, 2 + child.Length + 2 + parent.Length + 4 + (4 * tokens.Length)));
        WriteKey(writer, child);
        WriteKey(writer, parent);
        WriteTokens(writer, tokens);
    }

    /// <summary>Writes a CHILDREN request: the best <paramref name="max"/> children of <paramref name="parent"/> for <paramref name="next"/>.</summary>
    public static void WriteChildrenRequest(IBufferWriter<byte> writer, uint requestId, ReadOnlySpan<byte> parent, int max, ReadOnlySpan<int> next)
    {
        CheckKey(parent);
        ArgumentOutOfRangeException.ThrowIfLessThan(max, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(max, ushort.MaxValue);
        WriteHeader(writer, new FrameHeader(Opcode.Children, StatusCode.Ok, requestId, 2 + parent.Length + 2 + 4 + (4 * next.Length)));
        WriteKey(writer, parent);
        WriteUInt16(writer, (ushort)max);
        WriteTokens(writer, next);
    }

    /// <summary>Writes an Ok response to CHILDREN: each child's key and tokens, best first.</summary>
    public static void WriteChildrenResponse(IBufferWriter<byte> writer, uint requestId, IReadOnlyList<(byte[] Key, int[] Tokens)> children)
    {
        ArgumentNullException.ThrowIfNull(children);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(children.Count, ushort.MaxValue, nameof(children));
        var length = 2;
        foreach (var (key, tokens) in children)
        {
            CheckKey(key);
            length += 2 + key.Length + 4 + (4 * tokens.Length);
        }

        WriteHeader(writer, new FrameHeader(Opcode.Children, StatusCode.Ok, requestId, length));
        WriteUInt16(writer, (ushort)children.Count);
        foreach (var (key, tokens) in children)
        {
            WriteKey(writer, key);
            WriteTokens(writer, tokens);
        }
    }

    /// <summary>Writes an AUTH request.</summary>
    public static void WriteAuth(IBufferWriter<byte> writer, uint requestId, ReadOnlySpan<byte> token)
    {
        WriteHeader(writer, new FrameHeader(Opcode.Auth, StatusCode.Ok, requestId, token.Length));
        WriteRaw(writer, token);
    }

    /// <summary>Writes a response with <paramref name="body"/>.</summary>
    public static void WriteResponse(IBufferWriter<byte> writer, Opcode opcode, StatusCode status, uint requestId, ReadOnlySpan<byte> body)
    {
        WriteHeader(writer, new FrameHeader(opcode, status, requestId, body.Length));
        WriteRaw(writer, body);
    }

    /// <summary>Writes an error response with a short message (cut at <see cref="ResponseBody.MaxMessageBytes"/> bytes).</summary>
    public static void WriteError(IBufferWriter<byte> writer, Opcode opcode, StatusCode status, uint requestId, string message)
    {
        ArgumentNullException.ThrowIfNull(message);
        Span<byte> bytes = stackalloc byte[ResponseBody.MaxMessageBytes];
        var length = Encoding.UTF8.GetBytes(message.Length > ResponseBody.MaxMessageBytes / 4 ? message[..(ResponseBody.MaxMessageBytes / 4)] : message, bytes);
        WriteResponse(writer, opcode, status, requestId, bytes[..length]);
    }

    /// <summary>Writes an Ok response to EXISTS-PREFIX.</summary>
    public static void WriteCountResponse(IBufferWriter<byte> writer, uint requestId, int count) =>
        WriteCountResponse(writer, Opcode.ExistsPrefix, requestId, count);

    /// <summary>Writes an Ok response whose body is a u32 count (EXISTS-PREFIX, PIN, UNPIN).</summary>
    public static void WriteCountResponse(IBufferWriter<byte> writer, Opcode opcode, uint requestId, int count)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        WriteHeader(writer, new FrameHeader(opcode, StatusCode.Ok, requestId, 4));
        var span = writer.GetSpan(4);
        BinaryPrimitives.WriteUInt32LittleEndian(span, (uint)count);
        writer.Advance(4);
    }

    /// <summary>Writes an Ok response to STATS. Names are ASCII, 1..255 characters.</summary>
    public static void WriteStatsResponse(IBufferWriter<byte> writer, uint requestId, IReadOnlyList<KeyValuePair<string, long>> counters)
    {
        ArgumentNullException.ThrowIfNull(counters);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(counters.Count, ushort.MaxValue, nameof(counters));
        var length = 2;
        foreach (var (name, _) in counters)
        {
            if (name.Length is 0 or > 255 || !Ascii.IsValid(name))
            {
                throw new ArgumentException($"Counter name '{name}' must be 1..255 ASCII characters.", nameof(counters));
            }

            length += 1 + name.Length + 8;
        }

        WriteHeader(writer, new FrameHeader(Opcode.Stats, StatusCode.Ok, requestId, length));
        WriteUInt16(writer, (ushort)counters.Count);
        foreach (var (name, value) in counters)
        {
            var span = writer.GetSpan(1 + name.Length + 8);
            span[0] = (byte)name.Length;
            Encoding.ASCII.GetBytes(name, span[1..]);
            BinaryPrimitives.WriteInt64LittleEndian(span[(1 + name.Length)..], value);
            writer.Advance(1 + name.Length + 8);
        }
    }

    /// <summary>Writes the start of an Ok MGET response: the header and the entry count. Entries follow.</summary>
    public static void WriteMultiGetHead(IBufferWriter<byte> writer, uint requestId, int bodyLength, int count)
    {
        WriteHeader(writer, new FrameHeader(Opcode.MultiGet, StatusCode.Ok, requestId, bodyLength));
        WriteUInt16(writer, checked((ushort)count));
    }

    /// <summary>Writes one MGET entry's length (or <see cref="ResponseBody.MultiGetAbsent"/>/<see cref="ResponseBody.MultiGetOmitted"/>); its bytes follow.</summary>
    public static void WriteMultiGetEntryHead(IBufferWriter<byte> writer, uint lengthOrMarker)
    {
        ArgumentNullException.ThrowIfNull(writer);
        BinaryPrimitives.WriteUInt32LittleEndian(writer.GetSpan(4), lengthOrMarker);
        writer.Advance(4);
    }

    /// <summary>Copies raw bytes into the writer.</summary>
    public static void WriteRaw(IBufferWriter<byte> writer, ReadOnlySpan<byte> bytes)
    {
        ArgumentNullException.ThrowIfNull(writer);
        while (!bytes.IsEmpty)
        {
            var span = writer.GetSpan(1);
            var n = Math.Min(span.Length, bytes.Length);
            bytes[..n].CopyTo(span);
            writer.Advance(n);
            bytes = bytes[n..];
        }
    }

    private static void WriteKey(IBufferWriter<byte> writer, ReadOnlySpan<byte> key)
    {
        WriteUInt16(writer, (ushort)key.Length);
        WriteRaw(writer, key);
    }

    private static void WriteTokens(IBufferWriter<byte> writer, ReadOnlySpan<int> tokens)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(writer.GetSpan(4), (uint)tokens.Length);
        writer.Advance(4);
        foreach (var token in tokens)
        {
            BinaryPrimitives.WriteInt32LittleEndian(writer.GetSpan(4), token);
            writer.Advance(4);
        }
    }

    private static void WriteUInt16(IBufferWriter<byte> writer, ushort value)
    {
        BinaryPrimitives.WriteUInt16LittleEndian(writer.GetSpan(2), value);
        writer.Advance(2);
    }

    private static void CheckKey(ReadOnlySpan<byte> key)
    {
        if (key.IsEmpty || key.Length > ushort.MaxValue)
        {
            throw new ArgumentException($"A key is 1..65535 bytes, got {key.Length}.", nameof(key));
        }
    }
}
