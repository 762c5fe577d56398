using LMCacheSharp.Core.Keys;

namespace LMCacheSharp.Core.Tests;

public class ChunkHashTests
{
    [Fact]
    public void Keys_that_share_their_first_eight_bytes_do_not_share_a_hash_code()
    {
        // The cache server keys dictionaries by hashes its clients choose: a hash code of the first word alone let a client
        // send any number of keys that all land in one bucket.
        var codes = new HashSet<int>();
        var bytes = new byte[ChunkHash.Size];
        for (var i = 0; i < 1000; i++)
        {
            BitConverter.TryWriteBytes(bytes.AsSpan(24), i);
            codes.Add(new ChunkHash(bytes).GetHashCode());
        }

        Assert.True(codes.Count > 990, $"{codes.Count} distinct hash codes for 1000 keys");
    }

    [Fact]
    public void Equal_hashes_have_equal_hash_codes()
    {
        var a = ChunkHash.Parse(new string('a', 64));
        Assert.Equal(a.GetHashCode(), ChunkHash.Parse(new string('a', 64)).GetHashCode());
    }
}
