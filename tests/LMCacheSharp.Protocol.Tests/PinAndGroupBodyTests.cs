using System.Buffers;
using CsCheck;

namespace LMCacheSharp.Protocol.Tests;

/// <summary>PIN and UNPIN (a key list, answered with a count) and PUT-IN-GROUP (a group, then a PUT body).</summary>
public class PinAndGroupBodyTests
{
    private static readonly ProtocolLimits Limits = new() { MaxKeyBytes = 8, MaxValueBytes = 100, MaxKeysPerRequest = 3, MaxFrameBytes = 1000 };

    private static (FrameHeader Header, byte[] Body) Frame(Action<ArrayBufferWriter<byte>> write)
    {
        var w = new ArrayBufferWriter<byte>();
        write(w);
        var input = new ReadOnlySequence<byte>(w.WrittenMemory);
        Assert.True(FrameReader.TryReadFrame(ref input, Limits, isRequest: true, out var header, out var body));
        Assert.Equal(0, input.Length);
        return (header, body.ToArray());
    }

    [Theory]
    [InlineData(Opcode.Pin, (byte)12)]
    [InlineData(Opcode.Unpin, (byte)13)]
    [InlineData(Opcode.PutInGroup, (byte)14)]
    public void The_new_opcodes_have_their_wire_numbers(Opcode opcode, byte wire) => Assert.Equal(wire, (byte)opcode);

    [Fact]
    public void Pin_and_unpin_are_key_lists_that_round_trip()
    {
        Gen.Byte.Array[1, 8].Array[0, 3].Sample(keys =>
        {
            foreach (var opcode in new[] { Opcode.Pin, Opcode.Unpin })
            {
                var (header, body) = Frame(w => FrameWriter.WriteKeyListRequest(w, opcode, 5, [.. keys.Select(k => (ReadOnlyMemory<byte>)k)]));
                Assert.Equal(opcode, header.Opcode);
                var reader = new KeyListReader(body, Limits);
                var read = new List<byte[]>();
                while (reader.TryReadNext(out var key))
                {
                    read.Add(key.ToArray());
                }

                Assert.Equal(keys, read);
            }
        }, iter: 200);
    }

    [Fact]
    public void A_count_response_echoes_the_opcode_and_parses_back()
    {
        var w = new ArrayBufferWriter<byte>();
        FrameWriter.WriteCountResponse(w, Opcode.Pin, 9, 2);
        var input = new ReadOnlySequence<byte>(w.WrittenMemory);
        Assert.True(FrameReader.TryReadFrame(ref input, Limits, isRequest: false, out var header, out var body));
        Assert.Equal((Opcode.Pin, StatusCode.Ok, 9u), (header.Opcode, header.Status, header.RequestId));
        Assert.Equal(2, ResponseBody.ParseCount(body.ToArray(), keysAsked: 3));
        Assert.Equal(ProtocolError.InvalidResponse, Assert.Throws<ProtocolException>(() => ResponseBody.ParseCount(body.ToArray(), keysAsked: 1)).Reason);
    }

    [Fact]
    public void Put_in_group_round_trips()
    {
        Gen.Select(Gen.Byte.Array[1, ProtocolLimits.MaxGroupBytes], Gen.Byte.Array[1, 8], Gen.Byte.Array[0, 100]).Sample((group, key, value) =>
        {
            var (header, body) = Frame(w => FrameWriter.WritePutInGroup(w, 3, group, key, value));
            Assert.Equal(Opcode.PutInGroup, header.Opcode);
            var readGroup = RequestBody.ParsePutInGroup(body, Limits, out var readKey, out var readValue);
            Assert.Equal(group, readGroup.ToArray());
            Assert.Equal(key, readKey.ToArray());
            Assert.Equal(value, readValue.ToArray());

            // The streaming path: the group length from the first byte, then the PUT head of what follows the group.
            var length = RequestBody.ReadGroupLength(body[0], body.Length);
            var rest = new ReadOnlySequence<byte>(body, 1 + length, body.Length - 1 - length);
            Assert.True(RequestBody.TryReadPutHead(rest, (int)rest.Length, Limits, out var keyLength, out var valueLength));
            Assert.Equal((key.Length, value.Length), (keyLength, valueLength));
        }, iter: 300);
    }

