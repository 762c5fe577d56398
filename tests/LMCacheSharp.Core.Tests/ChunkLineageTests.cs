using CsCheck;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Core.Tests;

public sealed class ChunkLineageTests
{
    [Fact]
    public void Round_trips_and_any_damage_reads_as_nothing()
    {
        Gen.Int[0, 100_000].Array[1, 300].Select(Gen.Byte.Array[32]).Sample((tokens, parentBytes) =>
        {
            var lineage = new ChunkLineage(new ChunkHash(parentBytes), tokens);
            var buffer = new byte[ChunkLineage.SerializedLength(tokens.Length) + 5];
            Assert.True(lineage.TryWrite(buffer));
            var read = ChunkLineage.TryRead(buffer, tokens.Length);
            Assert.NotNull(read);
            Assert.Equal(lineage.Parent, read.Parent);
            Assert.Equal(tokens, read.Tokens);
            Assert.Null(ChunkLineage.TryRead(buffer, tokens.Length + 1)); // another chunk's token count
            Assert.Null(ChunkLineage.TryRead(buffer.AsSpan(0, buffer.Length - 6), tokens.Length)); // truncated
        }, iter: 200);
    }

    [Fact]
    public void A_flipped_bit_anywhere_is_refused()
    {
        var lineage = new ChunkLineage(new ChunkHash(new byte[32]), [1, 2, 3, 4, 5]);
        var buffer = new byte[ChunkLineage.SerializedLength(5)];
        Assert.True(lineage.TryWrite(buffer));
        for (var bit = 0; bit < buffer.Length * 8; bit++)
        {
            var damaged = (byte[])buffer.Clone();
            damaged[bit / 8] ^= (byte)(1 << (bit % 8));
            Assert.Null(ChunkLineage.TryRead(damaged, 5));
        }
    }

    [Fact]
    public void Too_small_a_destination_writes_nothing()
    {
        var lineage = new ChunkLineage(new ChunkHash(new byte[32]), [1, 2, 3]);
        Assert.False(lineage.TryWrite(new byte[ChunkLineage.SerializedLength(3) - 1]));
    }
}
