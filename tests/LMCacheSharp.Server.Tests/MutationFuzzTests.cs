using System.Buffers;
using System.Buffers.Binary;
using System.IO.Hashing;
using System.IO.Pipelines;
using LMCacheSharp.Core.Codecs;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Protocol;
using Microsoft.Extensions.Logging;

namespace LMCacheSharp.Server.Tests;

/// <summary>
/// Seeded mutation fuzzing that reaches past the magic check: every input starts from a valid frame stream or chunk envelope
/// (built here, plus the files under FuzzCorpus/, where every crasher found is kept) and is mutated in its lengths, opcodes,
/// offsets and bytes. Targets: the frame reader and request parsers; <see cref="CacheSession"/> over in-memory pipes; chunk
/// envelope parsing. Bounded for CI (well under a minute in all); LMCACHE_FUZZ_ITERATIONS scales the counts and
/// LMCACHE_FUZZ_SEED picks another seed. Each target prints its executions.
/// </summary>
public class MutationFuzzTests
{
    private static readonly ProtocolLimits Limits = LMCacheSharp.Fuzz.Shared.ProtocolParsing.Limits;
    private static readonly KvFormat Format = new(2, 16, 16, KvDataType.F16, KvLayout.LayerKV);

    private static int Seed => int.TryParse(Environment.GetEnvironmentVariable("LMCACHE_FUZZ_SEED"), out var s) ? s : 20261213;

    private static int Iterations(int baseline) =>
        double.TryParse(Environment.GetEnvironmentVariable("LMCACHE_FUZZ_ITERATIONS"), System.Globalization.CultureInfo.InvariantCulture, out var scale)
            ? Math.Max(1, (int)(baseline * scale))
            : baseline;

    [Fact]
    public void Frame_reader_and_request_parsers_only_ever_say_need_more_data_or_throw_a_protocol_exception()
    {
        var random = new Random(Seed);
        var seeds = FrameSeeds();
        var executions = Iterations(200_000);
        for (var i = 0; i < executions; i++)
        {
            var input = Mutate(random, seeds);
            try
            {
                LMCacheSharp.Fuzz.Shared.ProtocolParsing.ParseAll(input);
            }
            catch (ProtocolException)
            {
                // Malformed: the expected outcome for most mutations.
            }
            catch (Exception e)
            {
                Assert.Fail($"execution {i} (seed {Seed}): {e.GetType().Name}: {e.Message}; input {Convert.ToHexString(input)}");
            }
        }

        TestContext.Current.TestOutputHelper?.WriteLine($"frame parsers: {executions} executions, 0 finds");
    }

    [Fact]
    public async Task Cache_session_answers_or_closes_on_mutated_streams_and_never_fails_unexpectedly_or_leaks()
    {
        var random = new Random(Seed + 1);
        var seeds = FrameSeeds();
        var executions = Iterations(20_000);
        var logger = new ErrorRecordingLogger();
        using var store = new MemoryCacheStore(16 << 20);
        var budget = new InFlightBudget(8 << 20);
        var options = new CacheServerOptions { Limits = Limits, AuthToken = null };
        var metrics = new CacheServerMetrics();
        for (var i = 0; i < executions; i++)
        {
            var input = Mutate(random, seeds);
            var (internalErrors, completed) = await RunSessionAsync(input, store, options, metrics, logger, budget);
            if (!completed || internalErrors > 0 || logger.Errors.Count > 0)
            {
                Assert.Fail($"execution {i} (seed {Seed + 1}): completed={completed}, internal errors={internalErrors}, " +
                    $"logged: {string.Join(" | ", logger.Errors)}; input {Convert.ToHexString(input)}");
            }

            if (i % 500 == 499)
            {
                store.Clear();
                Assert.Equal(0, store.Pool.RentedCount);
            }
        }

        store.Clear();
        Assert.Equal(0, store.Pool.RentedCount);
        Assert.Equal(0, budget.UsedBytes);
        TestContext.Current.TestOutputHelper?.WriteLine($"cache session: {executions} executions, 0 finds");
    }

    [Fact]
    public void Chunk_envelope_parsing_returns_a_status_never_throws_and_never_accepts_a_wrong_length()
    {
        var random = new Random(Seed + 2);
        var seeds = EnvelopeSeeds(out var keys);
        using var pool = new KvBufferPool();
        var executions = Iterations(200_000);
        for (var i = 0; i < executions; i++)
        {
            var which = random.Next(seeds.Count);
            var input = Mutate(random, [seeds[which]]);
            if (input.Length >= ChunkEnvelope.HeaderSize && random.Next(2) == 0)
            {
                // Recompute the header checksum so that mutations of the fields behind it are reached, not stopped there.
                BinaryPrimitives.WriteUInt64LittleEndian(input.AsSpan(120), XxHash3.HashToUInt64(input.AsSpan(0, 120)));
            }

            try
            {
                if (ChunkEnvelope.TryReadHeader(input, out var header) == ChunkReadStatus.Ok)
                {
                    Assert.Equal(header.Format.PayloadLength(header.TokenCount), header.RawLength);
                }

                var status = ChunkEnvelope.TryDeserialize(input, keys[which], null, pool, out var chunk);
                if (status == ChunkReadStatus.Ok)
                {
                    Assert.NotNull(chunk);
                    Assert.Equal(chunk.Format.PayloadLength(chunk.TokenCount), chunk.Length);
                    chunk.Release();
                }
                else
                {
                    Assert.Null(chunk);
                }
            }
            catch (Exception e) when (e is not Xunit.Sdk.XunitException)
            {
                Assert.Fail($"execution {i} (seed {Seed + 2}): {e.GetType().Name}: {e.Message}; input {Convert.ToHexString(input)}");
            }
        }

        Assert.Equal(0, pool.RentedCount);
        TestContext.Current.TestOutputHelper?.WriteLine($"chunk envelopes: {executions} executions, 0 finds");
    }