    [Fact]
    public void A_put_in_group_truncated_anywhere_is_a_request_level_error()
    {
        var (_, body) = Frame(w => FrameWriter.WritePutInGroup(w, 3, "g1"u8, "key"u8, "value"u8));
        var valueStart = 1 + 2 + 2 + 3;
        for (var cut = 0; cut < valueStart; cut++)
        {
            // Cut inside the group length, the group, the key length or the key: each a clean, request-level reason.
            var e = Assert.Throws<ProtocolException>(() => RequestBody.ParsePutInGroup(body.AsSpan(0, cut), Limits, out _, out _));
            Assert.Equal(ProtocolError.BodyTruncated, e.Reason);
            Assert.False(e.IsFramingViolation);
        }

        for (var cut = valueStart; cut <= body.Length; cut++)
        {
            // From the value on, a shorter body is a shorter value (the frame's length says where the body ends).
            RequestBody.ParsePutInGroup(body.AsSpan(0, cut), Limits, out _, out var value);
            Assert.Equal(cut - valueStart, value.Length);
        }
    }

    [Theory]
    [InlineData(new byte[] { 0, 3, 0, 1, 2, 3 }, ProtocolError.InvalidField)] // an empty group
    [InlineData(new byte[] { 65 }, ProtocolError.InvalidField)]               // over 64 bytes
    [InlineData(new byte[] { 4, 1, 2 }, ProtocolError.BodyTruncated)]         // ends inside the group
    [InlineData(new byte[] { 1, 7 }, ProtocolError.BodyTruncated)]            // no key length
    [InlineData(new byte[] { 1, 7, 0, 0 }, ProtocolError.EmptyKey)]
    [InlineData(new byte[] { 1, 7, 9, 0 }, ProtocolError.KeyTooLarge)]
    public void Malformed_put_in_group_bodies_throw_request_level_reasons(byte[] body, ProtocolError reason)
    {
        var e = Assert.Throws<ProtocolException>(() => RequestBody.ParsePutInGroup(body, Limits, out _, out _));
        Assert.Equal(reason, e.Reason);
        Assert.False(e.IsFramingViolation);
    }

    [Fact]
    public void The_writer_refuses_a_group_out_of_range()
    {
        var w = new ArrayBufferWriter<byte>();
        Assert.Throws<ArgumentException>(() => FrameWriter.WritePutInGroupHead(w, 1, [], "k"u8, 0));
        Assert.Throws<ArgumentException>(() => FrameWriter.WritePutInGroupHead(w, 1, new byte[ProtocolLimits.MaxGroupBytes + 1], "k"u8, 0));
        Assert.Equal(0, w.WrittenCount);
    }

    [Fact]
    public void The_group_length_is_checked_against_the_frame_before_anything_else()
    {
        Assert.Equal(5, RequestBody.ReadGroupLength(5, bodyLength: 9));
        Assert.Equal(ProtocolError.BodyTruncated, Assert.Throws<ProtocolException>(() => RequestBody.ReadGroupLength(5, bodyLength: 5)).Reason);
    }

    [Fact]
    public void The_new_frames_read_the_same_split_at_every_offset_and_one_byte_per_segment()
    {
        var w = new ArrayBufferWriter<byte>();
        FrameWriter.WriteKeyListRequest(w, Opcode.Pin, 1, ["ab"u8.ToArray(), "cd"u8.ToArray()]);
        FrameWriter.WritePutInGroup(w, 2, "group"u8, "key"u8, "value"u8);
        FrameWriter.WriteKeyListRequest(w, Opcode.Unpin, 3, ["ab"u8.ToArray()]);
        var data = w.WrittenSpan.ToArray();
        var inputs = Enumerable.Range(0, data.Length + 1).Select(cut => Segments.Split(data, cut)).Append(Segments.BytePerSegment(data));
        foreach (var whole in inputs)
        {
            var input = whole;
            var read = new List<(Opcode, byte[])>();
            while (FrameReader.TryReadFrame(ref input, Limits, isRequest: true, out var header, out var body))
            {
                read.Add((header.Opcode, body.ToArray()));
            }

            Assert.Equal([Opcode.Pin, Opcode.PutInGroup, Opcode.Unpin], read.Select(f => f.Item1));
            Assert.Equal(2, new KeyListReader(read[0].Item2, Limits).Count);
            Assert.Equal("group"u8.ToArray(), RequestBody.ParsePutInGroup(read[1].Item2, Limits, out _, out _).ToArray());
        }
    }
}
