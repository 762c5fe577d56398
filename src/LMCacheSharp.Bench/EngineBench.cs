using System.Diagnostics;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Engine;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Bench;

/// <summary>Settings of <c>lmcache bench engine</c>.</summary>
/// <param name="PromptTokens">Tokens per prompt; at least the chunk size.</param>
/// <param name="KvBytesPerToken">KV bytes per token across all layers, at least 2 (32768 makes 8 MiB chunks of 256 tokens).</param>
/// <param name="Rounds">Measured rounds (after one warm-up), 1..10000; the median is reported.</param>
public sealed record EngineBenchSettings(int PromptTokens = 32768, int KvBytesPerToken = 32768, int Rounds = 7)
{
    /// <summary>Every problem, each naming its flag; empty when the bench can run with <paramref name="chunkSize"/> tokens per chunk.</summary>
    public IReadOnlyList<string> GetErrors(int chunkSize)
    {
        var errors = new List<string>();
        if (PromptTokens < chunkSize || PromptTokens > 1 << 24)
        {
            errors.Add($"--prompt-tokens: must be chunk_size ({chunkSize})..16777216, got {PromptTokens}");
        }

        if (KvBytesPerToken is < 2 or > 1 << 24)
        {
            errors.Add($"--kv-bytes-per-token: must be 2..16777216, got {KvBytesPerToken}");
        }
        else if ((long)PromptTokens * (KvBytesPerToken / 2 * 2) > Array.MaxLength)
        {
            errors.Add($"--prompt-tokens x --kv-bytes-per-token: at most {Array.MaxLength} bytes of KV, got {(long)PromptTokens * KvBytesPerToken}");
        }

        if (Rounds is < 1 or > 10_000)
        {
            errors.Add($"--rounds: must be 1..10000, got {Rounds}");
        }

        return errors;
    }
}

/// <summary>What <c>lmcache bench engine</c> measured (medians over the rounds).</summary>
/// <param name="Tokens">Tokens of the prompt.</param>
/// <param name="ChunkTokens">Tokens per chunk.</param>
/// <param name="KvBytes">Bytes of KV of the whole prompt.</param>
/// <param name="MemcpyGBps">A plain copy of the same bytes, GB/s (the baseline).</param>
/// <param name="StoreGBps">Storing the prompt's chunks (hash, copy, checksum), GB/s.</param>
/// <param name="RetrieveGBps">Retrieving them from the memory tier, GB/s.</param>
/// <param name="LookupMs">Looking the prompt up, ms.</param>
public sealed record EngineBenchResult(int Tokens, int ChunkTokens, long KvBytes, double MemcpyGBps, double StoreGBps, double RetrieveGBps, double LookupMs);

