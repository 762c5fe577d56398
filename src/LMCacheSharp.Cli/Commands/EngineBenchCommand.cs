using System.CommandLine;
using System.Diagnostics;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Engine;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Cli.Commands;

/// <summary>
/// <c>lmcache bench engine</c>: drives the cache engine with synthetic KV (no model needed) and prints lookup, store and
/// retrieve throughput next to a plain memory copy of the same bytes, so the numbers read as ratios.
/// </summary>
internal static class EngineBenchCommand
{
    public static Command Create()
    {
        var promptTokens = new Option<int>("--prompt-tokens") { Description = "Tokens per prompt.", DefaultValueFactory = _ => 32768 };
        var bytesPerToken = new Option<int>("--kv-bytes-per-token") { Description = "KV bytes per token across all layers (32768 makes 8 MiB chunks of 256 tokens).", DefaultValueFactory = _ => 32768 };
        var rounds = new Option<int>("--rounds") { Description = "Measured rounds; the median is reported.", DefaultValueFactory = _ => 7 };
        var config = new Option<string?>("--config") { Description = "LMCache YAML configuration (chunk_size, max_local_cpu_size, ...)." };
        var command = new Command("engine", "Store, look up and retrieve synthetic KV through the cache engine; print GB/s next to memcpy.")
        {
            promptTokens, bytesPerToken, rounds, config,
        };
        command.SetAction(async (result, ct) =>
        {
            var options = LMCacheConfigLoader.Load(result.GetValue(config));
            return await RunAsync(options, result.GetValue(promptTokens), result.GetValue(bytesPerToken), result.GetValue(rounds), ct)
                .ConfigureAwait(false);
        });
        return command;
    }

    private static async Task<int> RunAsync(LMCacheOptions options, int promptTokens, int bytesPerToken, int rounds, CancellationToken ct)
    {
        if (promptTokens < options.ChunkSize || bytesPerToken < 2 || rounds < 1)
        {
            await Console.Error.WriteLineAsync("--prompt-tokens must be >= chunk_size, --kv-bytes-per-token >= 2, --rounds >= 1").ConfigureAwait(false);
            return 2;
        }

        var format = new KvFormat(1, bytesPerToken / 2, bytesPerToken / 2, KvDataType.F16, KvLayout.LayerKV);
        var totalBytes = format.PayloadLength(promptTokens);
        var needed = totalBytes + (64L << 20);
        if (options.MaxLocalCpuSizeBytes < needed)
        {
            options.MaxLocalCpuSize = (double)needed / (1L << 30);
        }

        var ns = new CacheNamespace("bench-engine", format);
        await using var engine = CacheEngine.Create(options, ns);
        var tokens = new int[promptTokens];
        var random = new Random(42);
        for (var i = 0; i < tokens.Length; i++)
        {
            tokens[i] = random.Next(32000);
        }

        var source = new SyntheticKv(totalBytes);
        var sink = new SyntheticKv(totalBytes);
        var chunkBytes = format.PayloadLength(options.ChunkSize);
        Console.WriteLine($"prompt {promptTokens} tokens, chunk {options.ChunkSize} tokens = {ByteSize.Format(chunkBytes)}, {promptTokens / options.ChunkSize} chunks, {ByteSize.Format(totalBytes)} of KV");

        var store = new List<double>();
        var retrieve = new List<double>();
        var lookup = new List<double>();
        var memcpy = new List<double>();
        for (var r = 0; r < rounds + 1; r++)
        {
            await engine.Storage.ClearAsync(ct).ConfigureAwait(false);
            var t0 = Stopwatch.GetTimestamp();
            var stored = await engine.StoreAsync(tokens, source, 0, null, ct).ConfigureAwait(false);
            var t1 = Stopwatch.GetTimestamp();
            var hit = await engine.LookupAsync(tokens, null, ct).ConfigureAwait(false);
            var t2 = Stopwatch.GetTimestamp();
            var restored = await engine.RetrieveAsync(tokens, sink, null, ct).ConfigureAwait(false);
            var t3 = Stopwatch.GetTimestamp();
            source.CopyTo(sink);
            var t4 = Stopwatch.GetTimestamp();
            if (stored != hit || hit != restored || !sink.SameAs(source))
            {
                await Console.Error.WriteLineAsync($"mismatch: stored {stored}, hit {hit}, restored {restored}").ConfigureAwait(false);
                return 1;
            }

            if (r == 0)
            {
                continue; // warm-up
            }

            store.Add(totalBytes / Stopwatch.GetElapsedTime(t0, t1).TotalSeconds / 1e9);
            lookup.Add(Stopwatch.GetElapsedTime(t1, t2).TotalMilliseconds);
            retrieve.Add(totalBytes / Stopwatch.GetElapsedTime(t2, t3).TotalSeconds / 1e9);
            memcpy.Add(totalBytes / Stopwatch.GetElapsedTime(t3, t4).TotalSeconds / 1e9);
        }

        Console.WriteLine($"{"operation",-28}{"median",12}");
        Console.WriteLine($"{"memcpy (baseline)",-28}{Median(memcpy),9:F2} GB/s");
        Console.WriteLine($"{"store (hash+copy+checksum)",-28}{Median(store),9:F2} GB/s");
        Console.WriteLine($"{"retrieve (memory tier)",-28}{Median(retrieve),9:F2} GB/s  ({Median(retrieve) / Median(memcpy):P0} of memcpy)");
        Console.WriteLine($"{"lookup",-28}{Median(lookup),9:F3} ms");
        return 0;
    }

    private static double Median(List<double> values)
    {
        values.Sort();
        return values[values.Count / 2];
    }

    /// <summary>A fake engine's KV: one contiguous native buffer, token-major, so chunks are plain slices.</summary>
    private sealed class SyntheticKv : IKvSource, IKvSink
    {
        private readonly byte[] _data;
        private readonly long _bytesPerToken;

        public SyntheticKv(long totalBytes)
        {
            _data = GC.AllocateUninitializedArray<byte>(checked((int)totalBytes), pinned: true);
            new Random(7).NextBytes(_data);
            _bytesPerToken = 0;
        }

        private long BytesPerToken(int tokenCount, int length) => _bytesPerToken > 0 ? _bytesPerToken : length / tokenCount;

        public bool TryReadKv(int startToken, int tokenCount, Span<byte> destination)
        {
            var perToken = BytesPerToken(tokenCount, destination.Length);
            _data.AsSpan(checked((int)(startToken * perToken)), destination.Length).CopyTo(destination);
            return true;
        }

        public bool TryWriteKv(int startToken, int tokenCount, ReadOnlySpan<byte> payload)
        {
            var perToken = BytesPerToken(tokenCount, payload.Length);
            payload.CopyTo(_data.AsSpan(checked((int)(startToken * perToken)), payload.Length));
            return true;
        }

        public void CopyTo(SyntheticKv other) => _data.AsSpan().CopyTo(other._data);

        public bool SameAs(SyntheticKv other) => _data.AsSpan().SequenceEqual(other._data);
    }
}
