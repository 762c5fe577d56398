using System.Buffers;
using CsCheck;

namespace LMCacheSharp.Protocol.Tests;

public class ResponseBodyTests
{
    private static byte[] Body(Action<ArrayBufferWriter<byte>> write)
    {
        var w = new ArrayBufferWriter<byte>();
        write(w);
        return w.WrittenSpan[FrameHeader.Size..].ToArray();
    }

    [Fact]
    public void Stats_round_trip()
    {
        var gen = Gen.Select(Gen.String[Gen.Char['a', 'z'], 1, 30], Gen.Long).Array[0, 20];
        gen.Sample(pairs =>
        {
            var unique = pairs.DistinctBy(p => p.Item1).Select(p => KeyValuePair.Create(p.Item1, p.Item2)).ToList();
            var parsed = ResponseBody.ParseStats(Body(w => FrameWriter.WriteStatsResponse(w, 1, unique)));
            Assert.Equal(unique.ToDictionary(), parsed);
        }, iter: 200);
    }

    [Fact]
    public void Counts_round_trip_and_a_count_over_the_keys_asked_is_invalid()
    {
        var body = Body(w => FrameWriter.WriteCountResponse(w, 1, 5));
        Assert.Equal(5, ResponseBody.ParseCount(body, 128));
        Assert.Equal(ProtocolError.InvalidResponse, Assert.Throws<ProtocolException>(() => ResponseBody.ParseCount(body, 4)).Reason);
        Assert.Throws<ProtocolException>(() => ResponseBody.ParseCount(body[..3], 128));
    }

    [Fact]
    public void Multi_get_entries_round_trip_with_absent_and_omitted_markers()
    {
        var w = new ArrayBufferWriter<byte>();
        byte[] a = [1, 2, 3];
        FrameWriter.WriteMultiGetHead(w, 9, 2 + 4 + 3 + 4 + 4, 3);
        FrameWriter.WriteMultiGetEntryHead(w, 3);
        FrameWriter.WriteRaw(w, a);
        FrameWriter.WriteMultiGetEntryHead(w, ResponseBody.MultiGetAbsent);
        FrameWriter.WriteMultiGetEntryHead(w, ResponseBody.MultiGetOmitted);
        var input = new ReadOnlySequence<byte>(w.WrittenMemory);
        Assert.True(FrameReader.TryReadFrame(ref input, ProtocolLimits.Default, false, out var header, out var seq));
        var body = seq.ToArray();
        var omitted = new bool[3];
        var entries = ResponseBody.ParseMultiGet(body, 3, omitted);
        Assert.Equal(a, body[entries[0]!.Value]);
        Assert.Null(entries[1]);
        Assert.Null(entries[2]);
        Assert.Equal([false, false, true], omitted);
        Assert.Throws<ProtocolException>(() => ResponseBody.ParseMultiGet(body[..^1], 3, omitted));
        Assert.Throws<ProtocolException>(() => ResponseBody.ParseMultiGet(body, 2, omitted));
    }

    [Fact]
    public void Error_messages_are_cut_and_never_throw()
    {
        var body = Body(w => FrameWriter.WriteError(w, Opcode.Get, StatusCode.BadRequest, 1, new string('x', 5000)));
        Assert.True(body.Length <= ResponseBody.MaxMessageBytes);
        Assert.Equal("\uFFFD", ResponseBody.ParseMessage([0xFF]));
    }
}
