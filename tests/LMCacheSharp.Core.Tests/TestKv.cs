using System.Collections.Concurrent;
using LMCacheSharp.Core.Engine;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Storage;

namespace LMCacheSharp.Core.Tests;

/// <summary>A fake engine sequence: KV bytes per token derived from (seed, token position, token id), so every chunk is checkable.</summary>
internal sealed class FakeSequence : IKvSource, IKvSink
{
    private readonly KvFormat _format;
    private readonly int[] _tokens;
    private readonly byte[] _restored;

    public FakeSequence(KvFormat format, int[] tokens)
    {
        _format = format;
        _tokens = tokens;
        _restored = new byte[format.PayloadLength(tokens.Length)];
    }

    public int Reads { get; private set; }

    public int Writes { get; private set; }

    public int RefuseWritesFrom { get; set; } = int.MaxValue;

    /// <summary>Calls of <see cref="CompleteRead"/> and <see cref="CompleteWrite"/>.</summary>
    public int ReadsCompleted { get; private set; }

    public int WritesCompleted { get; private set; }

    /// <summary>What <see cref="CompleteWrite"/> answers (a sink that writes everything at the end, and fails there).</summary>
    public bool CompleteWriteResult { get; set; } = true;

    public void CompleteRead() => ReadsCompleted++;

    public bool CompleteWrite()
    {
        WritesCompleted++;
        return CompleteWriteResult;
    }

    public List<(int Start, int Count)> WrittenRanges { get; } = [];

    /// <summary>The expected KV of a token: a function of its whole prefix (position and token), like real KV.</summary>
    public static void ExpectedKv(KvFormat format, int[] tokens, int startToken, int tokenCount, Span<byte> destination)
    {
        // LayerKV layout: for each layer, K rows of the chunk's tokens, then V rows.
        var offset = 0;
        for (var layer = 0; layer < format.Layers; layer++)
        {
            foreach (var rowBytes in new[] { format.KBytesPerToken, format.VBytesPerToken })
            {
                for (var t = startToken; t < startToken + tokenCount; t++)
                {
                    var state = (uint)(tokens[t] * 2654435761u) ^ (uint)(t * 40503) ^ (uint)(layer * 97) ^ (uint)rowBytes;
                    for (var b = 0; b < rowBytes; b++)
                    {
                        state = (state * 1103515245u) + 12345u;
                        destination[offset++] = (byte)(state >> 16);
                    }
                }
            }
        }
    }

    public bool TryReadKv(int startToken, int tokenCount, Span<byte> destination)
    {
        Assert.Equal(_format.PayloadLength(tokenCount), destination.Length);
        Reads++;
        ExpectedKv(_format, _tokens, startToken, tokenCount, destination);
        return true;
    }

    public bool TryWriteKv(int startToken, int tokenCount, ReadOnlySpan<byte> payload)
    {
        if (startToken >= RefuseWritesFrom)
        {
            return false;
        }

        Assert.Equal(_format.PayloadLength(tokenCount), payload.Length);
        Writes++;
        WrittenRanges.Add((startToken, tokenCount));
        payload.CopyTo(_restored.AsSpan((int)_format.PayloadLength(startToken)));
        return true;
    }

    /// <summary>Checks that every restored chunk equals the KV the source would give for those tokens.</summary>
    public void AssertRestoredExact()
    {
        foreach (var (start, count) in WrittenRanges)
        {
            var expected = new byte[_format.PayloadLength(count)];
            ExpectedKv(_format, _tokens, start, count, expected);
            var actual = _restored.AsSpan((int)_format.PayloadLength(start), expected.Length);
            Assert.True(actual.SequenceEqual(expected), $"chunk at token {start} differs from what was stored");
        }
    }
}

/// <summary>A lower tier that keeps serialized envelopes in a dictionary, with fault injection.</summary>
internal sealed class EnvelopeTier(KvBufferPool pool, StorageTierKind kind = StorageTierKind.Remote) : IStorageTier
{
    public ConcurrentDictionary<ChunkHash, byte[]> Values { get; } = new();

    public bool Throw { get; set; }

    public TimeSpan Delay { get; set; }

    /// <summary>When set, PutAsync waits for it (a slow lower-tier write).</summary>
    public ManualResetEventSlim? PutGate { get; set; }

