using System.Security.Cryptography;
using CsCheck;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Core.Tests;

public class PrefixHasherTests
{
    [Fact]
    public void Keys_follow_the_documented_chain_sha256_of_previous_hash_and_little_endian_tokens()
    {
        var ns = TestData.Namespace();
        var tokens = TestData.Tokens(40, 1);
        var keys = PrefixHasher.ComputeKeys(ns, tokens, 16, includePartial: true);
        Assert.Equal(3, keys.Length);

        var previous = new byte[32];
        ns.Seed.WriteTo(previous);
        for (var i = 0; i < 3; i++)
        {
            using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            sha.AppendData(previous);
            foreach (var t in tokens.Skip(i * 16).Take(16))
            {
                sha.AppendData(BitConverter.GetBytes(t)); // little-endian on every machine we run
            }

            previous = sha.GetHashAndReset();
            Assert.Equal(Convert.ToHexStringLower(previous), keys[i].ToString());
        }
    }

    [Fact]
    public void Keys_are_the_same_in_every_process_golden_vector()
    {
        // Frozen values, also reproduced independently by a Python script from the documented encoding (docs/architecture.md).
        // A change here means caches written by older builds or by other machines stop hitting.
        var ns = new CacheNamespace("golden-model", new KvFormat(4, 128, 128, KvDataType.F16, KvLayout.LayerKV));
        var tokens = Enumerable.Range(0, 512).ToArray();
        var keys = PrefixHasher.ComputeKeys(ns, tokens, 256);
        Assert.Equal(GoldenSeed, ns.Seed.ToString());
        Assert.Equal(GoldenKey1, keys[1].ToString());
    }

    private const string GoldenSeed = "02b21b330d2a5dc770d3d96056278527ade98ec26b24f78617f1fed5dac3b49b";
    private const string GoldenKey1 = "6682f2822177462d978e87100e107d52c05105631efbffc92c8b60590c0fc4ac";

    [Fact]
    public void Prefix_property_keys_of_a_prefix_are_a_prefix_of_the_keys()
    {
        var ns = TestData.Namespace();
        Gen.Int[0, 1000].Array[0, 300].Select(Gen.Int[1, 40]).Sample((tokens, chunk) =>
        {
            var all = PrefixHasher.ComputeKeys(ns, tokens, chunk);
            var cut = tokens.Length / 2;
            var prefix = PrefixHasher.ComputeKeys(ns, tokens.AsSpan(0, cut), chunk);
            Assert.Equal(all.Take(prefix.Length), prefix);
        }, iter: 200);
    }

    [Fact]
    public void Changing_one_token_changes_its_chunk_and_every_later_key_but_no_earlier_one()
    {
        var ns = TestData.Namespace();
        var tokens = TestData.Tokens(256, 2);
        var before = PrefixHasher.ComputeKeys(ns, tokens, 32);
        tokens[100]++;
        var after = PrefixHasher.ComputeKeys(ns, tokens, 32);
        for (var i = 0; i < before.Length; i++)
        {
            Assert.Equal(i < 3, before[i] == after[i]);
        }
    }

    [Theory]
    [InlineData(0, 256, false, 0)]
    [InlineData(255, 256, false, 0)]
    [InlineData(255, 256, true, 1)]
    [InlineData(256, 256, true, 1)]
    [InlineData(513, 256, false, 2)]
    [InlineData(513, 256, true, 3)]
    public void ChunkCount_counts_full_chunks_and_optionally_the_partial_one(int tokens, int chunk, bool partial, int expected) =>
        Assert.Equal(expected, PrefixHasher.ChunkCount(tokens, chunk, partial));

    [Fact]
    public void A_partial_chunk_key_differs_from_the_full_chunk_that_extends_it()
    {
        var ns = TestData.Namespace();
        var tokens = TestData.Tokens(64, 3);
        var partial = PrefixHasher.ComputeKeys(ns, tokens.AsSpan(0, 40), 32, includePartial: true);
        var full = PrefixHasher.ComputeKeys(ns, tokens, 32, includePartial: true);
        Assert.Equal(full[0], partial[0]);
        Assert.NotEqual(full[1], partial[1]);
    }

    [Fact]
    public void Large_chunk_sizes_work_beyond_the_stack_buffer()
    {
        var ns = TestData.Namespace();
        var tokens = TestData.Tokens(10_000, 4);
        var keys = PrefixHasher.ComputeKeys(ns, tokens, 4096, includePartial: true);
        Assert.Equal(3, keys.Length);
        Assert.Equal(keys, PrefixHasher.ComputeKeys(ns, tokens, 4096, includePartial: true));
    }

    [Fact]
    public void Invalid_chunk_size_is_rejected()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => PrefixHasher.ChunkCount(10, 0, false));
        Assert.Throws<ArgumentOutOfRangeException>(() => PrefixHasher.ChunkCount(10, PrefixHasher.MaxChunkSize + 1, false));
    }

    [Fact]
    public void ChunkHash_round_trips_through_hex_and_bytes()
    {
        var key = PrefixHasher.ComputeKeys(TestData.Namespace(), TestData.Tokens(16, 5), 16)[0];
        Assert.Equal(key, ChunkHash.Parse(key.ToString()));
        var bytes = new byte[32];
        key.WriteTo(bytes);
        Assert.Equal(key, new ChunkHash(bytes));
        Assert.False(key.IsEmpty);
    }
}
