using LMCacheSharp.Core.Storage;

namespace LMCacheSharp.Core.Tests;

public class LruListTests
{
    private sealed class Node(int id) : LruNode<Node>
    {
        public int Id { get; } = id;
    }

    [Fact]
    public void Random_links_touches_and_unlinks_keep_the_order_of_a_reference_list()
    {
        var random = new Random(7);
        var list = new LruList<Node>();
        var reference = new List<Node>(); // index 0 = most recent
        var nodes = Enumerable.Range(0, 50).Select(i => new Node(i)).ToArray();
        for (var step = 0; step < 20_000; step++)
        {
            var node = nodes[random.Next(nodes.Length)];
            var linked = reference.Contains(node);
            switch (random.Next(3))
            {
                case 0 when !linked:
                    list.LinkAtHead(node);
                    reference.Insert(0, node);
                    break;
                case 1 when linked:
                    list.MoveToHead(node);
                    reference.Remove(node);
                    reference.Insert(0, node);
                    break;
                case 2:
                    list.Unlink(node); // a node that is not linked is left alone
                    reference.Remove(node);
                    break;
            }

            if (step % 97 == 0)
            {
                Assert.Equal(reference.Select(n => n.Id), Forward(list).Select(n => n.Id));
                Assert.Equal(Enumerable.Reverse(reference).Select(n => n.Id), Backward(list).Select(n => n.Id));
            }
        }

        list.Clear();
        Assert.Null(list.Head);
        Assert.Null(list.Tail);
        Assert.All(nodes, n => Assert.True(n.Previous is null && n.Next is null));
    }

    private static IEnumerable<Node> Forward(LruList<Node> list)
    {
        for (var n = list.Head; n is not null; n = n.Next)
        {
            yield return n;
        }
    }

    private static IEnumerable<Node> Backward(LruList<Node> list)
    {
        for (var n = list.Tail; n is not null; n = n.Previous)
        {
            yield return n;
        }
    }
}