/// <summary>
/// <c>lmcache bench engine</c>: drives the cache engine with synthetic KV (no model needed) and measures lookup, store and
/// retrieve throughput next to a plain memory copy of the same bytes, so the numbers read as ratios.
/// </summary>
public static class EngineBench
{
    /// <summary>Runs the bench. The memory tier is enlarged to hold the prompt when <paramref name="options"/> has it smaller.</summary>
    /// <exception cref="InvalidOperationException">The engine stored, found or restored other than the whole prompt, or other bytes.</exception>
    public static async Task<EngineBenchResult> RunAsync(LMCacheOptions options, EngineBenchSettings settings, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(settings);
        if (settings.GetErrors(options.ChunkSize) is { Count: > 0 } errors)
        {
            throw new ArgumentException(string.Join("; ", errors), nameof(settings));
        }

        options = options.Clone();
        var format = new KvFormat(1, settings.KvBytesPerToken / 2, settings.KvBytesPerToken / 2, KvDataType.F16, KvLayout.LayerKV);
        var totalBytes = format.PayloadLength(settings.PromptTokens);
        var needed = totalBytes + (64L << 20);
        if (options.MaxLocalCpuSizeBytes < needed)
        {
            options.MaxLocalCpuSize = (double)needed / (1L << 30);
        }

        var ns = new CacheNamespace("bench-engine", format);
        await using var engine = CacheEngine.Create(options, ns);
        var tokens = new int[settings.PromptTokens];
        var random = new Random(42);
        for (var i = 0; i < tokens.Length; i++)
        {
            tokens[i] = random.Next(32000);
        }

        var source = new SyntheticKv(totalBytes);
        var sink = new SyntheticKv(totalBytes);
        var store = new List<double>();
        var retrieve = new List<double>();
        var lookup = new List<double>();
        var memcpy = new List<double>();
        for (var r = 0; r < settings.Rounds + 1; r++)
        {
            await engine.Storage.ClearAsync(ct);
            var t0 = Stopwatch.GetTimestamp();
            var stored = await engine.StoreAsync(tokens, source, 0, null, ct);
            var t1 = Stopwatch.GetTimestamp();
            var hit = await engine.LookupAsync(tokens, null, ct);
            var t2 = Stopwatch.GetTimestamp();
            var restored = await engine.RetrieveAsync(tokens, sink, null, ct);
            var t3 = Stopwatch.GetTimestamp();
            source.CopyTo(sink);
            var t4 = Stopwatch.GetTimestamp();
            if (stored != hit || hit != restored || !sink.SameAs(source))
            {
                throw new InvalidOperationException($"mismatch: stored {stored}, hit {hit}, restored {restored}");
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

        return new EngineBenchResult(settings.PromptTokens, options.ChunkSize, totalBytes, Statistics.Median(memcpy), Statistics.Median(store),
            Statistics.Median(retrieve), Statistics.Median(lookup));
    }

    /// <summary>The header line (prompt, chunk size and bytes) and the table of <paramref name="result"/>.</summary>
    public static string Table(EngineBenchResult result)
    {
        ArgumentNullException.ThrowIfNull(result);
        var chunkBytes = result.KvBytes / result.Tokens * result.ChunkTokens;
        var text = new System.Text.StringBuilder();
        text.AppendLine($"prompt {result.Tokens} tokens, chunk {result.ChunkTokens} tokens = {ByteSize.Format(chunkBytes)}, {result.Tokens / result.ChunkTokens} chunks, {ByteSize.Format(result.KvBytes)} of KV");
        text.AppendLine($"{"operation",-28}{"median",12}");
        text.AppendLine($"{"memcpy (baseline)",-28}{result.MemcpyGBps,9:F2} GB/s");
        text.AppendLine($"{"store (hash+copy+checksum)",-28}{result.StoreGBps,9:F2} GB/s");
        text.AppendLine($"{"retrieve (memory tier)",-28}{result.RetrieveGBps,9:F2} GB/s  ({result.RetrieveGBps / result.MemcpyGBps:P0} of memcpy)");
        text.AppendLine($"{"lookup",-28}{result.LookupMs,9:F3} ms");
        return text.ToString();
    }

    /// <summary>A fake engine's KV: one contiguous buffer, token-major, so chunks are plain slices.</summary>
    private sealed class SyntheticKv : IKvSource, IKvSink
    {
        private readonly byte[] _data;

        public SyntheticKv(long totalBytes)
        {
            _data = GC.AllocateUninitializedArray<byte>(checked((int)totalBytes), pinned: true);
            new Random(7).NextBytes(_data);
        }

        public bool TryReadKv(int startToken, int tokenCount, Span<byte> destination)
        {
            var perToken = destination.Length / tokenCount;
            _data.AsSpan(checked(startToken * perToken), destination.Length).CopyTo(destination);
            return true;
        }

        public bool TryWriteKv(int startToken, int tokenCount, ReadOnlySpan<byte> payload)
        {
            var perToken = payload.Length / tokenCount;
            payload.CopyTo(_data.AsSpan(checked(startToken * perToken), payload.Length));
            return true;
        }

        public void CopyTo(SyntheticKv other) => _data.AsSpan().CopyTo(other._data);

        public bool SameAs(SyntheticKv other) => _data.AsSpan().SequenceEqual(other._data);
    }
}
