using System.Buffers;
using System.Runtime.InteropServices;
using LMCacheSharp.Core.Codecs;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Remote;

/// <summary>
/// A chunk in its serialized (<see cref="ChunkEnvelope"/>) form, ready to send: with the raw codec the 128-byte header and
/// the chunk's own native buffer (no copy); with another codec one pooled array. Dispose after the send.
/// </summary>
internal sealed class SerializedChunk : IDisposable
{
    private byte[]? _pooled;
    private NativeBufferMemory? _native;

    private SerializedChunk(ReadOnlySequence<byte> bytes, byte[]? pooled, NativeBufferMemory? native)
    {
        Bytes = bytes;
        _pooled = pooled;
        _native = native;
    }

    /// <summary>Header and payload.</summary>
    public ReadOnlySequence<byte> Bytes { get; }

    /// <summary>Total length.</summary>
    public int Length => (int)Bytes.Length;

    /// <summary>Serializes <paramref name="chunk"/>; the chunk must stay referenced until this is disposed.</summary>
    public static unsafe SerializedChunk Create(KvChunk chunk, IKvCodec codec)
    {
        if (codec.Id == KvCodecId.Raw)
        {
            var header = new byte[ChunkEnvelope.HeaderSize];
            ChunkEnvelope.WriteHeader(new ChunkEnvelopeHeader(codec.Id, chunk.Format, chunk.TokenCount, chunk.Length, chunk.Length, chunk.Checksum,
                chunk.Checksum, chunk.Key), header);
            var native = new NativeBufferMemory((byte*)chunk.Pointer, chunk.Length);
            return new SerializedChunk(Segment.Join(header, native.Memory), null, native);
        }

        var pooled = ArrayPool<byte>.Shared.Rent(ChunkEnvelope.MaxSerializedLength(chunk, codec));
        var length = ChunkEnvelope.Serialize(chunk, codec, pooled);
        return new SerializedChunk(new ReadOnlySequence<byte>(pooled, 0, length), pooled, null);
    }

    /// <summary>Copies the whole envelope into one array (for stores that need contiguous values).</summary>
    public ReadOnlyMemory<byte> ToContiguous(out byte[]? rented)
    {
        if (Bytes.IsSingleSegment)
        {
            rented = null;
            return Bytes.First;
        }

        rented = ArrayPool<byte>.Shared.Rent(Length);
        Bytes.CopyTo(rented);
        return rented.AsMemory(0, Length);
    }

    public void Dispose()
    {
        if (_pooled is not null)
        {
            ArrayPool<byte>.Shared.Return(_pooled);
            _pooled = null;
        }

        _native = null;
    }

    private sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        private Segment(ReadOnlyMemory<byte> memory) => Memory = memory;

        public static ReadOnlySequence<byte> Join(ReadOnlyMemory<byte> first, ReadOnlyMemory<byte> second)
        {
            var a = new Segment(first);
            var b = new Segment(second) { RunningIndex = first.Length };
            a.Next = b;
            return new ReadOnlySequence<byte>(a, 0, b, second.Length);
        }
    }
}

/// <summary>A <see cref="Memory{T}"/> over native memory that someone else owns (a chunk's buffer, kept alive by a reference).</summary>
internal sealed unsafe class NativeBufferMemory : MemoryManager<byte>
{
    private readonly byte* _pointer;
    private readonly int _length;

    public NativeBufferMemory(byte* pointer, int length)
    {
        _pointer = pointer;
        _length = length;
    }

    public override Span<byte> GetSpan() => new(_pointer, _length);

    public override MemoryHandle Pin(int elementIndex = 0) => new(_pointer + elementIndex);

    public override void Unpin()
    {
    }

    protected override void Dispose(bool disposing)
    {
    }
}

/// <summary>Reads a serialized chunk: whole from a span, or streamed from the cache server straight into a chunk buffer.</summary>
internal static class ChunkWire
{
    /// <summary>The 32 bytes of a key on the wire.</summary>
    public static byte[] KeyBytes(ChunkHash key)
    {
        var bytes = new byte[ChunkHash.Size];
        key.WriteTo(bytes);
        return bytes;
    }

    /// <summary>Checks and decodes a whole envelope.</summary>
    public static RemoteRead Read(ReadOnlySpan<byte> envelope, ChunkHash key, KvBufferPool pool)
    {
        var status = ChunkEnvelope.TryDeserialize(envelope, key, null, pool, out var chunk);
        return status == ChunkReadStatus.Ok ? new RemoteRead(chunk, null) : RemoteRead.Reject(status);
    }
}
