using System.Buffers.Binary;
using LMCacheSharp.Core.Events;
using LMCacheSharp.Core.Keys;

namespace LMCacheSharp.KvEvents;

/// <summary>
/// The constants of vLLM's KV event format (<c>vllm/distributed/kv_events.py</c>) as this project writes and reads it; the
/// format itself is described in docs/fleet.md. A message on the PUB socket is three frames: topic (UTF-8), sequence
/// number (8 bytes, big-endian, from 0, one per batch) and payload (a msgpack <c>KVEventBatch</c>). A replay request to the
/// ROUTER socket is one frame of 8 bytes (big-endian start sequence) behind the REQ envelope's empty delimiter; each answer
/// is [sequence, payload], and the last is [<see cref="EndOfReplay"/>, empty].
/// </summary>
public static class KvEventWire
{
    /// <summary>The tag of a store event.</summary>
    public const string BlockStored = "BlockStored";

    /// <summary>The tag of a removal event.</summary>
    public const string BlockRemoved = "BlockRemoved";

    /// <summary>The tag of a clear event.</summary>
    public const string AllBlocksCleared = "AllBlocksCleared";

    /// <summary>The sequence number of the replay's end marker (-1, sent as 8 bytes 0xFF with an empty payload).</summary>
    public const long EndOfReplay = -1;

    /// <summary>Size of a sequence number frame.</summary>
    public const int SequenceSize = 8;

    /// <summary>The <c>medium</c> of a tier: "CPU", "DISK" or "REMOTE" (upper case, as vLLM's "GPU"/"CPU" and the names
    /// Dynamo's router classifies).</summary>
    public static string MediumName(KvMedium medium) => medium switch
    {
        KvMedium.Cpu => "CPU",
        KvMedium.Disk => "DISK",
        KvMedium.Remote => "REMOTE",
        _ => throw new ArgumentOutOfRangeException(nameof(medium), medium, "unknown medium"),
    };

    /// <summary>The block hash of a chunk: <see cref="ChunkHash.ToInt64"/> (its first 8 bytes, big-endian, signed).</summary>
    public static long BlockHash(ChunkHash key) => key.ToInt64();

    /// <summary>Writes a sequence number frame.</summary>
    public static void WriteSequence(Span<byte> destination, long sequence) => BinaryPrimitives.WriteInt64BigEndian(destination, sequence);

    /// <summary>Reads a sequence number frame; false unless it is exactly <see cref="SequenceSize"/> bytes.</summary>
    public static bool TryReadSequence(ReadOnlySpan<byte> frame, out long sequence)
    {
        sequence = 0;
        if (frame.Length != SequenceSize)
        {
            return false;
        }

        sequence = BinaryPrimitives.ReadInt64BigEndian(frame);
        return true;
    }
}
