using System.Buffers.Binary;
using System.IO.Hashing;
using LMCacheSharp.Core.Codecs;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Storage;

namespace LMCacheSharp.Core.Tests;

/// <summary>The disk tier's in-memory index on its own: capacity accounting, reservations, eviction order and the keys it holds back, with no files.</summary>
public sealed class DiskChunkIndexTests
{
    private const long Block = DiskChunkFile.HeaderBlockSize;
    private readonly List<ChunkHash> _removed = [];

    [Fact]
    public void A_committed_write_counts_its_blocks_in_place_of_its_reservation()
    {
        var index = NewIndex(capacity: 100 * Block);
        List<ChunkHash>? evicted = null;
        Assert.Equal(DiskWriteReservation.Reserved, index.TryReserve(Key(1), 10 * Block, null, ref evicted));
        Assert.Equal(10 * Block, index.UsedBytes);
        Assert.Equal(0, index.Count);
        Assert.False(index.Contains(Key(1))); // not readable before its file is in place

        index.Commit(Entry(1, fileLength: Block + 5000), 10 * Block); // 4 KiB header block + 5000 B: 3 blocks
        Assert.Equal(3 * Block, index.UsedBytes);
        Assert.Equal(1, index.Count);
        Assert.True(index.Contains(Key(1)));
        Assert.Null(evicted);

        Assert.Equal(DiskWriteReservation.Reserved, index.TryReserve(Key(2), 10 * Block, null, ref evicted));
        index.Abort(Key(2), 10 * Block);
        Assert.Equal(3 * Block, index.UsedBytes);
        Assert.False(index.Contains(Key(2)));
        Assert.Equal(DiskWriteReservation.Reserved, index.TryReserve(Key(2), Block, null, ref evicted)); // free to try again
    }

    [Fact]
    public void A_write_larger_than_the_capacity_is_refused_and_evicts_nothing()
    {
        var index = NewIndex(capacity: 10 * Block);
        Add(index, 1, Block);
        List<ChunkHash>? evicted = null;
        Assert.Equal(DiskWriteReservation.TooLarge, index.TryReserve(Key(2), 11 * Block, null, ref evicted));
        Assert.Null(evicted);
        Assert.Equal(1, index.Count);
        Assert.Equal(Block, index.UsedBytes);
    }

    [Fact]
    public void Room_is_made_by_evicting_the_least_recently_used_and_their_keys_wait_for_their_files_to_go()
    {
        var index = NewIndex(capacity: 4 * Block);
        for (var i = 1; i <= 4; i++)
        {
            Add(index, i, Block); // a one-block file each: full
        }

        Assert.True(index.TryTouch(Key(1), out var touched)); // 1 is now the most recently used
        Assert.Equal(Key(1), touched.Key);
        Assert.Equal([Key(1), Key(4), Key(3), Key(2)], index.KeysByRecency());

        List<ChunkHash>? evicted = null;
        Assert.Equal(DiskWriteReservation.Reserved, index.TryReserve(Key(5), 2 * Block, null, ref evicted));
        Assert.Equal([Key(2), Key(3)], evicted);
        Assert.Equal([Key(2), Key(3)], _removed);
        Assert.Equal(4 * Block, index.UsedBytes); // never over the capacity, reservations included

        // Until the caller has unlinked an evicted file, its key cannot be written: the unlink could hit the new file.
        List<ChunkHash>? none = null;
        Assert.Equal(DiskWriteReservation.BeingDeleted, index.TryReserve(Key(2), Block, null, ref none));
        index.FileDeleted(evicted!);
        index.Commit(Entry(5, 2 * Block), 2 * Block);
        Assert.Equal(DiskWriteReservation.Reserved, index.TryReserve(Key(2), Block, null, ref none));
        Assert.Equal([Key(4)], none); // the least recently used left
    }