    /// <summary>When set, RemoveAsync waits for it (a slow lower-tier delete).</summary>
    public SemaphoreSlim? RemoveGate { get; set; }

    public int Gets;

    public int Puts;

    public string Name => "fake-" + kind.ToString().ToLowerInvariant();

    public StorageTierKind Kind => kind;

    public async ValueTask<int> CountPrefixAsync(ReadOnlyMemory<ChunkHash> keys, CancellationToken cancellationToken = default)
    {
        await Fault(cancellationToken);
        var n = 0;
        while (n < keys.Length && Values.ContainsKey(keys.Span[n]))
        {
            n++;
        }

        return n;
    }

    /// <summary>The most GETs that were in flight at once.</summary>
    public int MaxConcurrentGets;

    private int _getsInFlight;

    public async ValueTask<KvChunk?> GetAsync(ChunkHash key, CancellationToken cancellationToken = default)
    {
        var inFlight = Interlocked.Increment(ref _getsInFlight);
        InterlockedMax(ref MaxConcurrentGets, inFlight);
        try
        {
            await Fault(cancellationToken);
        }
        finally
        {
            Interlocked.Decrement(ref _getsInFlight);
        }

        Interlocked.Increment(ref Gets);
        if (!Values.TryGetValue(key, out var bytes))
        {
            return null;
        }

        return ChunkEnvelope.TryDeserialize(bytes, key, null, pool, out var chunk) == ChunkReadStatus.Ok ? chunk : null;
    }

    public async ValueTask<bool> PutAsync(KvChunk chunk, CancellationToken cancellationToken = default)
    {
        await Fault(cancellationToken);
        if (PutGate is { } gate)
        {
            await Task.Run(() => gate.Wait(cancellationToken), cancellationToken);
        }

        Interlocked.Increment(ref Puts);
        var buffer = new byte[ChunkEnvelope.MaxSerializedLength(chunk, Codecs.RawCodec.Instance)];
        var n = ChunkEnvelope.Serialize(chunk, Codecs.RawCodec.Instance, buffer);
        Values[chunk.Key] = buffer[..n];
        return true;
    }

    public async ValueTask<bool> RemoveAsync(ChunkHash key, CancellationToken cancellationToken = default)
    {
        if (RemoveGate is { } gate)
        {
            await gate.WaitAsync(cancellationToken);
        }

        return Values.TryRemove(key, out _);
    }

    public ValueTask ClearAsync(CancellationToken cancellationToken = default)
    {
        Values.Clear();
        return ValueTask.CompletedTask;
    }

    public StorageTierStats GetStats() => new(Values.Count, Values.Values.Sum(v => (long)v.Length), -1);

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;

    private static void InterlockedMax(ref int target, int value)
    {
        int current;
        while ((current = Volatile.Read(ref target)) < value && Interlocked.CompareExchange(ref target, value, current) != current)
        {
        }
    }

    private async Task Fault(CancellationToken ct)
    {
        if (Delay > TimeSpan.Zero)
        {
            await Task.Delay(Delay, ct);
        }

        if (Throw)
        {
            throw new IOException("injected tier failure");
        }
    }
}

internal static class TestData
{
    /// <summary>An engine with a memory tier over <paramref name="lower"/>, owning its storage, pool and metrics.</summary>
    public static CacheEngine EngineOver(IStorageTier lower, KvBufferPool pool, Configuration.LMCacheOptions options)
    {
        var metrics = new Metrics.CacheMetrics();
        return new CacheEngine(options, Namespace(), new StorageManager([new MemoryTier(options.MaxLocalCpuSizeBytes, metrics), lower], metrics), pool,
            metrics, ownsDependencies: true);
    }

    public static readonly KvFormat SmallFormat = new(2, 8, 8, KvDataType.F16, KvLayout.LayerKV);

    public static CacheNamespace Namespace(string model = "model-a", string? salt = null) => new(model, SmallFormat, salt);

    public static int[] Tokens(int count, int seed)
    {
        var random = new Random(seed);
        var tokens = new int[count];
        for (var i = 0; i < count; i++)
        {
            tokens[i] = random.Next(50000);
        }

        return tokens;
    }
}