    [Fact]
    public async Task Every_corpus_file_still_passes_every_target()
    {
        var files = Directory.GetFiles(CorpusDirectory, "*.hex");
        Assert.NotEmpty(files);
        using var store = new MemoryCacheStore(16 << 20);
        var logger = new ErrorRecordingLogger();
        foreach (var file in files)
        {
            var input = Convert.FromHexString(File.ReadAllText(file).Trim());
            try
            {
                LMCacheSharp.Fuzz.Shared.ProtocolParsing.ParseAll(input);
            }
            catch (ProtocolException)
            {
            }

            var (internalErrors, completed) = await RunSessionAsync(input, store, new CacheServerOptions { Limits = Limits }, new CacheServerMetrics(), logger,
                new InFlightBudget(8 << 20));
            Assert.True(completed && internalErrors == 0 && logger.Errors.Count == 0, Path.GetFileName(file));
            using var pool = new KvBufferPool();
            var status = ChunkEnvelope.TryDeserialize(input, default, null, pool, out var chunk);
            chunk?.Release();
            Assert.True(Enum.IsDefined(status));
        }

        store.Clear();
        Assert.Equal(0, store.Pool.RentedCount);
    }

    private static string CorpusDirectory => Path.Combine(AppContext.BaseDirectory, "FuzzCorpus");

    /// <summary>Valid frame streams: every opcode, pipelined, with keys, values and key lists; plus the corpus files.</summary>
    private static List<byte[]> FrameSeeds()
    {
        var seeds = new List<byte[]>();
        void Add(Action<IBufferWriter<byte>> write)
        {
            var w = new ArrayBufferWriter<byte>();
            write(w);
            seeds.Add(w.WrittenSpan.ToArray());
        }

        Add(w => FrameWriter.WriteEmpty(w, Opcode.Ping, StatusCode.Ok, 1));
        Add(w => FrameWriter.WritePut(w, 1, "key"u8, [1, 2, 3, 4, 5]));
        Add(w =>
        {
            FrameWriter.WritePut(w, 1, "a"u8, new byte[300]);
            FrameWriter.WriteKeyRequest(w, Opcode.Get, 2, "a"u8);
            FrameWriter.WriteKeyListRequest(w, Opcode.MultiGet, 3, ["a"u8.ToArray(), "b"u8.ToArray()]);
            FrameWriter.WriteKeyListRequest(w, Opcode.ExistsPrefix, 4, ["a"u8.ToArray(), "b"u8.ToArray()]);
            FrameWriter.WriteKeyRequest(w, Opcode.Delete, 5, "a"u8);
            FrameWriter.WriteEmpty(w, Opcode.Stats, StatusCode.Ok, 6);
        });
        Add(w =>
        {
            FrameWriter.WriteAuth(w, 1, "token"u8);
            FrameWriter.WriteEmpty(w, Opcode.Clear, StatusCode.Ok, 2);
            FrameWriter.WritePut(w, 3, new byte[32], new byte[4096]);
        });
        foreach (var file in Directory.GetFiles(CorpusDirectory, "*.hex"))
        {
            seeds.Add(Convert.FromHexString(File.ReadAllText(file).Trim()));
        }

        return seeds;
    }

    private static List<byte[]> EnvelopeSeeds(out List<ChunkHash> keys)
    {
        var seeds = new List<byte[]>();
        keys = [];
        using var pool = new KvBufferPool(0);
        foreach (var (tokens, codec) in new[] { (4, "raw"), (16, "lz4"), (1, "zstd"), (8, "raw") })
        {
            var chunk = pool.Rent((int)Format.PayloadLength(tokens));
            try
            {
                new Random(tokens).NextBytes(chunk.Span);
                var key = new byte[ChunkHash.Size];
                key[0] = (byte)tokens;
                chunk.Key = new ChunkHash(key);
                chunk.TokenCount = tokens;
                chunk.Format = Format;
                chunk.SealChecksum();
                var c = KvCodecs.Find(codec)!;
                var bytes = new byte[ChunkEnvelope.MaxSerializedLength(chunk, c)];
                seeds.Add(bytes[..ChunkEnvelope.Serialize(chunk, c, bytes)]);
                keys.Add(chunk.Key);
            }
            finally
            {
                chunk.Release();
            }
        }

        return seeds;
    }

