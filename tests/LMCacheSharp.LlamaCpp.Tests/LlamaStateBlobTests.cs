using LLama.Native;
using LMCacheSharp.LlamaCpp.Gguf;

namespace LMCacheSharp.LlamaCpp.Tests;

/// <summary>
/// llama.cpp's state blob has no version beyond its magic: these tests pin the format the connector relies on, so a
/// llama.cpp upgrade that changes it fails here instead of turning into misses (or worse) in production.
/// </summary>
public sealed class LlamaStateBlobTests
{
    private const int Chunk = 16;

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void PortableChunksReassembleToTheBytesOfGetData(bool flashAttention)
    {
        using var lm = new LlamaTestModel(TestModels.Get(TestModels.Gqa(GgmlTensorType.F16)), flashAttention);
        Assert.True(LlamaKvCache.TryProbeShape(lm.Handle, (LLamaSeqId)2, out var shape, out var reason), reason);
        var prompt = lm.Tokenize(TestModels.Text, 3 * Chunk);
        var batch = new LLamaBatch();
        for (var i = 0; i < prompt.Length; i++)
        {
            batch.Add(prompt[i], i, LLamaSeqId.Zero, false);
        }

        Assert.Equal(DecodeResult.Ok, lm.Handle.Decode(batch));
        var whole = GetData(lm.Handle, LLamaSeqId.Zero);
        Assert.Equal(LlamaStateBlob.BlobLength(shape, prompt.Length), whole.Length);
        Assert.True(LlamaStateBlob.TryParse(whole, out var info));
        Assert.Equal(prompt.Length, info.Cells);
        Assert.Equal(shape, info.Shape);

        using var connector = new LlamaKvConnector(lm.Handle, shape, LlamaChunkLayout.Portable, (LLamaSeqId)2) { Sequence = LLamaSeqId.Zero };
        var format = connector.Format;
        var chunks = new List<byte[]>();
        for (var c = 0; c < 3; c++)
        {
            var payload = new byte[format.PayloadLength(Chunk)];
            Assert.True(connector.TryReadKv(c * Chunk, Chunk, payload));
            chunks.Add(payload);
        }

        // Reassemble the whole-sequence blob from the chunks, as llama.cpp would write it.
        var n = prompt.Length;
        var assembled = new byte[whole.Length];
        var o = LlamaStateBlob.WriteHeader(assembled, shape, 0, n);
        int k = shape.KRowBytes, v = shape.VRowBytes;
        for (var l = 0; l < shape.Layers; l++)
        {
            o = LlamaStateBlob.WriteKLayerHeader(assembled, o, shape);
            foreach (var chunk in chunks)
            {
                chunk.AsSpan(l * Chunk * (k + v), Chunk * k).CopyTo(assembled.AsSpan(o));
                o += Chunk * k;
            }
        }

        for (var l = 0; l < shape.Layers; l++)
        {
            o = LlamaStateBlob.WriteVLayerHeader(assembled, o, shape);
            if (!shape.VTransposed)
            {
                foreach (var chunk in chunks)
                {
                    chunk.AsSpan((l * Chunk * (k + v)) + (Chunk * k), Chunk * v).CopyTo(assembled.AsSpan(o));
                    o += Chunk * v;
                }
            }
            else
            {
                var el = shape.VElementBytes;
                for (var d = 0; d < v / el; d++)
                {
                    foreach (var chunk in chunks)
                    {
                        chunk.AsSpan((l * Chunk * (k + v)) + (Chunk * k) + (d * Chunk * el), Chunk * el).CopyTo(assembled.AsSpan(o));
                        o += Chunk * el;
                    }
                }
            }
        }

        Assert.Equal(whole.Length, o);
        Assert.True(whole.AsSpan().SequenceEqual(assembled), "the reassembled blob differs from llama_state_seq_get_data");
    }

    [Fact]
    public void TruncatedOrAlteredBlobsDoNotParse()
    {
        using var lm = new LlamaTestModel(TestModels.Get(TestModels.Mha(GgmlTensorType.F16)), flashAttention: true);
        Assert.True(LlamaKvCache.TryProbeShape(lm.Handle, (LLamaSeqId)2, out _, out _));
        var batch = new LLamaBatch();
        for (var i = 0; i < 5; i++)
        {
            batch.Add(10 + i, i, LLamaSeqId.Zero, false);
        }

        Assert.Equal(DecodeResult.Ok, lm.Handle.Decode(batch));
        var blob = GetData(lm.Handle, LLamaSeqId.Zero);
        Assert.True(LlamaStateBlob.TryParse(blob, out _));
        for (var cut = 0; cut < blob.Length; cut += 7)
        {
            Assert.False(LlamaStateBlob.TryParse(blob.AsSpan(0, cut), out _));
        }

        var bad = (byte[])blob.Clone();
        bad[3] ^= 0x80;
        Assert.False(LlamaStateBlob.TryParse(bad, out _));
    }

    private static unsafe byte[] GetData(SafeLLamaContextHandle handle, LLamaSeqId seq)
    {
        var size = handle.GetStateSize(seq);
        var blob = new byte[(int)size];
        fixed (byte* p = blob)
        {
            Assert.Equal(size, handle.GetState(p, size, seq));
        }

        return blob;
    }
}
