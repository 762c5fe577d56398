using System.Buffers;
using CsCheck;

namespace LMCacheSharp.Protocol.Tests;

public class FrameReaderTests
{
    private static readonly ProtocolLimits Limits = new() { MaxKeyBytes = 64, MaxValueBytes = 4096, MaxKeysPerRequest = 16, MaxFrameBytes = 8192 };

    /// <summary>A stream of requests of every shape.</summary>
    private static byte[] SampleStream()
    {
        var w = new ArrayBufferWriter<byte>();
        FrameWriter.WriteEmpty(w, Opcode.Ping, StatusCode.Ok, 1);
        FrameWriter.WriteAuth(w, 2, "secret"u8);
        FrameWriter.WritePut(w, 3, "key-a"u8, Enumerable.Range(0, 300).Select(i => (byte)i).ToArray());
        FrameWriter.WriteKeyRequest(w, Opcode.Get, 4, "key-a"u8);
        FrameWriter.WriteKeyListRequest(w, Opcode.ExistsPrefix, 5, new byte[3 * 32], 32);
        FrameWriter.WriteKeyListRequest(w, Opcode.MultiGet, 6, [new byte[] { 1 }, new byte[] { 2, 3 }]);
        FrameWriter.WriteKeyRequest(w, Opcode.Delete, 7, "key-a"u8);
        FrameWriter.WriteEmpty(w, Opcode.Clear, StatusCode.Ok, 8);
        FrameWriter.WriteEmpty(w, Opcode.Stats, StatusCode.Ok, 9);
        return w.WrittenSpan.ToArray();
    }

    private static List<(FrameHeader Header, byte[] Body)> ReadAll(ReadOnlySequence<byte> input)
    {
        var frames = new List<(FrameHeader, byte[])>();
        while (FrameReader.TryReadFrame(ref input, Limits, isRequest: true, out var header, out var body))
        {
            frames.Add((header, body.ToArray()));
        }

        Assert.Equal(0, input.Length);
        return frames;
    }

    [Fact]
    public void Reads_every_frame_of_a_contiguous_stream()
    {
        var frames = ReadAll(new ReadOnlySequence<byte>(SampleStream()));
        Assert.Equal([1u, 2, 3, 4, 5, 6, 7, 8, 9], frames.Select(f => f.Header.RequestId));
        Assert.Equal([Opcode.Ping, Opcode.Auth, Opcode.Put, Opcode.Get, Opcode.ExistsPrefix, Opcode.MultiGet, Opcode.Delete, Opcode.Clear, Opcode.Stats],
            frames.Select(f => f.Header.Opcode));
        var put = frames[2].Body;
        var key = RequestBody.ParsePut(put, Limits, out var value);
        Assert.Equal("key-a"u8.ToArray(), key.ToArray());
        Assert.Equal(Enumerable.Range(0, 300).Select(i => (byte)i), value.ToArray());
    }

    [Fact]
    public void Split_at_every_offset_reads_the_same_frames()
    {
        var data = SampleStream();
        var expected = ReadAll(new ReadOnlySequence<byte>(data));
        for (var cut = 0; cut <= data.Length; cut++)
        {
            var actual = ReadAll(Segments.Split(data, cut));
            Assert.Equal(expected.Count, actual.Count);
            for (var i = 0; i < expected.Count; i++)
            {
                Assert.Equal(expected[i].Header, actual[i].Header);
                Assert.Equal(expected[i].Body, actual[i].Body);
            }
        }
    }

    [Fact]
    public void One_byte_per_segment_reads_the_same_frames()
    {
        var data = SampleStream();
        var expected = ReadAll(new ReadOnlySequence<byte>(data));
        var actual = ReadAll(Segments.BytePerSegment(data));
        Assert.Equal(expected.Select(f => f.Header), actual.Select(f => f.Header));
        Assert.Equal(expected.SelectMany(f => f.Body), actual.SelectMany(f => f.Body));
    }

