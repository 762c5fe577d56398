using System.Buffers;

namespace LMCacheSharp.Protocol.Tests;

/// <summary>Builds multi-segment sequences: split at given offsets, or one byte per segment.</summary>
internal static class Segments
{
    public static ReadOnlySequence<byte> Split(byte[] data, params int[] offsets)
    {
        var cuts = offsets.Where(o => o > 0 && o < data.Length).Distinct().Order().Append(data.Length).ToArray();
        var previous = 0;
        Segment? first = null, last = null;
        foreach (var cut in cuts)
        {
            var segment = new Segment(data.AsMemory(previous, cut - previous), last);
            first ??= segment;
            last = segment;
            previous = cut;
        }

        return first is null ? ReadOnlySequence<byte>.Empty : new ReadOnlySequence<byte>(first, 0, last!, last!.Memory.Length);
    }

    public static ReadOnlySequence<byte> BytePerSegment(byte[] data) => Split(data, [.. Enumerable.Range(1, Math.Max(data.Length - 1, 0))]);

    private sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        public Segment(ReadOnlyMemory<byte> memory, Segment? previous)
        {
            Memory = memory;
            if (previous is not null)
            {
                RunningIndex = previous.RunningIndex + previous.Memory.Length;
                previous.Next = this;
            }
        }
    }
}
