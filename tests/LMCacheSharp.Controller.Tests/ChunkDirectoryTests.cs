using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.KvEvents;

namespace LMCacheSharp.Controller.Tests;

/// <summary>The directory on its own: batches applied directly, lookups to the token.</summary>
public sealed class ChunkDirectoryTests
{
    private const int Chunk = 4;
    private static readonly CacheNamespace Ns = new("fp", new KvFormat(2, 8, 8, KvDataType.F16, KvLayout.LayerKV));

    private static long[] Hashes(int[] tokens, bool partial = false, CacheNamespace? ns = null) =>
        [.. PrefixHasher.ComputeKeys(ns ?? Ns, tokens, Chunk, partial).Select(KvEventWire.BlockHash)];

    private static KvEventBatch Stored(int[] tokens, string medium = "CPU", bool partial = false, CacheNamespace? ns = null)
    {
        var hashes = Hashes(tokens, partial, ns);
        var events = new List<KvWireEvent>();
        for (var i = 0; i < hashes.Length; i++)
        {
            events.Add(new BlockStoredEvent([hashes[i]], i == 0 ? null : hashes[i - 1], tokens[(i * Chunk)..Math.Min(tokens.Length, (i + 1) * Chunk)], Chunk, null, medium));
        }

        return new KvEventBatch(0, events, 0);
    }

    private static InstanceHit Lookup(ChunkDirectory directory, int[] tokens, int instance = 1, CacheNamespace? ns = null)
    {
        var results = new InstanceHit[1];
        directory.Lookup(Hashes(tokens, ns: ns), tokens, Chunk, (ns ?? Ns).Seed, [instance], results);
        return results[0];
    }

    [Fact]
    public void Whole_chunks_then_a_partial_tail_are_found_to_the_token()
    {
        var directory = new ChunkDirectory();
        directory.AddInstance(1);
        int[] stored = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]; // two whole chunks and a tail of two
        directory.Apply(1, Stored(stored, partial: true));
        Assert.Equal(3, directory.Count);

        // The request shares 8 tokens whole and one token of the tail, then differs.
        Assert.Equal(new InstanceHit(1, 9, 0, 0, 9), Lookup(directory, [1, 2, 3, 4, 5, 6, 7, 8, 9, 99, 100]));
        // Diverging inside chunk 1: chunk 0 whole, then 2 tokens of the stored chunk 1 compared token by token.
        Assert.Equal(6, Lookup(directory, [1, 2, 3, 4, 5, 6, 42, 42]).Total);
        // A prompt shorter than a chunk: the first chunk's tokens compared.
        Assert.Equal(3, Lookup(directory, [1, 2, 3]).Memory);
        Assert.Equal(0, Lookup(directory, [7, 7, 7, 7]).Total);
    }

    [Fact]
    public void Evictions_per_tier_and_a_clear_leave_the_directory()
    {
        var directory = new ChunkDirectory();
        directory.AddInstance(1);
        int[] tokens = [.. Enumerable.Range(1, 12)];
        directory.Apply(1, Stored(tokens));
        directory.Apply(1, Stored(tokens, "DISK"));
        Assert.Equal((3L, 3L, 0L), directory.CountsOf(1));
        var hashes = Hashes(tokens);
        // Chunk 1 leaves memory: memory's run stops at chunk 0; disk still has all three.
        directory.Apply(1, new KvEventBatch(0, [new BlockRemovedEvent([hashes[1]], "CPU")], 0));
        var hit = Lookup(directory, tokens);
        Assert.Equal((4, 12, 12), (hit.Memory, hit.Disk, hit.Total));
        Assert.Equal(3, directory.Count);
        directory.Apply(1, new KvEventBatch(0, [new BlockRemovedEvent([.. hashes], "DISK")], 0));
        Assert.Equal(2, directory.Count); // chunk 1 was held nowhere else
        Assert.Equal(4, Lookup(directory, tokens).Total);
        directory.Apply(1, new KvEventBatch(0, [new AllBlocksClearedEvent()], 0));
        Assert.Equal(0, directory.Count);
        Assert.Equal((0L, 0L, 0L), directory.CountsOf(1));
    }

    [Fact]
    public void Instances_are_kept_apart_and_a_removed_instance_takes_its_entries()
    {
        var directory = new ChunkDirectory();
        directory.AddInstance(1);
        directory.AddInstance(2);
        int[] tokens = [.. Enumerable.Range(1, 8)];
        directory.Apply(1, Stored(tokens));
        directory.Apply(2, Stored(tokens[..4]));
        Assert.Equal(8, Lookup(directory, tokens, 1).Total);
        Assert.Equal(4, Lookup(directory, tokens, 2).Total);
        directory.RemoveInstance(1);
        Assert.Equal(0, Lookup(directory, tokens, 1).Total);
        Assert.Equal(1, directory.Count);
        Assert.Equal(0, directory.Apply(1, Stored(tokens))); // a late batch of a removed instance is ignored
        Assert.Equal(1, directory.Count);
    }

    [Fact]
    public void A_salted_namespace_is_invisible_to_an_unsalted_lookup_and_the_other_way()
    {
        var directory = new ChunkDirectory();
        directory.AddInstance(1);
        var salted = Ns.WithSalt("tenant-a");
        int[] tokens = [.. Enumerable.Range(1, 10)];
        directory.Apply(1, Stored(tokens, partial: true, ns: salted));
        Assert.Equal(0, Lookup(directory, tokens).Total);
        Assert.Equal(0, Lookup(directory, tokens[..3]).Total); // equal first tokens, another namespace's root
        Assert.Equal(10, Lookup(directory, tokens, ns: salted).Total);
        Assert.Equal(3, Lookup(directory, tokens[..3], ns: salted).Total);
    }

    [Fact]
    public void Top_prefixes_count_chunks_and_instances()
    {
        var directory = new ChunkDirectory();
        directory.AddInstance(1);
        directory.AddInstance(2);
        directory.Apply(1, Stored([.. Enumerable.Range(1, 16)]));
        directory.Apply(2, Stored([.. Enumerable.Range(1, 8)]));
        directory.Apply(2, Stored([50, 51, 52, 53]));
        var top = directory.TopPrefixes(10);
        Assert.Equal(2, top.Count);
        Assert.Equal((4, 2, 16L), (top[0].Chunks, top[0].Instances, top[0].Tokens));
        Assert.Equal([1, 2, 3, 4], top[0].FirstTokens);
        Assert.Equal((1, 1), (top[1].Chunks, top[1].Instances));
    }
}