    [Fact]
    public void A_stored_key_is_only_refreshed_and_a_key_being_written_is_not_written_twice()
    {
        var index = NewIndex(capacity: 10 * Block);
        Add(index, 1, Block);
        Add(index, 2, Block);
        List<ChunkHash>? evicted = null;
        Assert.Equal(DiskWriteReservation.AlreadyStored, index.TryReserve(Key(1), Block, null, ref evicted));
        Assert.Equal(Key(1), index.KeysByRecency()[0]);
        Assert.Equal(2 * Block, index.UsedBytes);

        Assert.Equal(DiskWriteReservation.Reserved, index.TryReserve(Key(3), Block, null, ref evicted));
        Assert.Equal(DiskWriteReservation.BeingWritten, index.TryReserve(Key(3), Block, null, ref evicted));
        Assert.Equal(3 * Block, index.UsedBytes);
        Assert.Empty(_removed);
    }

    [Fact]
    public void Replacing_with_the_same_file_only_refreshes_and_with_another_file_drops_the_stored_entry()
    {
        var index = NewIndex(capacity: 10 * Block);
        var stored = Add(index, 1, 2 * Block);
        Add(index, 2, Block);
        List<ChunkHash>? evicted = null;

        Assert.Equal(DiskWriteReservation.AlreadyStored, index.TryReserve(Key(1), 2 * Block, stored.Record, ref evicted));
        Assert.Equal(Key(1), index.KeysByRecency()[0]);
        Assert.True(index.IsCurrent(stored));

        var other = stored.Record with { Codec = KvCodecId.Lz4, EncodedChecksum = 42 };
        Assert.False(stored.Record.SameFileAs(other));
        Assert.Equal(DiskWriteReservation.Reserved, index.TryReserve(Key(1), 2 * Block, other, ref evicted));
        Assert.False(index.IsCurrent(stored));
        Assert.False(index.Contains(Key(1)));
        Assert.Equal([Key(1)], _removed);
        Assert.Null(evicted); // the replaced file is renamed over, not unlinked
        Assert.Equal(3 * Block, index.UsedBytes); // 2's block and the new reservation

        var replacement = new DiskChunkIndex.Entry(other);
        index.Commit(replacement, 2 * Block);
        Assert.True(index.IsCurrent(replacement));
    }

    [Fact]
    public void A_discard_only_drops_the_entry_it_read()
    {
        var index = NewIndex(capacity: 10 * Block);
        var first = Add(index, 1, Block);
        Assert.True(index.TryForget(Key(1), only: first));
        Assert.False(index.TryForget(Key(1), only: first)); // gone already
        index.FileDeleted(Key(1));

        var second = Add(index, 1, Block); // written again meanwhile
        Assert.False(index.TryForget(Key(1), only: first));
        Assert.True(index.IsCurrent(second));
        Assert.True(index.TryForget(Key(1)));
        Assert.False(index.TryForget(Key(1)));
        Assert.Equal([Key(1), Key(1)], _removed);
    }

    [Fact]
    public void Forget_all_goes_least_recently_used_first_and_holds_every_key_until_its_file_is_gone()
    {
        var index = NewIndex(capacity: 10 * Block);
        for (var i = 1; i <= 3; i++)
        {
            Add(index, i, Block);
        }

        var keys = index.ForgetAll();
        Assert.Equal([Key(1), Key(2), Key(3)], keys);
        Assert.Equal(0, index.Count);
        Assert.Equal(0, index.UsedBytes);
        List<ChunkHash>? evicted = null;
        Assert.Equal(DiskWriteReservation.BeingDeleted, index.TryReserve(Key(2), Block, null, ref evicted));
        index.FileDeleted(keys);
        Assert.Equal(DiskWriteReservation.Reserved, index.TryReserve(Key(2), Block, null, ref evicted));
    }

    [Fact]
    public void Loaded_entries_over_the_capacity_are_evicted_oldest_first_and_reset_reports_nothing()
    {
        var index = NewIndex(capacity: 3 * Block);
        for (var i = 1; i <= 5; i++)
        {
            index.Load(Entry(i, Block)); // oldest first, as the recovery loads them
        }

        Assert.Equal(5 * Block, index.UsedBytes);
        Assert.Equal([Key(1), Key(2)], index.EvictOverCapacity());
        Assert.Equal([Key(5), Key(4), Key(3)], index.KeysByRecency());
        Assert.Equal(3 * Block, index.UsedBytes);
        Assert.Empty(index.EvictOverCapacity());

        _removed.Clear();
        index.Reset();
        Assert.Equal(0, index.Count);
        Assert.Empty(_removed);
    }

