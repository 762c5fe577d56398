using System.Buffers;
using LMCacheSharp.Protocol;

namespace LMCacheSharp.Fuzz.Shared;

/// <summary>
/// The cache server's reading of a request stream, without a session: frames one after the other, each body parsed by
/// its opcode's parser. Shared by the CI mutation loop (MutationFuzzTests) and the afl++ target (FuzzTargets.Frames).
/// </summary>
internal static class ProtocolParsing
{
    /// <summary>Small limits, so that mutated lengths meet them often.</summary>
    public static readonly ProtocolLimits Limits = new() { MaxKeyBytes = 64, MaxValueBytes = 1 << 20, MaxKeysPerRequest = 64, MaxFrameBytes = (1 << 20) + 4096 };

    /// <summary>
    /// Reads every whole frame of <paramref name="input"/> and parses its body. A request-level error (the server answers
    /// and reads on) is swallowed; a framing violation throws <see cref="ProtocolException"/>; anything else is a bug.
    /// </summary>
    public static void ParseAll(byte[] input)
    {
        var buffer = new ReadOnlySequence<byte>(input);
        while (FrameReader.TryReadFrame(ref buffer, Limits, isRequest: true, out var header, out var body))
        {
            var bytes = body.ToArray();
            try
            {
                switch (header.Opcode)
                {
                    case Opcode.Get or Opcode.Delete:
                        RequestBody.ParseKey(bytes, Limits);
                        break;
                    case Opcode.Put:
                        RequestBody.TryReadPutHead(body, header.BodyLength, Limits, out _, out _);
                        RequestBody.ParsePut(bytes, Limits, out _);
                        break;
                    case Opcode.PutInGroup:
                        RequestBody.ParsePutInGroup(bytes, Limits, out _, out _);
                        break;
                    case Opcode.MultiGet or Opcode.ExistsPrefix or Opcode.Pin or Opcode.Unpin:
                        var keys = new KeyListReader(bytes, Limits);
                        while (keys.TryReadNext(out _))
                        {
                        }

                        break;
                    case Opcode.Ping or Opcode.Clear or Opcode.Stats:
                        RequestBody.ParseEmpty(bytes);
                        break;
                    case Opcode.Link:
                        RequestBody.ParseLink(bytes, Limits, out _, out _);
                        break;
                    case Opcode.Children:
                        RequestBody.ParseChildren(bytes, Limits, out _, out _);
                        break;
                }
            }
            catch (ProtocolException e) when (!e.IsFramingViolation)
            {
                // A request-level error: the server answers and goes on with the next frame.
            }
        }
    }
}
