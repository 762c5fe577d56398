using System.Buffers.Binary;
using LMCacheSharp.Protocol;

namespace LMCacheSharp.Server.Tests;

public class CacheSessionTests
{
    private static byte[] Value(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    [Fact]
    public async Task Every_operation_round_trips_over_an_in_memory_pipe_with_values_larger_than_the_pipe()
    {
        await using var s = new SessionHarness();
        var big = Value(3 << 20, 1); // the pipe pauses its writer at 64 KiB: the value must stream through
        await s.SendAsync(w => FrameWriter.WritePut(w, 1, "big"u8, big));
        await s.ExpectAsync(1, StatusCode.Ok);
        await s.SendAsync(w => FrameWriter.WritePut(w, 2, "small"u8, [1, 2, 3]));
        await s.ExpectAsync(2, StatusCode.Ok);

        await s.SendAsync(w => FrameWriter.WriteKeyRequest(w, Opcode.Get, 3, "big"u8));
        Assert.Equal(big, (await s.ExpectAsync(3, StatusCode.Ok)).Body);
        await s.SendAsync(w => FrameWriter.WriteKeyRequest(w, Opcode.Get, 4, "none"u8));
        Assert.Empty((await s.ExpectAsync(4, StatusCode.NotFound)).Body);

        await s.SendAsync(w => FrameWriter.WriteKeyListRequest(w, Opcode.ExistsPrefix, 5, ["small"u8.ToArray(), "big"u8.ToArray(), "none"u8.ToArray(), "big"u8.ToArray()]));
        Assert.Equal(2, ResponseBody.ParseCount((await s.ExpectAsync(5, StatusCode.Ok)).Body, 4));

        await s.SendAsync(w => FrameWriter.WriteKeyListRequest(w, Opcode.MultiGet, 6, ["small"u8.ToArray(), "none"u8.ToArray(), "big"u8.ToArray()]));
        var body = (await s.ExpectAsync(6, StatusCode.Ok)).Body;
        var omitted = new bool[3];
        var entries = ResponseBody.ParseMultiGet(body, 3, omitted);
        Assert.Equal([1, 2, 3], body[entries[0]!.Value]);
        Assert.Null(entries[1]);
        Assert.Equal(big, body[entries[2]!.Value]);
        Assert.DoesNotContain(true, omitted);

        await s.SendAsync(w => FrameWriter.WriteKeyRequest(w, Opcode.Delete, 7, "small"u8));
        await s.ExpectAsync(7, StatusCode.Ok);
        await s.SendAsync(w => FrameWriter.WriteKeyRequest(w, Opcode.Delete, 8, "small"u8));
        await s.ExpectAsync(8, StatusCode.NotFound);

        await s.SendAsync(w => FrameWriter.WriteEmpty(w, Opcode.Stats, StatusCode.Ok, 9));
        var stats = ResponseBody.ParseStats((await s.ExpectAsync(9, StatusCode.Ok)).Body);
        Assert.Equal(1, stats["items"]);
        Assert.Equal(2, stats["requests_put"]);
        Assert.Equal(1 + 2 + 2, stats["hits"]); // GET big; EXISTS-PREFIX small, big; MGET small, big
        Assert.Equal(1 + 2 + 1, stats["misses"]); // GET none; EXISTS-PREFIX none and the key after it; MGET none
        await s.SendAsync(w => FrameWriter.WriteEmpty(w, Opcode.Clear, StatusCode.Ok, 10));
        await s.ExpectAsync(10, StatusCode.Ok);
        await s.SendAsync(w => FrameWriter.WriteEmpty(w, Opcode.Ping, StatusCode.Ok, 11));
        await s.ExpectAsync(11, StatusCode.Ok);
        Assert.Equal(0, s.Store.GetStats().Items);
    }

    [Fact]
    public async Task Pipelined_requests_are_answered_in_order()
    {
        await using var s = new SessionHarness();
        await s.SendAsync(w =>
        {
            for (uint i = 1; i <= 200; i++)
            {
                FrameWriter.WritePut(w, i, BitConverter.GetBytes(i), Value(1000 + (int)i, (int)i));
            }

            for (uint i = 1; i <= 200; i++)
            {
                FrameWriter.WriteKeyRequest(w, Opcode.Get, 1000 + i, BitConverter.GetBytes(i));
            }
        });
        for (uint i = 1; i <= 200; i++)
        {
            await s.ExpectAsync(i, StatusCode.Ok);
        }

        for (uint i = 1; i <= 200; i++)
        {
            Assert.Equal(Value(1000 + (int)i, (int)i), (await s.ExpectAsync(1000 + i, StatusCode.Ok)).Body);
        }
    }

    [Fact]
    public async Task Request_level_errors_get_an_error_reply_and_the_connection_stays_in_sync()
    {
        await using var s = new SessionHarness();
        // Unknown opcode with a body: skipped.
        await s.SendAsync(w => FrameWriter.WriteResponse(w, (Opcode)42, StatusCode.Ok, 1, [1, 2, 3, 4]));
        await s.ExpectAsync(1, StatusCode.UnknownOpcode);
        // Key over the limit (64).
        await s.SendAsync(w => FrameWriter.WriteKeyRequest(w, Opcode.Get, 2, new byte[65]));
        await s.ExpectAsync(2, StatusCode.TooLarge);
        // Value over the limit (4 MiB), frame within it (5 MiB): the body is skipped.
        await s.SendAsync(w => FrameWriter.WritePut(w, 3, "k"u8, new byte[(4 << 20) + 1]));
        Assert.Contains("limit", ResponseBody.ParseMessage((await s.ExpectAsync(3, StatusCode.TooLarge)).Body), StringComparison.Ordinal);
        // Malformed key list (count says 2, one key).
        await s.SendAsync(w => FrameWriter.WriteResponse(w, Opcode.ExistsPrefix, StatusCode.Ok, 4, [2, 0, 1, 0, 9]));
        await s.ExpectAsync(4, StatusCode.BadRequest);
        // PUT body shorter than its key.
        await s.SendAsync(w => FrameWriter.WriteResponse(w, Opcode.Put, StatusCode.Ok, 5, [9, 0, 1]));
        await s.ExpectAsync(5, StatusCode.BadRequest);
        // PING with a body.
        await s.SendAsync(w => FrameWriter.WriteResponse(w, Opcode.Ping, StatusCode.Ok, 6, [1]));
        await s.ExpectAsync(6, StatusCode.BadRequest);
        // Still in sync.
        await s.SendAsync(w => FrameWriter.WritePut(w, 7, "k"u8, [5]));
        await s.ExpectAsync(7, StatusCode.Ok);
        await s.SendAsync(w => FrameWriter.WriteKeyRequest(w, Opcode.Get, 8, "k"u8));
        Assert.Equal([5], (await s.ExpectAsync(8, StatusCode.Ok)).Body);
        Assert.Equal(6, s.Metrics.Snapshot(default).Single(p => p.Key == "request_errors").Value);
    }

    [Theory]
    [InlineData("magic")]
    [InlineData("version")]
    [InlineData("flags")]
    [InlineData("length")]
    [InlineData("garbage")]
    public async Task A_framing_violation_gets_one_error_frame_then_a_close(string kind)
    {
        await using var s = new SessionHarness();
        var frame = new byte[FrameHeader.Size];
        new FrameHeader(Opcode.Ping, StatusCode.Ok, 1, 0).WriteTo(frame);
        switch (kind)
        {
            case "magic": frame[0] ^= 0xFF; break;
            case "version": frame[4] = 9; break;
            case "flags": frame[7] = 1; break;
            case "length": BinaryPrimitives.WriteUInt32LittleEndian(frame.AsSpan(12), uint.MaxValue); break;
            default: new Random(5).NextBytes(frame); break;
        }

        await s.SendRawAsync(frame);
        var reply = await s.ReceiveAsync();
        Assert.NotNull(reply);
        Assert.Equal(StatusCode.ProtocolViolation, reply.Value.Header.Status);
        Assert.Equal(0u, reply.Value.Header.RequestId);
        Assert.Null(await s.ReceiveAsync()); // closed
        await s.Running.WaitAsync(TimeSpan.FromSeconds(5));
        Assert.Equal(1, s.Metrics.Snapshot(default).Single(p => p.Key == "protocol_errors").Value);
    }

    [Fact]
    public async Task A_connection_closed_inside_a_value_releases_its_buffer()
    {
        var s = new SessionHarness();
        await s.SendAsync(w => FrameWriter.WritePutHead(w, 1, "k"u8, 1 << 20));
        await s.SendRawAsync(new byte[100_000]);
        await s.DisposeAsync(); // completes the input mid-value; asserts the pool is empty
        Assert.Equal(0, s.Store.GetStats().Items);
    }

    [Fact]
    public async Task Auth_is_enforced_when_a_token_is_set()
    {
        await using var s = new SessionHarness(new CacheServerOptions { AuthToken = "s3cret" });
        await s.SendAsync(w => FrameWriter.WriteEmpty(w, Opcode.Ping, StatusCode.Ok, 1));
        await s.ExpectAsync(1, StatusCode.Ok); // PING needs no auth
        await s.SendAsync(w => FrameWriter.WritePut(w, 2, "k"u8, [1]));
        await s.ExpectAsync(2, StatusCode.Unauthorized);
        await s.SendAsync(w => FrameWriter.WriteAuth(w, 3, "wrong"u8));
        await s.ExpectAsync(3, StatusCode.Unauthorized);
        await s.SendAsync(w => FrameWriter.WriteKeyRequest(w, Opcode.Get, 4, "k"u8));
        await s.ExpectAsync(4, StatusCode.Unauthorized);
        await s.SendAsync(w => FrameWriter.WriteAuth(w, 5, "s3cret"u8));
        await s.ExpectAsync(5, StatusCode.Ok);
        await s.SendAsync(w => FrameWriter.WritePut(w, 6, "k"u8, [1]));
        await s.ExpectAsync(6, StatusCode.Ok);
        Assert.Equal(1, s.Store.GetStats().Items);
    }

    [Fact]
    public async Task Shutdown_finishes_the_request_in_progress_then_says_so()
    {
        await using var s = new SessionHarness();
        await s.SendAsync(w => FrameWriter.WriteEmpty(w, Opcode.Ping, StatusCode.Ok, 1));
        await s.ExpectAsync(1, StatusCode.Ok);
        s.Stop();
        var reply = await s.ReceiveAsync();
        Assert.Equal(StatusCode.ShuttingDown, reply!.Value.Header.Status);
        await s.Running.WaitAsync(TimeSpan.FromSeconds(5));
    }

    [Fact]
    public async Task Multi_get_over_the_frame_limit_marks_the_rest_omitted()
    {
        var options = new CacheServerOptions { Limits = new ProtocolLimits { MaxValueBytes = 1 << 20, MaxFrameBytes = (1 << 20) + 4096 } };
        await using var s = new SessionHarness(options);
        var v = Value(600_000, 3);
        await s.SendAsync(w =>
        {
            FrameWriter.WritePut(w, 1, "a"u8, v);
            FrameWriter.WritePut(w, 2, "b"u8, v);
            FrameWriter.WriteKeyListRequest(w, Opcode.MultiGet, 3, ["a"u8.ToArray(), "b"u8.ToArray(), "c"u8.ToArray()]);
        });
        await s.ExpectAsync(1, StatusCode.Ok);
        await s.ExpectAsync(2, StatusCode.Ok);
        var body = (await s.ExpectAsync(3, StatusCode.Ok)).Body;
        var omitted = new bool[3];
        var entries = ResponseBody.ParseMultiGet(body, 3, omitted);
        Assert.Equal(v, body[entries[0]!.Value]);
        Assert.Equal([false, true, true], omitted);
    }
}
