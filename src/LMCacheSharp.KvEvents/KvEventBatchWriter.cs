using System.Buffers;
using LMCacheSharp.Core.Events;
using MessagePack;

namespace LMCacheSharp.KvEvents;

/// <summary>
/// Encodes KV events as vLLM's msgpack <c>KVEventBatch</c>, in the array layout of msgspec's <c>array_like</c> structs
/// that vLLM's example subscriber and Dynamo decode: <c>[ts, [event, ...], data_parallel_rank]</c>, each event a tagged
/// array <c>["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium]</c>,
/// <c>["BlockRemoved", block_hashes, medium]</c> or <c>["AllBlocksCleared"]</c>. Consecutive events are merged where
/// vLLM's format says the same in one: removals from one tier into one <c>BlockRemoved</c>, and stores of whole chunks
/// in one tier, each the child of the one before, into one <c>BlockStored</c> (as vLLM reports a request's new blocks).
/// </summary>
public static class KvEventBatchWriter
{
    /// <summary>Writes one batch of <paramref name="events"/> into <paramref name="output"/>.</summary>
    /// <param name="output">Where the msgpack bytes go.</param>
    /// <param name="timestamp">Seconds since the Unix epoch.</param>
    /// <param name="events">The events, in order (at least one).</param>
    /// <param name="blockSize">Tokens per chunk (the engine's chunk size).</param>
    /// <param name="dataParallelRank">The third field of the batch (vLLM's DP rank; 0 for one instance).</param>
    public static void Write(IBufferWriter<byte> output, double timestamp, IReadOnlyList<KvEvent> events, int blockSize, int dataParallelRank = 0)
    {
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(events);
        ArgumentOutOfRangeException.ThrowIfLessThan(blockSize, 1);
        var writer = new MessagePackWriter(output);
        writer.WriteArrayHeader(3);
        writer.Write(timestamp);
        var groups = Group(events, blockSize);
        writer.WriteArrayHeader(groups.Count);
        foreach (var (start, count) in groups)
        {
            var first = events[start];
            switch (first.Kind)
            {
                case KvEventKind.Stored:
                    writer.WriteArrayHeader(7);
                    writer.Write(KvEventWire.BlockStored);
                    writer.WriteArrayHeader(count);
                    for (var i = start; i < start + count; i++)
                    {
                        writer.Write(KvEventWire.BlockHash(events[i].Key));
                    }

                    if (first.Parent is { } parent)
                    {
                        writer.Write(KvEventWire.BlockHash(parent));
                    }
                    else
                    {
                        writer.WriteNil();
                    }

                    var tokens = 0;
                    for (var i = start; i < start + count; i++)
                    {
                        tokens += events[i].Tokens?.Length ?? 0;
                    }

                    writer.WriteArrayHeader(tokens);
                    for (var i = start; i < start + count; i++)
                    {
                        foreach (var token in events[i].Tokens ?? [])
                        {
                            writer.Write(token);
                        }
                    }

                    // vLLM's offload placeholder shape for a chunk whose tokens are unknown: no tokens, block size 0.
                    writer.Write(first.Tokens is null ? 0 : blockSize);
                    writer.WriteNil(); // lora_id
                    writer.Write(KvEventWire.MediumName(first.Medium));
                    break;
                case KvEventKind.Removed:
                    writer.WriteArrayHeader(3);
                    writer.Write(KvEventWire.BlockRemoved);
                    writer.WriteArrayHeader(count);
                    for (var i = start; i < start + count; i++)
                    {
                        writer.Write(KvEventWire.BlockHash(events[i].Key));
                    }

                    writer.Write(KvEventWire.MediumName(first.Medium));
                    break;
                default:
                    writer.WriteArrayHeader(1);
                    writer.Write(KvEventWire.AllBlocksCleared);
                    break;
            }
        }

        writer.Write(dataParallelRank);
        writer.Flush();
    }

    /// <summary>Writes one batch and returns its bytes.</summary>
    public static byte[] ToArray(double timestamp, IReadOnlyList<KvEvent> events, int blockSize, int dataParallelRank = 0)
    {
        var buffer = new ArrayBufferWriter<byte>(256);
        Write(buffer, timestamp, events, blockSize, dataParallelRank);
        return buffer.WrittenSpan.ToArray();
    }

    // Runs of events that go out as one wire event: (start, count).
    private static List<(int Start, int Count)> Group(IReadOnlyList<KvEvent> events, int blockSize)
    {
        var groups = new List<(int, int)>();
        var i = 0;
        while (i < events.Count)
        {
            var first = events[i];
            var n = 1;
            if (first.Kind == KvEventKind.Removed)
            {
                while (i + n < events.Count && events[i + n].Kind == KvEventKind.Removed && events[i + n].Medium == first.Medium)
                {
                    n++;
                }
            }
            else if (first.Kind == KvEventKind.Stored && IsWhole(first, blockSize))
            {
                while (i + n < events.Count && events[i + n] is { Kind: KvEventKind.Stored } next && next.Medium == first.Medium &&
                       next.Parent == events[i + n - 1].Key && IsWhole(next, blockSize))
                {
                    n++;
                }
            }

            groups.Add((i, n));
            i += n;
        }

        return groups;
    }

    private static bool IsWhole(in KvEvent e, int blockSize) => e.Tokens is { } t && t.Length == blockSize;
}
