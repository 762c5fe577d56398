namespace LMCacheSharp.Core.Storage;

/// <summary>An element of an <see cref="LruList{T}"/>: the links live in the element, so recency updates allocate nothing.</summary>
/// <typeparam name="TSelf">The element type itself.</typeparam>
internal abstract class LruNode<TSelf>
    where TSelf : LruNode<TSelf>
{
    /// <summary>The next more recently used element, or null at the head.</summary>
    public TSelf? Previous { get; internal set; }

    /// <summary>The next less recently used element, or null at the tail.</summary>
    public TSelf? Next { get; internal set; }
}

/// <summary>
/// An intrusive doubly linked recency list: most recently used at the head, least recently used (the eviction victim) at
/// the tail. O(1) link, touch and unlink, no allocation. Not thread-safe: the owner (a tier or store) holds its own lock.
/// </summary>
/// <typeparam name="T">The element type.</typeparam>
internal sealed class LruList<T>
    where T : LruNode<T>
{
    /// <summary>The most recently used element, or null when empty.</summary>
    public T? Head { get; private set; }

    /// <summary>The least recently used element, or null when empty.</summary>
    public T? Tail { get; private set; }

    /// <summary>Puts <paramref name="node"/>, which must not be in the list, at the head.</summary>
    public void LinkAtHead(T node)
    {
        ArgumentNullException.ThrowIfNull(node);
        node.Previous = null;
        node.Next = Head;
        if (Head is not null)
        {
            Head.Previous = node;
        }

        Head = node;
        Tail ??= node;
    }

    /// <summary>Moves <paramref name="node"/>, which must be in the list, to the head (it was just used).</summary>
    public void MoveToHead(T node)
    {
        ArgumentNullException.ThrowIfNull(node);
        if (Head != node)
        {
            Unlink(node);
            LinkAtHead(node);
        }
    }

    /// <summary>Takes <paramref name="node"/> out of the list; a node that is not in it is left as it is.</summary>
    public void Unlink(T node)
    {
        ArgumentNullException.ThrowIfNull(node);
        if (node.Previous is not null)
        {
            node.Previous.Next = node.Next;
        }
        else if (Head == node)
        {
            Head = node.Next;
        }
        else
        {
            return; // not linked
        }

        if (node.Next is not null)
        {
            node.Next.Previous = node.Previous;
        }
        else if (Tail == node)
        {
            Tail = node.Previous;
        }

        node.Previous = node.Next = null;
    }

    /// <summary>Empties the list, unlinking every element.</summary>
    public void Clear()
    {
        for (var node = Head; node is not null;)
        {
            var next = node.Next;
            node.Previous = node.Next = null;
            node = next;
        }

        Head = Tail = null;
    }
}
