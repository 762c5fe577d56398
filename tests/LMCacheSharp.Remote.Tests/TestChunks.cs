using System.Net.Sockets;
using LMCacheSharp.Core.Engine;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Tests.Shared;

namespace LMCacheSharp.Remote.Tests;

internal static class TestChunks
{
    public static readonly KvFormat Format = new(2, 64, 64, KvDataType.F16, KvLayout.LayerKV);

    public static ChunkHash Key(int i)
    {
        var bytes = new byte[ChunkHash.Size];
        BitConverter.TryWriteBytes(bytes, i + 1);
        bytes[31] = 0xA5;
        return new ChunkHash(bytes);
    }

    /// <summary>A sealed chunk of <paramref name="tokens"/> tokens with bytes derived from <paramref name="seed"/>.</summary>
    public static KvChunk Make(KvBufferPool pool, ChunkHash key, int tokens, int seed)
    {
        var chunk = pool.Rent((int)Format.PayloadLength(tokens));
        new Random(seed).NextBytes(chunk.Span);
        chunk.Key = key;
        chunk.TokenCount = tokens;
        chunk.Format = Format;
        chunk.SealChecksum();
        return chunk;
    }

    public static byte[] Bytes(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    public static async Task<bool> ReachableAsync(string? url)
    {
        if (url is null || !Uri.TryCreate(url, UriKind.Absolute, out var uri))
        {
            return false;
        }

        try
        {
            using var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(1));
            await socket.ConnectAsync(uri.Host, uri.Port, timeout.Token);
            return true;
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException)
        {
            return false;
        }
    }

    /// <summary>The URLs .ci/services writes (environment variables win).</summary>
    public static string? ServiceUrl(string name) => TestServices.Url(name);
}

/// <summary>A fake engine sequence whose KV is a function of (token, position): what one engine stores another must restore exactly.</summary>
internal sealed class FakeSequence(KvFormat format, int[] tokens) : IKvSource, IKvSink
{
    private readonly byte[] _restored = new byte[format.PayloadLength(tokens.Length + 64)]; // room for a tail chunk that runs past the prompt

    public int RestoredTokens { get; private set; }

    public static void Expected(KvFormat format, int[] tokens, int start, int count, Span<byte> destination)
    {
        var bytesPerToken = (int)format.BytesPerToken;
        for (var t = 0; t < count; t++)
        {
            var state = (uint)(tokens[start + t] * 2654435761u) ^ (uint)((start + t) * 40503);
            for (var b = 0; b < bytesPerToken; b++)
            {
                state = (state * 1103515245u) + 12345u;
                destination[(t * bytesPerToken) + b] = (byte)(state >> 16);
            }
        }
    }

    public bool TryReadKv(int startToken, int tokenCount, Span<byte> destination)
    {
        Expected(format, tokens, startToken, tokenCount, destination);
        return true;
    }

    public bool TryWriteKv(int startToken, int tokenCount, ReadOnlySpan<byte> payload)
    {
        payload.CopyTo(_restored.AsSpan((int)format.PayloadLength(startToken)));
        RestoredTokens = startToken + tokenCount;
        return true;
    }

    /// <summary>The first <paramref name="tokensExpected"/> positions hold exactly this sequence's KV (a tail chunk may have written past them).</summary>
    public void AssertPrefixRestored(int tokensExpected)
    {
        Assert.True(RestoredTokens >= tokensExpected, $"restored {RestoredTokens} tokens, expected at least {tokensExpected}");
        var expected = new byte[format.PayloadLength(tokensExpected)];
        Expected(format, tokens, 0, tokensExpected, expected);
        Assert.True(expected.AsSpan().SequenceEqual(_restored.AsSpan(0, expected.Length)), "restored KV differs from what was stored");
    }

    public void AssertRestoredExactly(int tokensExpected)
    {
        Assert.Equal(tokensExpected, RestoredTokens);
        var expected = new byte[format.PayloadLength(tokensExpected)];
        Expected(format, tokens, 0, tokensExpected, expected);
        Assert.True(expected.AsSpan().SequenceEqual(_restored.AsSpan(0, expected.Length)), "restored KV differs from what was stored");
    }
}
