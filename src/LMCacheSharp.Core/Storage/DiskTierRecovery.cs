using System.Diagnostics;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Metrics;

namespace LMCacheSharp.Core.Storage;

/// <summary>
/// The disk tier's start-up scan: rebuilds the index from the chunk files in the directory, so a restarted process finds
/// its cache warm, partial chunks and their lineages included. Each file's header block is read (not its payload: a
/// damaged payload is found by the first read); a file whose header, name or length is wrong is deleted and counted as a
/// corrupt chunk, a temporary file left by a writer that did not finish is deleted. Files are indexed least recently used
/// first, by file time, and when the directory holds more than the capacity the oldest are evicted (the caller unlinks
/// them). Names this format does not write are left alone. Progress is reported after each subdirectory.
/// </summary>
internal static class DiskTierRecovery
{
    /// <summary>Scans <paramref name="root"/> into <paramref name="index"/>, which must be empty.</summary>
    /// <param name="root">The cache directory.</param>
    /// <param name="index">The tier's index, filled here.</param>
    /// <param name="metrics">Where discarded files are counted as corrupt chunks, or null.</param>
    /// <param name="tierName">The tier's name, for <paramref name="metrics"/>.</param>
    /// <param name="progress">Where progress is reported, or null.</param>
    /// <param name="evicted">Recovered keys evicted over capacity: forgotten by the index and marked as being deleted, their files for the caller to unlink.</param>
    /// <returns>What the scan found (its <see cref="DiskTierScan.Elapsed"/> without the caller's unlinks).</returns>
    public static DiskTierScan Run(string root, DiskChunkIndex index, CacheMetrics? metrics, string tierName,
        IProgress<DiskTierScanProgress>? progress, out List<ChunkHash> evicted)
    {
        var start = Stopwatch.GetTimestamp();
        var found = new List<(DiskChunkIndex.Entry Entry, DateTime Time)>();
        int discarded = 0, temps = 0, read = 0;
        var block = new byte[DiskChunkFile.HeaderBlockSize]; // the envelope header and the lineage after it
        var shards = new DirectoryInfo(root).EnumerateDirectories().Where(d => DiskChunkFile.IsShardDirectoryName(d.Name)).ToList();
        progress?.Report(new DiskTierScanProgress(0, shards.Count, 0));
        for (var i = 0; i < shards.Count; i++)
        {
            var dir = shards[i];
            foreach (var file in dir.EnumerateFiles())
            {
                var name = file.Name;
                if (DiskChunkFile.IsTempFileName(name))
                {
                    temps += DiskChunkFile.TryDelete(file.FullName) ? 1 : 0;
                    continue;
                }

                if (!DiskChunkFile.TryParseFileName(dir.Name, name, out var key))
                {
                    continue; // not a name this tier writes: not ours to judge or delete
                }

                read++;
                DiskChunkIndex.Entry? entry = null;
                try
                {
                    if (DiskChunkFile.TryReadHeaderBlock(file.FullName, key, block, out var record, out var lineage))
                    {
                        entry = new DiskChunkIndex.Entry(record, lineage);
                    }
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                }

                if (entry is null)
                {
                    metrics?.CorruptChunk(tierName);
                    discarded++;
                    DiskChunkFile.TryDelete(file.FullName);
                    continue;
                }

                found.Add((entry, file.LastWriteTimeUtc));
            }

            progress?.Report(new DiskTierScanProgress(i + 1, shards.Count, read));
        }

        // Oldest first, so the most recently written or hit file ends at the head.
        found.Sort((a, b) => a.Time.CompareTo(b.Time));
        foreach (var (entry, _) in found)
        {
            index.Load(entry);
        }

        evicted = index.EvictOverCapacity();
        return new DiskTierScan(found.Count - evicted.Count, discarded, temps, evicted.Count, Stopwatch.GetElapsedTime(start));
    }
}
