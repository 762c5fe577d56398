using System.Buffers;
using System.Text;
using System.Text.Json;
using LMCacheSharp.Core.Codecs;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Protocol;
using LMCacheSharp.Serving.OpenAi;

namespace LMCacheSharp.Fuzz;

/// <summary>A target: returns for any input the code under test handles; throws (and so crashes under afl) otherwise.</summary>
internal delegate void FuzzTarget(ReadOnlySpan<byte> input);

/// <summary>
/// The long-run fuzz targets: the same code and the same rules as the CI mutation loops (MutationFuzzTests,
/// OpenAiRequestParserFuzzTests), driven by afl++ or libFuzzer instead of a seeded mutator.
/// </summary>
internal static class FuzzTargets
{
    private static readonly KvFormat Format = new(2, 16, 16, KvDataType.F16, KvLayout.LayerKV);
    private static readonly KvBufferPool Pool = new();

    public static IReadOnlyList<string> Names { get; } = ["frames", "envelope", "openai"];

    public static FuzzTarget? Find(string name) => name switch
    {
        "frames" => Frames,
        "envelope" => Envelope,
        "openai" => OpenAi,
        _ => null,
    };

    /// <summary>The frame reader and every request body parser, the way the server reads a stream: only ProtocolException.</summary>
    public static void Frames(ReadOnlySpan<byte> input)
    {
        try
        {
            Shared.ProtocolParsing.ParseAll(input.ToArray());
        }
        catch (ProtocolException)
        {
            // A framing violation: the server sends one error frame and closes.
        }
    }

    /// <summary>Chunk envelope parsing (under the key its header names): a status, never an exception, never a wrong length.</summary>
    public static void Envelope(ReadOnlySpan<byte> input)
    {
        if (ChunkEnvelope.TryReadHeader(input, out var header) == ChunkReadStatus.Ok && header.Format.PayloadLength(header.TokenCount) != header.RawLength)
        {
            throw new InvalidOperationException("a header was accepted with a raw length that does not match its format");
        }

        var key = input.Length >= 96 ? new ChunkHash(input.Slice(64, ChunkHash.Size)) : default;
        var status = ChunkEnvelope.TryDeserialize(input, key, null, Pool, out var chunk);
        if ((status == ChunkReadStatus.Ok) != (chunk is not null) || !Enum.IsDefined(status))
        {
            throw new InvalidOperationException($"status {status} with chunk {(chunk is null ? "null" : "set")}");
        }

        if (chunk is not null)
        {
            var consistent = chunk.Key == key && chunk.Length == chunk.Format.PayloadLength(chunk.TokenCount) && chunk.VerifyChecksum();
            chunk.Release();
            if (!consistent)
            {
                throw new InvalidOperationException("an accepted chunk does not match its header or checksum");
            }
        }

        if (Pool.RentedCount != 0)
        {
            throw new InvalidOperationException($"{Pool.RentedCount} pooled buffers leaked");
        }
    }

    /// <summary>The OpenAI request parsers after JsonDocument, as the endpoint runs them: only JsonException and OpenAiRequestException.</summary>
    public static void OpenAi(ReadOnlySpan<byte> input)
    {
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(input.ToArray());
        }
        catch (JsonException)
        {
            return;
        }

        using (document)
        {
            try
            {
                OpenAiRequestParser.ParseCompletion(document.RootElement);
            }
            catch (OpenAiRequestException)
            {
            }

            try
            {
                OpenAiRequestParser.ParseChat(document.RootElement);
            }
            catch (OpenAiRequestException)
            {
            }
        }
    }

    /// <summary>Valid inputs of a target, for afl's input folder (scripts/fuzz.sh adds the corpus folders' files).</summary>
    public static IEnumerable<byte[]> Seeds(string target)
    {
        switch (target)
        {
            case "frames":
                {
                    var w = new ArrayBufferWriter<byte>();
                    FrameWriter.WriteEmpty(w, Opcode.Ping, StatusCode.Ok, 1);
                    yield return Take(w);
                    FrameWriter.WritePut(w, 1, "key"u8, [1, 2, 3, 4, 5]);
                    FrameWriter.WriteKeyRequest(w, Opcode.Get, 2, "key"u8);
                    FrameWriter.WriteKeyListRequest(w, Opcode.MultiGet, 3, ["a"u8.ToArray(), "key"u8.ToArray()]);
                    FrameWriter.WriteKeyListRequest(w, Opcode.ExistsPrefix, 4, ["a"u8.ToArray(), "b"u8.ToArray()]);
                    FrameWriter.WriteKeyRequest(w, Opcode.Delete, 5, "a"u8);
                    FrameWriter.WriteEmpty(w, Opcode.Stats, StatusCode.Ok, 6);
                    yield return Take(w);
                    FrameWriter.WriteAuth(w, 1, "token"u8);
                    FrameWriter.WriteEmpty(w, Opcode.Clear, StatusCode.Ok, 2);
                    FrameWriter.WritePut(w, 3, new byte[32], new byte[256]);
                    yield return Take(w);
                    break;
                }

            case "envelope":
                foreach (var (tokens, codec) in new[] { (4, "naive"), (16, "lz4"), (1, "zstd"), (8, "naive"), (8, "int8"), (4, "fp8") })
                {
                    var chunk = Pool.Rent((int)Format.PayloadLength(tokens));
                    try
                    {
                        new Random(tokens).NextBytes(chunk.Span);
                        if (codec is "int8" or "fp8")
                        {
                            chunk.Span.Clear(); // finite F16 values, which the lossy codecs encode
                        }

                        var key = new byte[ChunkHash.Size];
                        key[0] = (byte)tokens;
                        key[1] = (byte)codec[0];
                        chunk.Key = new ChunkHash(key);
                        chunk.TokenCount = tokens;
                        chunk.Format = Format;
                        chunk.SealChecksum();
                        var c = KvCodecs.Find(codec)!;
                        var bytes = new byte[ChunkEnvelope.MaxSerializedLength(chunk, c)];
                        yield return bytes[..ChunkEnvelope.Serialize(chunk, c, bytes)];
                    }
                    finally
                    {
                        chunk.Release();
                    }
                }

                break;
            case "openai":
                foreach (var body in new[]
                {
                    """{"model":"tiny","prompt":"Once upon a time","max_tokens":16,"temperature":0,"stop":["\n","."],"seed":42}""",
                    """{"prompt":[1,2,3,4],"stream":true,"stream_options":{"include_usage":true},"kv_transfer_params":{"lmcache.skip_save":true,"lmcache.tag.user":"a"}}""",
                    """{"prompt":[[11,12]],"n":1,"best_of":1,"cache_salt":"t","echo":true,"ignore_eos":true}""",
                    """{"messages":[{"role":"system","content":"terse"},{"role":"user","content":[{"type":"text","text":"hi"}]},{"role":"assistant","content":null}],"max_completion_tokens":8,"top_p":0.5}""",
                })
                {
                    yield return Encoding.UTF8.GetBytes(body);
                }

                break;
        }
    }

    private static byte[] Take(ArrayBufferWriter<byte> w)
    {
        var bytes = w.WrittenSpan.ToArray();
        w.Clear();
        return bytes;
    }
}
