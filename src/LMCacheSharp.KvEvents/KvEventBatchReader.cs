using System.Buffers;
using System.Buffers.Binary;
using MessagePack;

namespace LMCacheSharp.KvEvents;

/// <summary>
/// Decodes a msgpack <c>KVEventBatch</c> from lmcache or from vLLM. Lenient where vLLM's format has varied: the batch and
/// each event may be an array (msgspec's <c>array_like</c>, tag first) or a map (keys by field name, the tag under
/// <c>type</c>); trailing array elements and unknown map keys are skipped (newer fields such as <c>lora_name</c>); a
/// block hash may be a signed or unsigned 64-bit integer (taken as its two's-complement <see cref="long"/>) or raw digest
/// bytes (vLLM without <c>VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES</c>: the last 8 bytes, big-endian, as vLLM converts them).
/// An event of an unknown type becomes <see cref="UnknownKvEvent"/>. Anything else throws
/// <see cref="KvEventFormatException"/>; lists are checked against <see cref="MaxItems"/> before anything is allocated.
/// </summary>
public static class KvEventBatchReader
{
    /// <summary>Longest list accepted (events in a batch, hashes or token ids in an event): 16,777,216.</summary>
    public const int MaxItems = 1 << 24;

    /// <summary>Decodes one payload.</summary>
    public static KvEventBatch Read(ReadOnlyMemory<byte> payload)
    {
        var reader = new MessagePackReader(payload);
        try
        {
            var batch = ReadBatch(ref reader);
            return batch;
        }
        catch (Exception e) when (e is MessagePackSerializationException or EndOfStreamException or OverflowException or InvalidOperationException)
        {
            throw new KvEventFormatException(KvEventFormatError.Malformed, "not valid msgpack: " + e.Message);
        }
    }

    private static KvEventBatch ReadBatch(ref MessagePackReader reader)
    {
        double ts = 0;
        List<KvWireEvent>? events = null;
        int? rank = null;
        if (reader.NextMessagePackType == MessagePackType.Array)
        {
            var n = reader.ReadArrayHeader();
            if (n < 2)
            {
                throw new KvEventFormatException(KvEventFormatError.NotABatch, $"a batch is [ts, events, rank], got an array of {n}");
            }

            ts = ReadTimestamp(ref reader);
            events = ReadEvents(ref reader);
            if (n > 2)
            {
                rank = ReadOptionalInt(ref reader);
            }

            Skip(ref reader, n - 3);
        }
        else if (reader.NextMessagePackType == MessagePackType.Map)
        {
            var n = reader.ReadMapHeader();
            for (var i = 0; i < n; i++)
            {
                switch (ReadKey(ref reader))
                {
                    case "ts":
                        ts = ReadTimestamp(ref reader);
                        break;
                    case "events":
                        events = ReadEvents(ref reader);
                        break;
                    case "data_parallel_rank":
                        rank = ReadOptionalInt(ref reader);
                        break;
                    default:
                        reader.Skip();
                        break;
                }
            }
        }
        else
        {
            throw new KvEventFormatException(KvEventFormatError.NotABatch, $"a batch is an array or map, got {reader.NextMessagePackType}");
        }

        return events is null
            ? throw new KvEventFormatException(KvEventFormatError.NotABatch, "the batch has no events")
            : new KvEventBatch(ts, events, rank);
    }

    private static double ReadTimestamp(ref MessagePackReader reader) =>
        reader.NextMessagePackType is MessagePackType.Float or MessagePackType.Integer
            ? reader.ReadDouble()
            : throw new KvEventFormatException(KvEventFormatError.BadField, $"ts must be a number, got {reader.NextMessagePackType}");

    private static List<KvWireEvent> ReadEvents(ref MessagePackReader reader)
    {
        var n = ReadListHeader(ref reader, "events");
        var events = new List<KvWireEvent>(Math.Min(n, 1024));
        for (var i = 0; i < n; i++)
        {
            events.Add(ReadEvent(ref reader));
        }

        return events;
    }

    private static KvWireEvent ReadEvent(ref MessagePackReader reader)
    {
        if (reader.NextMessagePackType == MessagePackType.Array)
        {
            var n = reader.ReadArrayHeader();
            if (n < 1 || reader.NextMessagePackType != MessagePackType.String)
            {
                throw new KvEventFormatException(KvEventFormatError.NotAnEvent, "an event is an array that starts with its tag");
            }

            var tag = reader.ReadString()!;
            var fields = new EventFields();
            string[] order = tag switch
            {
                KvEventWire.BlockStored => ["block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium"],
                KvEventWire.BlockRemoved => ["block_hashes", "medium"],
                _ => [],
            };
            var i = 1;
            for (; i < n && i - 1 < order.Length; i++)
            {
                fields.Read(ref reader, order[i - 1]);
            }

            Skip(ref reader, n - i);
            return fields.ToEvent(tag);
        }

        if (reader.NextMessagePackType == MessagePackType.Map)
        {
            var n = reader.ReadMapHeader();
            var fields = new EventFields();
            string? tag = null;
            for (var i = 0; i < n; i++)
            {
                var key = ReadKey(ref reader);
                if (key == "type")
                {
                    tag = reader.NextMessagePackType == MessagePackType.String ? reader.ReadString() : null;
                    if (tag is null)
                    {
                        throw new KvEventFormatException(KvEventFormatError.NotAnEvent, "an event's type must be a string");
                    }
                }
                else
                {
                    fields.Read(ref reader, key);
                }
            }

            return tag is null ? throw new KvEventFormatException(KvEventFormatError.NotAnEvent, "an event map has no type") : fields.ToEvent(tag);
        }

        throw new KvEventFormatException(KvEventFormatError.NotAnEvent, $"an event is a tagged array or map, got {reader.NextMessagePackType}");
    }