    [Fact]
    public void Prefix_counts_and_lineages_come_from_the_entries()
    {
        var index = NewIndex(capacity: 10 * Block);
        var lineage = new ChunkLineage(Key(1), [1, 2, 3]);
        Add(index, 1, Block);
        index.Load(new DiskChunkIndex.Entry(Entry(2, Block).Record, lineage));
        Assert.Equal(2, index.CountPrefix([Key(1), Key(2), Key(3), Key(1)]));
        Assert.Equal(0, index.CountPrefix([Key(3), Key(1)]));
        Assert.Equal(0, index.CountPrefix([]));
        var (key, read) = Assert.Single(index.Lineages());
        Assert.Equal(Key(2), key);
        Assert.Same(lineage, read);
    }

    [Fact]
    public void Random_operations_keep_the_accounting_equal_to_a_recount_and_reservations_evict_until_they_fit()
    {
        var random = new Random(11);
        var index = NewIndex(capacity: 64 * Block);
        var files = new Dictionary<ChunkHash, long>(); // what the index holds, by the test's own count
        var writing = new Dictionary<ChunkHash, long>();
        var deleting = new List<ChunkHash>();
        index.Removed = key => files.Remove(key);
        for (var step = 0; step < 20_000; step++)
        {
            var id = random.Next(100);
            var key = Key(id);
            switch (random.Next(6))
            {
                case 0 or 1:
                    List<ChunkHash>? evicted = null;
                    var reserved = random.Next(1, 8) * Block;
                    if (index.TryReserve(key, reserved, null, ref evicted) == DiskWriteReservation.Reserved)
                    {
                        writing[key] = reserved;

                        // It evicts until the reservation fits; only reservations of other writes in flight can leave
                        // nothing more to evict (the tier's few I/O threads bound how many there are).
                        Assert.True(index.UsedBytes <= index.CapacityBytes || index.Count == 0);
                    }

                    deleting.AddRange(evicted ?? []);
                    break;
                case 2 when writing.Remove(key, out var r):
                    var entry = Entry(id, random.Next(1, (int)r + 1));
                    index.Commit(entry, r);
                    files[key] = entry.Record.BlockBytes;
                    break;
                case 3 when writing.Remove(key, out var r):
                    index.Abort(key, r);
                    break;
                case 4:
                    if (index.TryForget(key))
                    {
                        deleting.Add(key);
                    }

                    break;
                case 5 when deleting.Count > 0:
                    var i = random.Next(deleting.Count);
                    index.FileDeleted(deleting[i]);
                    deleting.RemoveAt(i);
                    break;
            }

            Assert.Equal(files.Values.Sum() + writing.Values.Sum(), index.UsedBytes);
            Assert.Equal(files.Count, index.Count);
        }
    }

    private DiskChunkIndex NewIndex(long capacity) => new(capacity) { Removed = _removed.Add };

    private static DiskChunkIndex.Entry Add(DiskChunkIndex index, int id, long fileLength)
    {
        List<ChunkHash>? evicted = null;
        Assert.Equal(DiskWriteReservation.Reserved, index.TryReserve(Key(id), DiskChunkFile.BlockRound(fileLength), null, ref evicted));
        Assert.Null(evicted);
        var entry = Entry(id, fileLength);
        index.Commit(entry, DiskChunkFile.BlockRound(fileLength));
        return entry;
    }

    private static DiskChunkIndex.Entry Entry(int id, long fileLength) =>
        new(new DiskChunkRecord(Key(id), KvCodecId.Raw, fileLength, (int)Math.Max(0, fileLength - Block), (ulong)id));

    private static ChunkHash Key(int i)
    {
        var bytes = new byte[ChunkHash.Size];
        BinaryPrimitives.WriteInt32LittleEndian(bytes, i);
        return new ChunkHash([.. XxHash128.Hash(bytes), .. XxHash128.Hash(bytes.AsSpan(0, 8))]);
    }
}
