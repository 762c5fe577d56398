using System.Buffers;
using System.IO.Hashing;
using LMCacheSharp.Core.Codecs;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Protocol;

namespace LMCacheSharp.Remote;

/// <summary>
/// Receives a GET response holding a <see cref="ChunkEnvelope"/>: reads the 128-byte header, checks it, then (raw codec)
/// receives the payload straight from the socket into a chunk rented from the pool and verifies its checksum, or (other
/// codecs) receives the envelope into a pooled array and decodes it. Anything that does not check out is a rejection.
/// </summary>
internal sealed unsafe class EnvelopeHandler(ChunkHash key, KvBufferPool pool) : ResponseHandler<RemoteRead>
{
    private readonly byte[] _header = new byte[ChunkEnvelope.HeaderSize];
    private FrameHeader _frame;
    private ChunkEnvelopeHeader _envelope;
    private ChunkReadStatus? _rejected;
    private KvChunk? _chunk;
    private byte[]? _staging;
    private byte[]? _error;

    public override Opcode Opcode => Opcode.Get;

    public override void OnHeader(in FrameHeader header)
    {
        _frame = header;
        if (header.Status is not (StatusCode.Ok or StatusCode.NotFound))
        {
            _error = new byte[Math.Min(header.BodyLength, ResponseBody.MaxMessageBytes)];
        }
        else if (header.Status == StatusCode.Ok && header.BodyLength < ChunkEnvelope.HeaderSize)
        {
            _rejected = ChunkReadStatus.Truncated;
        }
    }

    public override Memory<byte> NextBuffer(int offset, int remaining)
    {
        if (_error is not null)
        {
            return offset < _error.Length ? _error.AsMemory(offset, Math.Min(remaining, _error.Length - offset)) : Memory<byte>.Empty;
        }

        if (_rejected is not null || _frame.Status != StatusCode.Ok)
        {
            return Memory<byte>.Empty;
        }

        if (offset < ChunkEnvelope.HeaderSize)
        {
            return _header.AsMemory(offset, ChunkEnvelope.HeaderSize - offset);
        }

        if (offset == ChunkEnvelope.HeaderSize)
        {
            StartPayload();
            if (_rejected is not null)
            {
                return Memory<byte>.Empty;
            }
        }

        var payloadOffset = offset - ChunkEnvelope.HeaderSize;
        if (_chunk is not null)
        {
            return new NativeBufferMemory((byte*)_chunk.Pointer + payloadOffset, remaining).Memory;
        }

        return _staging.AsMemory(offset, remaining);
    }

    public override void OnComplete()
    {
        if (_error is not null)
        {
            Fail(new CacheServerException(_frame.Status, ResponseBody.ParseMessage(_error)));
            return;
        }

        if (_frame.Status == StatusCode.NotFound)
        {
            Deliver(RemoteRead.Miss);
            return;
        }

        if (_rejected is { } rejected)
        {
            Deliver(RemoteRead.Reject(rejected));
            return;
        }

        if (_frame.BodyLength == ChunkEnvelope.HeaderSize)
        {
            StartPayload(); // an empty payload: no NextBuffer call reached offset 128
            if (_rejected is { } status)
            {
                Deliver(RemoteRead.Reject(status));
                return;
            }
        }

        if (_staging is not null)
        {
            var staging = _staging;
            _staging = null;
            try
            {
                Deliver(ChunkWire.Read(staging.AsSpan(0, _frame.BodyLength), key, pool));
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(staging);
            }

            return;
        }

        var chunk = _chunk!;
        _chunk = null;
        if (XxHash3.HashToUInt64(chunk.Span) != _envelope.EncodedChecksum)
        {
            chunk.Release();
            Deliver(RemoteRead.Reject(ChunkReadStatus.ChecksumMismatch));
            return;
        }

        chunk.Key = _envelope.Key;
        chunk.TokenCount = _envelope.TokenCount;
        chunk.Format = _envelope.Format;
        chunk.Checksum = _envelope.RawChecksum;
        chunk.Seal();
        Deliver(new RemoteRead(chunk, null));
    }

    public override void OnFailed(Exception error)
    {
        _chunk?.Release();
        _chunk = null;
        if (_staging is not null)
        {
            ArrayPool<byte>.Shared.Return(_staging);
            _staging = null;
        }

        Fail(error);
    }

    protected override void ReleaseResult(RemoteRead result) => result.Chunk?.Release();

    private void StartPayload()
    {
        var status = ChunkEnvelope.TryReadHeader(_header, out _envelope);
        if (status == ChunkReadStatus.Ok && _envelope.Key != key)
        {
            status = ChunkReadStatus.KeyMismatch;
        }

        if (status == ChunkReadStatus.Ok && _frame.BodyLength - ChunkEnvelope.HeaderSize != _envelope.EncodedLength)
        {
            status = ChunkReadStatus.LengthMismatch;
        }

        if (status != ChunkReadStatus.Ok)
        {
            _rejected = status;
            return;
        }

        if (_envelope.Codec == KvCodecId.Raw && _envelope.RawLength == _envelope.EncodedLength && _envelope.RawChecksum == _envelope.EncodedChecksum)
        {
            _chunk = pool.Rent(_envelope.RawLength);
        }
        else
        {
            _staging = ArrayPool<byte>.Shared.Rent(_frame.BodyLength);
            _header.CopyTo(_staging, 0);
        }
    }
}
