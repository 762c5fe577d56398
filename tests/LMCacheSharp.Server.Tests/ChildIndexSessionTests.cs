using System.Buffers.Binary;
using LMCacheSharp.Protocol;

namespace LMCacheSharp.Server.Tests;

/// <summary>LINK and CHILDREN: the server's child index for token-exact lookups, and its bad inputs.</summary>
public class ChildIndexSessionTests
{
    private static byte[] Key(byte b) => Enumerable.Repeat(b, 32).ToArray();

    private static async Task PutAndLinkAsync(SessionHarness s, byte[] child, byte[] parent, int[] tokens)
    {
        var put = s.NextId();
        await s.SendAsync(w => FrameWriter.WritePut(w, put, child, [1, 2, 3]));
        await s.ExpectAsync(put, StatusCode.Ok);
        var link = s.NextId();
        await s.SendAsync(w => FrameWriter.WriteLinkRequest(w, link, child, parent, tokens));
        await s.ExpectAsync(link, StatusCode.Ok);
    }

    private static async Task<IReadOnlyList<(byte[] Key, int[] Tokens)>> ChildrenAsync(SessionHarness s, byte[] parent, int[] next, int max = 4)
    {
        var id = s.NextId();
        await s.SendAsync(w => FrameWriter.WriteChildrenRequest(w, id, parent, max, next));
        var (_, body) = await s.ExpectAsync(id, StatusCode.Ok);
        return ResponseBody.ParseChildren(body, max, s.Options.Limits);
    }

    [Fact]
    public async Task Children_come_best_first_with_their_tokens_and_only_while_their_value_is_stored()
    {
        await using var s = new SessionHarness();
        var parent = Key(9);
        await PutAndLinkAsync(s, Key(1), parent, [1, 2, 3, 4]);
        await PutAndLinkAsync(s, Key(2), parent, [1, 2, 7]);
        await PutAndLinkAsync(s, Key(3), parent, [5, 5]);

        var children = await ChildrenAsync(s, parent, [1, 2, 3, 9]);
        Assert.Equal(2, children.Count); // the [5, 5] child shares no token
        Assert.Equal(Key(1), children[0].Key);
        Assert.Equal([1, 2, 3, 4], children[0].Tokens);
        Assert.Equal(Key(2), children[1].Key);

        var delete = s.NextId();
        await s.SendAsync(w => FrameWriter.WriteKeyRequest(w, Opcode.Delete, delete, Key(1)));
        await s.ExpectAsync(delete, StatusCode.Ok);
        Assert.Equal([Key(2)], (await ChildrenAsync(s, parent, [1, 2, 3, 9])).Select(c => c.Key));

        var clear = s.NextId();
        await s.SendAsync(w => FrameWriter.WriteEmpty(w, Opcode.Clear, StatusCode.Ok, clear));
        await s.ExpectAsync(clear, StatusCode.Ok);
        await PutAndLinkAsync(s, Key(2), Key(8), [1]); // the value is back, but under another parent
        Assert.Empty(await ChildrenAsync(s, parent, [1, 2, 3, 9]));
    }

    [Fact]
    public async Task The_index_is_bounded_oldest_forgotten_first()
    {
        await using var s = new SessionHarness(new CacheServerOptions { MaxChildren = 2 });
        var parent = Key(9);
        await PutAndLinkAsync(s, Key(1), parent, [1, 1]);
        await PutAndLinkAsync(s, Key(2), parent, [1, 2]);
        await PutAndLinkAsync(s, Key(3), parent, [1, 3]);
        var children = await ChildrenAsync(s, parent, [1]);
        Assert.Equal([Key(2), Key(3)], children.Select(c => c.Key).Order(Comparer<byte[]>.Create((a, b) => a[0].CompareTo(b[0]))));
    }

    [Fact]
    public async Task Bad_link_and_children_bodies_get_request_level_errors_and_the_connection_goes_on()
    {
        await using var s = new SessionHarness();
        var bad = new List<(Opcode Opcode, byte[] Body, StatusCode Expected)>
        {
            (Opcode.Link, [], StatusCode.BadRequest),                                  // no key
            (Opcode.Link, LinkBody(Key(1), Key(2), tokenCount: 0, tokensSent: 0), StatusCode.BadRequest), // no tokens
            (Opcode.Link, LinkBody(Key(1), Key(2), tokenCount: 5, tokensSent: 3), StatusCode.BadRequest), // truncated tokens
            (Opcode.Link, [.. LinkBody(Key(1), Key(2), tokenCount: 1, tokensSent: 1), 0], StatusCode.BadRequest), // trailing byte
            (Opcode.Link, LinkBody([1, 2, 3], Key(2), tokenCount: 1, tokensSent: 1), StatusCode.BadRequest), // not a chunk hash
            (Opcode.Link, LinkBody(Key(1), Key(2), tokenCount: int.MaxValue, tokensSent: 1), StatusCode.TooLarge), // absurd count
            (Opcode.Children, ChildrenBody(Key(1), max: 0), StatusCode.BadRequest),    // zero children asked
            (Opcode.Children, ChildrenBody(Key(1), max: 5000), StatusCode.TooLarge), // over the limit
            (Opcode.Children, ChildrenBody(Key(1), max: 2)[..^2], StatusCode.BadRequest), // truncated count
        };
        foreach (var (opcode, body, expected) in bad)
        {
            var id = s.NextId();
            await s.SendAsync(w => FrameWriter.WriteResponse(w, opcode, StatusCode.Ok, id, body));
            var (header, _) = (await s.ReceiveAsync())!.Value;
            Assert.Equal(id, header.RequestId);
            Assert.True(header.Status == expected, $"{opcode} with {body.Length} bytes: {header.Status}, expected {expected}");
        }

        // A children lookup for a parent that is not a chunk hash is simply empty, and the connection still works.
        Assert.Empty(await ChildrenAsync(s, [1, 2, 3], [1]));
        await PutAndLinkAsync(s, Key(1), Key(2), [4]);
        Assert.Single(await ChildrenAsync(s, Key(2), [4]));
    }

    private static byte[] LinkBody(byte[] child, byte[] parent, int tokenCount, int tokensSent)
    {
        var body = new byte[2 + child.Length + 2 + parent.Length + 4 + (4 * tokensSent)];
        BinaryPrimitives.WriteUInt16LittleEndian(body, (ushort)child.Length);
        child.CopyTo(body, 2);
        BinaryPrimitives.WriteUInt16LittleEndian(body.AsSpan(2 + child.Length), (ushort)parent.Length);
        parent.CopyTo(body, 4 + child.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(body.AsSpan(4 + child.Length + parent.Length), (uint)tokenCount);
        return body;
    }

    private static byte[] ChildrenBody(byte[] parent, int max)
    {
        var body = new byte[2 + parent.Length + 2 + 4];
        BinaryPrimitives.WriteUInt16LittleEndian(body, (ushort)parent.Length);
        parent.CopyTo(body, 2);
        BinaryPrimitives.WriteUInt16LittleEndian(body.AsSpan(2 + parent.Length), (ushort)max);
        return body;
    }
}