    [Fact]
    public void Every_prefix_of_a_frame_is_need_more_data_and_leaves_the_buffer_unchanged()
    {
        var data = SampleStream();
        var first = new ReadOnlySequence<byte>(data);
        Assert.True(FrameReader.TryReadFrame(ref first, Limits, true, out _, out _));
        var firstTwo = data.Length - (int)first.Length; // PING is 16 bytes; read the next (AUTH) frame's prefixes
        var auth = data.AsSpan(firstTwo).ToArray();
        for (var n = 0; n < FrameHeader.Size + 6; n++)
        {
            foreach (var input in new[] { new ReadOnlySequence<byte>(auth, 0, n), Segments.BytePerSegment(auth[..n]) })
            {
                var buffer = input;
                Assert.False(FrameReader.TryReadFrame(ref buffer, Limits, true, out _, out _));
                Assert.Equal(n, buffer.Length);
            }
        }
    }

    [Theory]
    [InlineData(0, (byte)0x00, ProtocolError.BadMagic)]
    [InlineData(3, (byte)0x00, ProtocolError.BadMagic)]
    [InlineData(4, (byte)2, ProtocolError.UnsupportedVersion)]
    [InlineData(6, (byte)1, ProtocolError.InvalidHeader)]
    [InlineData(7, (byte)0x80, ProtocolError.InvalidHeader)]
    [InlineData(15, (byte)0x01, ProtocolError.FrameTooLarge)]
    public void A_bad_header_throws_its_reason_as_soon_as_the_header_is_there(int offset, byte value, ProtocolError reason)
    {
        var w = new ArrayBufferWriter<byte>();
        FrameWriter.WriteKeyRequest(w, Opcode.Get, 1, "k"u8);
        var data = w.WrittenSpan.ToArray();
        data[offset] = value;
        var headerOnly = Segments.BytePerSegment(data[..FrameHeader.Size]);
        var e = Assert.Throws<ProtocolException>(() => FrameReader.TryReadFrame(ref headerOnly, Limits, true, out _, out _));
        Assert.Equal(reason, e.Reason);
        Assert.True(e.IsFramingViolation);
        Assert.Equal(StatusCode.ProtocolViolation, e.ToStatus());
    }

    [Fact]
    public void A_response_may_carry_a_status_but_a_request_may_not()
    {
        var w = new ArrayBufferWriter<byte>();
        FrameWriter.WriteError(w, Opcode.Get, StatusCode.BadRequest, 7, "nope");
        var input = new ReadOnlySequence<byte>(w.WrittenMemory);
        Assert.True(FrameReader.TryReadFrame(ref input, Limits, isRequest: false, out var header, out var body));
        Assert.Equal(StatusCode.BadRequest, header.Status);
        Assert.Equal("nope", ResponseBody.ParseMessage(body.ToArray()));
        input = new ReadOnlySequence<byte>(w.WrittenMemory);
        Assert.Throws<ProtocolException>(() => FrameReader.TryReadFrame(ref input, Limits, isRequest: true, out _, out _));
    }

    [Fact]
    public void Property_random_frames_round_trip_through_any_split()
    {
        var gen = Gen.Select(Gen.Byte[1, 9], Gen.UInt, Gen.Byte.Array[0, 200], Gen.Int[0, 10_000]);
        gen.Sample((op, id, body, cutSeed) =>
        {
            var w = new ArrayBufferWriter<byte>();
            FrameWriter.WriteResponse(w, (Opcode)op, StatusCode.Ok, id, body);
            FrameWriter.WriteEmpty(w, Opcode.Ping, StatusCode.Ok, id + 1);
            var data = w.WrittenSpan.ToArray();
            var input = Segments.Split(data, cutSeed % (data.Length + 1), (cutSeed / 7) % (data.Length + 1));
            Assert.True(FrameReader.TryReadFrame(ref input, Limits, true, out var header, out var read));
            Assert.Equal(new FrameHeader((Opcode)op, StatusCode.Ok, id, body.Length), header);
            Assert.Equal(body, read.ToArray());
            Assert.True(FrameReader.TryReadFrame(ref input, Limits, true, out var ping, out _));
            Assert.Equal(id + 1, ping.RequestId);
            Assert.Equal(0, input.Length);
        }, iter: 500);
    }

    [Fact]
    public void Garbage_never_escapes_as_anything_but_a_protocol_exception_or_need_more_data()
    {
        Gen.Byte.Array[0, 100].Sample(garbage =>
        {
            var input = new ReadOnlySequence<byte>(garbage);
            try
            {
                while (FrameReader.TryReadFrame(ref input, Limits, true, out _, out _))
                {
                }
            }
            catch (ProtocolException e)
            {
                Assert.True(e.IsFramingViolation);
            }
        }, iter: 2000);
    }
}
