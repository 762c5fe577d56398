namespace LMCacheSharp.Core.Storage;

/// <summary>What a <see cref="DiskTier"/> found in its directory when it opened.</summary>
/// <param name="Recovered">Chunk files whose header checked out, now in the index.</param>
/// <param name="Discarded">Chunk files deleted because their header, name or length was wrong (each counted as a corrupt chunk).</param>
/// <param name="TempFilesRemoved">Partial files left by a writer that did not finish (a killed process), deleted.</param>
/// <param name="EvictedOverCapacity">Recovered chunks evicted because the directory held more than the capacity.</param>
/// <param name="Elapsed">Time the scan took.</param>
public readonly record struct DiskTierScan(int Recovered, int Discarded, int TempFilesRemoved, int EvictedOverCapacity, TimeSpan Elapsed);

/// <summary>
/// How far the start-up scan of a <see cref="DiskTier"/>'s directory has come (<see cref="DiskTierOptions.ScanProgress"/>).
/// The scan goes through the directory's (at most 256) subdirectories one at a time, reading each chunk file's header block.
/// </summary>
/// <param name="DirectoriesScanned">Subdirectories done.</param>
/// <param name="Directories">Subdirectories to scan.</param>
/// <param name="ChunkFilesRead">Chunk files whose header block was read so far (recovered or discarded).</param>
public readonly record struct DiskTierScanProgress(int DirectoriesScanned, int Directories, int ChunkFilesRead)
{
    /// <summary>The part done, 0..1 (1 when there is nothing to scan).</summary>
    public double Fraction => Directories == 0 ? 1 : (double)DirectoriesScanned / Directories;
}