    private static readonly uint[] Interesting = [0, 1, 2, 15, 16, 17, 31, 32, 33, 127, 128, 255, 256, 4095, 4096, 65535, 65536, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF];

    /// <summary>One to four mutations of a seed (or a splice of two): lengths, opcodes, offsets and bytes.</summary>
    private static byte[] Mutate(Random random, List<byte[]> seeds)
    {
        var data = new List<byte>(seeds[random.Next(seeds.Count)]);
        for (var m = random.Next(1, 5); m > 0; m--)
        {
            var at = data.Count == 0 ? 0 : random.Next(data.Count);
            switch (random.Next(9))
            {
                case 0 when data.Count > 0: // flip a bit
                    data[at] ^= (byte)(1 << random.Next(8));
                    break;
                case 1 when data.Count > 0: // a random byte
                    data[at] = (byte)random.Next(256);
                    break;
                case 2 when data.Count >= 4: // an interesting u32 at a random offset (lengths, ids)
                    WriteAt(data, random.Next(data.Count - 3), Interesting[random.Next(Interesting.Length)], 4);
                    break;
                case 3 when data.Count >= 2: // an interesting u16 at a random offset (key lengths, counts)
                    WriteAt(data, random.Next(data.Count - 1), Interesting[random.Next(Interesting.Length)] & 0xFFFF, 2);
                    break;
                case 4 when data.Count >= 16: // a frame header's length field, or its opcode
                    var frame = FrameHeader.Size * random.Next(Math.Max(1, data.Count / FrameHeader.Size));
                    if (random.Next(2) == 0)
                    {
                        WriteAt(data, Math.Min(frame + 12, data.Count - 4), Interesting[random.Next(Interesting.Length)], 4);
                    }
                    else
                    {
                        data[Math.Min(frame + 5, data.Count - 1)] = (byte)random.Next(16);
                    }

                    break;
                case 5 when data.Count > 0: // truncate
                    data.RemoveRange(at, data.Count - at);
                    break;
                case 6 when data.Count > 0: // duplicate a slice
                    var length = random.Next(1, Math.Min(64, data.Count - at) + 1);
                    data.InsertRange(at, data.GetRange(at, length));
                    break;
                case 7: // insert random bytes
                    var bytes = new byte[random.Next(1, 9)];
                    random.NextBytes(bytes);
                    data.InsertRange(at, bytes);
                    break;
                default: // splice another seed on
                    data.AddRange(seeds[random.Next(seeds.Count)]);
                    break;
            }
        }

        return [.. data];
    }

    private static void WriteAt(List<byte> data, int offset, uint value, int size)
    {
        for (var b = 0; b < size; b++)
        {
            data[offset + b] = (byte)(value >> (8 * b));
        }
    }

    /// <summary>Feeds <paramref name="input"/> to a session, then ends it; counts InternalError replies.</summary>
    private static async Task<(int InternalErrors, bool Completed)> RunSessionAsync(byte[] input, MemoryCacheStore store, CacheServerOptions options,
        CacheServerMetrics metrics, ILogger logger, InFlightBudget budget)
    {
        var toServer = new Pipe();
        var toClient = new Pipe();
        var session = new CacheSession(new Duplex(toServer.Reader, toClient.Writer), store, options, metrics, logger, budget, null);
        var running = session.RunAsync();
        var reading = Task.Run(async () =>
        {
            var internalErrors = 0;
            while (true)
            {
                var result = await toClient.Reader.ReadAsync();
                var buffer = result.Buffer;
                while (FrameReader.TryReadFrame(ref buffer, ProtocolLimits.Default, isRequest: false, out var header, out _))
                {
                    if (header.Status == StatusCode.InternalError)
                    {
                        internalErrors++;
                    }
                }

                toClient.Reader.AdvanceTo(buffer.Start, buffer.End);
                if (result.IsCompleted)
                {
                    await toClient.Reader.CompleteAsync();
                    return internalErrors;
                }
            }
        });
        await toServer.Writer.WriteAsync(input);
        await toServer.Writer.CompleteAsync();
        var completed = await Task.WhenAny(running, Task.Delay(TimeSpan.FromSeconds(30))) == running;
        var errors = completed ? await reading : -1;
        return (errors, completed);
    }

    private sealed class Duplex(PipeReader input, PipeWriter output) : IDuplexPipe
    {
        public PipeReader Input => input;

        public PipeWriter Output => output;
    }

    /// <summary>Records what the session logs at Error (its "anything unexpected" tier).</summary>
    private sealed class ErrorRecordingLogger : ILogger
    {
        public List<string> Errors { get; } = [];

        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Error;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (logLevel >= LogLevel.Error)
            {
                lock (Errors)
                {
                    Errors.Add(formatter(state, exception) + (exception is null ? "" : $" {exception.GetType().Name}: {exception.Message}"));
                }
            }
        }
    }
}