    private sealed class EventFields
    {
        private long[]? _hashes;
        private long? _parent;
        private int[]? _tokens;
        private int? _blockSize;
        private int? _loraId;
        private string? _medium;

        public void Read(ref MessagePackReader reader, string name)
        {
            switch (name)
            {
                case "block_hashes":
                    var n = ReadListHeader(ref reader, name);
                    _hashes = new long[n];
                    for (var i = 0; i < n; i++)
                    {
                        _hashes[i] = ReadHash(ref reader);
                    }

                    break;
                case "parent_block_hash":
                    _parent = reader.TryReadNil() ? null : ReadHash(ref reader);
                    break;
                case "token_ids":
                    var t = ReadListHeader(ref reader, name);
                    _tokens = new int[t];
                    for (var i = 0; i < t; i++)
                    {
                        _tokens[i] = ReadInt(ref reader, name);
                    }

                    break;
                case "block_size":
                    _blockSize = ReadInt(ref reader, name);
                    break;
                case "lora_id":
                    _loraId = ReadOptionalInt(ref reader);
                    break;
                case "medium":
                    _medium = reader.TryReadNil() ? null : reader.NextMessagePackType == MessagePackType.String
                        ? reader.ReadString()
                        : throw new KvEventFormatException(KvEventFormatError.BadField, "medium must be a string or nil");
                    break;
                default:
                    reader.Skip();
                    break;
            }
        }

        public KvWireEvent ToEvent(string tag) => tag switch
        {
            KvEventWire.BlockStored => new BlockStoredEvent(
                _hashes ?? throw Missing(tag, "block_hashes"), _parent, _tokens ?? throw Missing(tag, "token_ids"),
                _blockSize ?? throw Missing(tag, "block_size"), _loraId, _medium),
            KvEventWire.BlockRemoved => new BlockRemovedEvent(_hashes ?? throw Missing(tag, "block_hashes"), _medium),
            KvEventWire.AllBlocksCleared => new AllBlocksClearedEvent(),
            _ => new UnknownKvEvent(tag),
        };

        private static KvEventFormatException Missing(string tag, string field) =>
            new(KvEventFormatError.BadField, $"{tag} has no {field}");
    }

    private static long ReadHash(ref MessagePackReader reader)
    {
        switch (reader.NextMessagePackType)
        {
            case MessagePackType.Integer:
                return reader.NextCode == MessagePackCode.UInt64 ? unchecked((long)reader.ReadUInt64()) : reader.ReadInt64();
            case MessagePackType.Binary:
                var bytes = reader.ReadBytes()!.Value;
                if (bytes.Length < 8)
                {
                    throw new KvEventFormatException(KvEventFormatError.BadField, $"a block hash digest must have at least 8 bytes, got {bytes.Length}");
                }

                Span<byte> last = stackalloc byte[8];
                bytes.Slice(bytes.Length - 8).CopyTo(last);
                return BinaryPrimitives.ReadInt64BigEndian(last);
            default:
                throw new KvEventFormatException(KvEventFormatError.BadField, $"a block hash must be an integer or bytes, got {reader.NextMessagePackType}");
        }
    }

    private static int ReadInt(ref MessagePackReader reader, string name) =>
        reader.NextMessagePackType == MessagePackType.Integer
            ? reader.ReadInt32()
            : throw new KvEventFormatException(KvEventFormatError.BadField, $"{name} must hold integers, got {reader.NextMessagePackType}");

    private static int? ReadOptionalInt(ref MessagePackReader reader) => reader.TryReadNil() ? null : ReadInt(ref reader, "an integer field");

    private static int ReadListHeader(ref MessagePackReader reader, string name)
    {
        if (reader.NextMessagePackType != MessagePackType.Array)
        {
            throw new KvEventFormatException(KvEventFormatError.BadField, $"{name} must be a list, got {reader.NextMessagePackType}");
        }

        var n = reader.ReadArrayHeader(); // MessagePackReader checks it against the bytes left (at least one per element)
        return n > MaxItems ? throw new KvEventFormatException(KvEventFormatError.TooLarge, $"{name} has {n} items, over {MaxItems}") : n;
    }

    private static string ReadKey(ref MessagePackReader reader) =>
        reader.NextMessagePackType == MessagePackType.String
            ? reader.ReadString()!
            : throw new KvEventFormatException(KvEventFormatError.NotABatch, "map keys must be strings");

    private static void Skip(ref MessagePackReader reader, int count)
    {
        for (var i = 0; i < count; i++)
        {
            reader.Skip();
        }
    }
}
