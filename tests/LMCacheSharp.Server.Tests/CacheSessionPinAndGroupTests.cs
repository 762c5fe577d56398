using System.Buffers;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Protocol;

namespace LMCacheSharp.Server.Tests;

/// <summary>PIN, UNPIN and PUT-IN-GROUP over a <see cref="CacheSession"/>: answers, limits, and bad bodies as request-level errors.</summary>
public sealed class CacheSessionPinAndGroupTests
{
    private static readonly ProtocolLimits Limits = new() { MaxKeyBytes = 64, MaxValueBytes = 4 << 20, MaxKeysPerRequest = 256, MaxFrameBytes = 5 << 20 };

    private static SessionHarness Harness(MemoryCacheStore store) => new(new CacheServerOptions { Limits = Limits }, store);

    private static async Task PutAsync(SessionHarness s, string key, int length, string? group = null)
    {
        var id = s.NextId();
        var value = new byte[length];
        await s.SendAsync(w =>
        {
            if (group is null)
            {
                FrameWriter.WritePut(w, id, System.Text.Encoding.ASCII.GetBytes(key), value);
            }
            else
            {
                FrameWriter.WritePutInGroup(w, id, System.Text.Encoding.ASCII.GetBytes(group), System.Text.Encoding.ASCII.GetBytes(key), value);
            }
        });
        var reply = await s.ExpectAsync(id, StatusCode.Ok);
        Assert.Equal(group is null ? Opcode.Put : Opcode.PutInGroup, reply.Header.Opcode);
    }

    private static async Task<(FrameHeader Header, byte[] Body)> KeysAsync(SessionHarness s, Opcode opcode, StatusCode status, params string[] keys)
    {
        var id = s.NextId();
        await s.SendAsync(w => FrameWriter.WriteKeyListRequest(w, opcode, id, [.. keys.Select(k => (ReadOnlyMemory<byte>)System.Text.Encoding.ASCII.GetBytes(k))]));
        return await s.ExpectAsync(id, status);
    }

    private static async Task PingAsync(SessionHarness s)
    {
        var id = s.NextId();
        await s.SendAsync(w => FrameWriter.WriteEmpty(w, Opcode.Ping, StatusCode.Ok, id));
        await s.ExpectAsync(id, StatusCode.Ok);
    }

    [Fact]
    public async Task Pin_and_unpin_answer_counts_and_pinned_keys_survive_pressure()
    {
        await using var s = Harness(new MemoryCacheStore(4 * 4096, poolRetainedBytes: 0));
        await PutAsync(s, "a", 4096);
        await PutAsync(s, "b", 4096);
        var pin = await KeysAsync(s, Opcode.Pin, StatusCode.Ok, "a", "absent");
        Assert.Equal(Opcode.Pin, pin.Header.Opcode);
        Assert.Equal(1, ResponseBody.ParseCount(pin.Body, 2));
        for (var i = 0; i < 10; i++)
        {
            await PutAsync(s, "x" + i, 4096);
        }

        Assert.True(s.Store.Contains("a"u8));
        Assert.False(s.Store.Contains("b"u8));
        var stats = s.Metrics.Snapshot(s.Store.GetStats()).ToDictionary(p => p.Key, p => p.Value);
        Assert.Equal((1L, 4096L, 2L * 4096), (stats["pinned_items"], stats["pinned_bytes"], stats["max_pinned_bytes"]));
        Assert.Equal(1, stats["requests_pin"]);

        var unpin = await KeysAsync(s, Opcode.Unpin, StatusCode.Ok, "a", "a");
        Assert.Equal(Opcode.Unpin, unpin.Header.Opcode);
        Assert.Equal(1, ResponseBody.ParseCount(unpin.Body, 2)); // pinned once: the second finds it unpinned
    }

