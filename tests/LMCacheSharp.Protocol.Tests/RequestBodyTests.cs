using System.Buffers;
using System.Buffers.Binary;
using CsCheck;

namespace LMCacheSharp.Protocol.Tests;

public class RequestBodyTests
{
    private static readonly ProtocolLimits Limits = new() { MaxKeyBytes = 8, MaxValueBytes = 100, MaxKeysPerRequest = 3, MaxFrameBytes = 1000 };

    private static byte[] Body(Action<ArrayBufferWriter<byte>> write)
    {
        var w = new ArrayBufferWriter<byte>();
        write(w);
        return w.WrittenSpan[FrameHeader.Size..].ToArray();
    }

    [Fact]
    public void Key_lists_round_trip_and_iterate_in_order()
    {
        Gen.Byte.Array[1, 8].Array[0, 3].Sample(keys =>
        {
            var body = Body(w => FrameWriter.WriteKeyListRequest(w, Opcode.MultiGet, 1, [.. keys.Select(k => (ReadOnlyMemory<byte>)k)]));
            var reader = new KeyListReader(body, Limits);
            Assert.Equal(keys.Length, reader.Count);
            var i = 0;
            while (reader.TryReadNext(out var key))
            {
                Assert.Equal(keys[i++], key.ToArray());
            }

            Assert.Equal(keys.Length, i);
        }, iter: 300);
    }

    [Fact]
    public void Packed_fixed_size_keys_write_the_same_body_as_a_list()
    {
        var packed = Enumerable.Range(0, 3 * 4).Select(i => (byte)i).ToArray();
        var a = Body(w => FrameWriter.WriteKeyListRequest(w, Opcode.ExistsPrefix, 1, packed, 4));
        var b = Body(w => FrameWriter.WriteKeyListRequest(w, Opcode.ExistsPrefix, 1, [packed.AsMemory(0, 4), packed.AsMemory(4, 4), packed.AsMemory(8, 4)]));
        Assert.Equal(a, b);
    }

    [Theory]
    [InlineData(new byte[] { }, ProtocolError.BodyTruncated)]
    [InlineData(new byte[] { 1 }, ProtocolError.BodyTruncated)]
    [InlineData(new byte[] { 4, 0 }, ProtocolError.TooManyKeys)]
    [InlineData(new byte[] { 1, 0, 0, 0 }, ProtocolError.EmptyKey)]
    [InlineData(new byte[] { 1, 0, 9, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 }, ProtocolError.KeyTooLarge)]
    [InlineData(new byte[] { 1, 0, 3, 0, 1, 2 }, ProtocolError.BodyTruncated)]
    [InlineData(new byte[] { 1, 0, 1, 0, 1, 99 }, ProtocolError.TrailingBytes)]
    [InlineData(new byte[] { 2, 0, 1, 0, 1 }, ProtocolError.BodyTruncated)]
    public void Malformed_key_lists_throw_request_level_reasons(byte[] body, ProtocolError reason)
    {
        var e = Assert.Throws<ProtocolException>(() => new KeyListReader(body, Limits));
        Assert.Equal(reason, e.Reason);
        Assert.False(e.IsFramingViolation);
    }

    [Fact]
    public void Single_key_bodies_reject_trailing_bytes_and_bad_lengths()
    {
        var body = Body(w => FrameWriter.WriteKeyRequest(w, Opcode.Get, 1, "abc"u8));
        Assert.Equal("abc"u8.ToArray(), RequestBody.ParseKey(body, Limits).ToArray());
        Assert.Equal(ProtocolError.TrailingBytes, Assert.Throws<ProtocolException>(() => RequestBody.ParseKey([.. body, 0], Limits)).Reason);
        Assert.Equal(ProtocolError.BodyTruncated, Assert.Throws<ProtocolException>(() => RequestBody.ParseKey(body[..^1], Limits)).Reason);
        Assert.Equal(ProtocolError.TrailingBytes, Assert.Throws<ProtocolException>(() => RequestBody.ParseEmpty([1])).Reason);
    }

    [Fact]
    public void Put_head_reads_lengths_and_checks_limits_at_every_split()
    {
        var body = Body(w => FrameWriter.WritePut(w, 1, "key"u8, new byte[50]));
        for (var cut = 0; cut <= body.Length; cut++)
        {
            var start = Segments.Split(body, cut).Slice(0, Math.Min(cut == 0 ? body.Length : cut, body.Length));
            if (start.Length < 2)
            {
                Assert.False(RequestBody.TryReadPutHead(start, body.Length, Limits, out _, out _));
                continue;
            }

            Assert.True(RequestBody.TryReadPutHead(start, body.Length, Limits, out var keyLength, out var valueLength));
            Assert.Equal((3, 50), (keyLength, valueLength));
        }

        var big = new byte[2 + 3 + 101];
        BinaryPrimitives.WriteUInt16LittleEndian(big, 3);
        Assert.Equal(ProtocolError.ValueTooLarge,
            Assert.Throws<ProtocolException>(() => RequestBody.TryReadPutHead(new ReadOnlySequence<byte>(big), big.Length, Limits, out _, out _)).Reason);
        Assert.Equal(ProtocolError.BodyTruncated,
            Assert.Throws<ProtocolException>(() => RequestBody.TryReadPutHead(new ReadOnlySequence<byte>(big), 4, Limits, out _, out _)).Reason);
        Assert.Equal(ProtocolError.BodyTruncated,
            Assert.Throws<ProtocolException>(() => RequestBody.TryReadPutHead(ReadOnlySequence<byte>.Empty, 1, Limits, out _, out _)).Reason);
    }

    [Fact]
    public void Control_bodies_over_the_derived_limit_are_too_large()
    {
        // The larger of a key list at the limits and a LINK of the most tokens (two keys, u32 count, the tokens).
        Assert.Equal(Math.Max(2 + (3 * 10), (2 * 10) + 6 + (4 * Limits.MaxLinkTokens)), Limits.MaxControlBodyBytes);
        Assert.Equal(2 + (3 * 10), new ProtocolLimits { MaxKeyBytes = 8, MaxKeysPerRequest = 3, MaxLinkTokens = 1 }.MaxControlBodyBytes);
        RequestBody.CheckControlBodyLength(Limits.MaxControlBodyBytes, Limits);
        var e = Assert.Throws<ProtocolException>(() => RequestBody.CheckControlBodyLength(Limits.MaxControlBodyBytes + 1, Limits));
        Assert.Equal(StatusCode.TooLarge, e.ToStatus());
    }

    [Fact]
    public void Limits_validate_their_ranges()
    {
        Assert.Empty(ProtocolLimits.Default.GetErrors());
        Assert.Equal(4, new ProtocolLimits { MaxKeyBytes = 0, MaxValueBytes = 0, MaxKeysPerRequest = 70_000, MaxFrameBytes = 1 }.GetErrors().Count);
        Assert.Throws<ArgumentException>(() => new ProtocolLimits { MaxKeyBytes = 65536 }.Validate());
    }
}
