using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using CsCheck;

namespace LMCacheSharp.Protocol.Tests;

/// <summary>LINK and CHILDREN bodies: what the writer writes the parser reads back, and truncations never pass.</summary>
public class ChildrenBodyTests
{
    private static readonly ProtocolLimits Limits = new() { MaxKeyBytes = 8, MaxValueBytes = 100, MaxKeysPerRequest = 3, MaxFrameBytes = 1000, MaxLinkTokens = 20 };

    private static byte[] Body(Action<ArrayBufferWriter<byte>> write)
    {
        var w = new ArrayBufferWriter<byte>();
        write(w);
        return w.WrittenSpan[FrameHeader.Size..].ToArray();
    }

    private static int[] Tokens(ReadOnlySpan<byte> bytes) => MemoryMarshal.Cast<byte, int>(bytes).ToArray();

    [Fact]
    public void Link_round_trips_and_every_truncation_is_refused()
    {
        Gen.Select(Gen.Byte.Array[1, 8], Gen.Byte.Array[1, 8], Gen.Int.Array[1, 20]).Sample((child, parent, tokens) =>
        {
            var body = Body(w => FrameWriter.WriteLinkRequest(w, 1, child, parent, tokens));
            var readChild = RequestBody.ParseLink(body, Limits, out var readParent, out var readTokens);
            Assert.Equal(child, readChild.ToArray());
            Assert.Equal(parent, readParent.ToArray());
            Assert.Equal(tokens, Tokens(readTokens));
            for (var cut = 0; cut < body.Length; cut++)
            {
                Assert.Throws<ProtocolException>(() => RequestBody.ParseLink(body.AsSpan(0, cut), Limits, out _, out _));
            }
        });
    }

    [Fact]
    public void Children_requests_and_responses_round_trip()
    {
        Gen.Select(Gen.Byte.Array[1, 8], Gen.Int[1, 16], Gen.Int.Array[0, 20]).Sample((parent, max, next) =>
        {
            var body = Body(w => FrameWriter.WriteChildrenRequest(w, 1, parent, max, next));
            var readParent = RequestBody.ParseChildren(body, Limits, out var readMax, out var readNext);
            Assert.Equal(parent, readParent.ToArray());
            Assert.Equal(max, readMax);
            Assert.Equal(next, Tokens(readNext));
        });

        Gen.Select(Gen.Byte.Array[1, 8], Gen.Int.Array[1, 20]).Array[0, 4].Sample(children =>
        {
            var list = children.Select(c => (c.Item1, c.Item2)).ToList();
            var body = Body(w => FrameWriter.WriteChildrenResponse(w, 1, list));
            var read = ResponseBody.ParseChildren(body, 4, Limits);
            Assert.Equal(list.Count, read.Count);
            for (var i = 0; i < list.Count; i++)
            {
                Assert.Equal(list[i].Item1, read[i].Key);
                Assert.Equal(list[i].Item2, read[i].Tokens);
            }

            for (var cut = 0; cut < body.Length; cut++)
            {
                Assert.Throws<ProtocolException>(() => ResponseBody.ParseChildren(body.AsSpan(0, cut), 4, Limits));
            }
        });
    }

    [Fact]
    public void A_response_with_more_children_than_asked_or_a_lying_token_count_is_refused()
    {
        var body = Body(w => FrameWriter.WriteChildrenResponse(w, 1, [([1], [1, 2]), ([2], [3])]));
        Assert.Throws<ProtocolException>(() => ResponseBody.ParseChildren(body, 1, Limits));
        var lying = body.ToArray();
        BinaryPrimitives.WriteUInt32LittleEndian(lying.AsSpan(2 + 3), 1_000_000); // the first child's token count
        Assert.Throws<ProtocolException>(() => ResponseBody.ParseChildren(lying, 2, Limits));
    }
}