    [Fact]
    public async Task A_pin_over_the_limit_is_too_large_and_the_connection_stays()
    {
        await using var s = Harness(new MemoryCacheStore(4 * 4096, poolRetainedBytes: 0));
        await PutAsync(s, "a", 4096);
        await PutAsync(s, "b", 4096);
        await PutAsync(s, "c", 4096);
        var refused = await KeysAsync(s, Opcode.Pin, StatusCode.TooLarge, "a", "b", "c");
        Assert.Contains("limit", ResponseBody.ParseMessage(refused.Body), StringComparison.Ordinal);
        Assert.Equal(0, s.Store.GetStats().PinnedItems);
        await PingAsync(s);
        var empty = await KeysAsync(s, Opcode.Pin, StatusCode.Ok); // no keys: nothing pinned
        Assert.Equal(0, ResponseBody.ParseCount(empty.Body, 0));
        var id = s.NextId();
        await s.SendAsync(w => FrameWriter.WriteEmpty(w, Opcode.Unpin, StatusCode.Ok, id)); // not even a key count
        await s.ExpectAsync(id, StatusCode.BadRequest);
        await PingAsync(s);
    }

    [Fact]
    public async Task Put_in_group_counts_against_the_quota_and_old_plain_puts_keep_working()
    {
        var a = CacheNamespace.QuotaGroupOf("tenant-a");
        var store = new MemoryCacheStore(16 * 4096, poolRetainedBytes: 0, new CacheStoreLimits { GroupQuotas = new Dictionary<string, long> { [a] = 2 * 4096 } });
        await using var s = Harness(store);
        await PutAsync(s, "plain", 100); // an old client: PUT, flags 0
        for (var i = 0; i < 4; i++)
        {
            await PutAsync(s, "a" + i, 4096, a);
        }

        Assert.True(store.Contains("plain"u8));
        Assert.False(store.Contains("a0"u8) || store.Contains("a1"u8));
        Assert.True(store.Contains("a2"u8) && store.Contains("a3"u8));
        Assert.Equal(2, store.GetStats().QuotaEvictions);

        var id = s.NextId();
        await s.SendAsync(w => FrameWriter.WritePutInGroup(w, id, System.Text.Encoding.ASCII.GetBytes(a), "big"u8, new byte[3 * 4096]));
        var tooLarge = await s.ExpectAsync(id, StatusCode.TooLarge);
        Assert.Contains("quota", ResponseBody.ParseMessage(tooLarge.Body), StringComparison.Ordinal);
        Assert.Equal(1, s.Metrics.Snapshot(store.GetStats()).Single(p => p.Key == "requests_put_in_group").Value - 4);
    }

    [Fact]
    public async Task A_put_in_group_cut_short_anywhere_is_a_clean_request_level_error()
    {
        await using var s = Harness(new MemoryCacheStore(1 << 20, poolRetainedBytes: 0));
        var w = new ArrayBufferWriter<byte>();
        FrameWriter.WritePutInGroup(w, 1, "grp"u8, "key"u8, "value"u8);
        var body = w.WrittenSpan[FrameHeader.Size..].ToArray();
        var valueStart = 1 + 3 + 2 + 3;
        for (var cut = 0; cut <= body.Length; cut++)
        {
            // A frame whose body ends at `cut`: inside the group length, the group, the key length, the key or the value.
            var frame = new byte[FrameHeader.Size + cut];
            var id = s.NextId();
            new FrameHeader(Opcode.PutInGroup, StatusCode.Ok, id, cut).WriteTo(frame);
            body.AsSpan(0, cut).CopyTo(frame.AsSpan(FrameHeader.Size));
            await s.SendRawAsync(frame);
            await s.Input.FlushAsync();
            var reply = await s.ExpectAsync(id, cut < valueStart ? StatusCode.BadRequest : StatusCode.Ok);
            Assert.Equal(Opcode.PutInGroup, reply.Header.Opcode);
            await PingAsync(s); // still in sync
        }

        foreach (var groupLength in new byte[] { 0, 65, 255 })
        {
            var frame = new byte[FrameHeader.Size + 8];
            var id = s.NextId();
            new FrameHeader(Opcode.PutInGroup, StatusCode.Ok, id, 8).WriteTo(frame);
            frame[FrameHeader.Size] = groupLength;
            await s.SendRawAsync(frame);
            await s.Input.FlushAsync();
            await s.ExpectAsync(id, StatusCode.BadRequest);
            await PingAsync(s);
        }
    }
}
