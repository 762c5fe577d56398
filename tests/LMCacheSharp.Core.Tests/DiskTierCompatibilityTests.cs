using LMCacheSharp.Core.Codecs;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Metrics;
using LMCacheSharp.Core.Storage;

namespace LMCacheSharp.Core.Tests;

/// <summary>
/// Cache directories written by earlier builds keep loading: the chunk files under Fixtures/DiskTierV1 (hex) were written
/// by <see cref="DiskTier"/> before it was split into file format, index and recovery, and are never regenerated. A
/// change of the file format gets a new fixture folder next to this one, and this test keeps passing.
/// </summary>
public sealed class DiskTierCompatibilityTests : IAsyncLifetime
{
    private static readonly KvFormat Format = new(2, 16, 16, KvDataType.F16, KvLayout.LayerKV); // 64 B/token
    private static readonly ChunkHash Seed = ChunkHash.Parse("5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed");
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("lmcache-disk-compat-");
    private readonly KvBufferPool _pool = new();
    private readonly CacheMetrics _metrics = new();

    public ValueTask InitializeAsync() => ValueTask.CompletedTask;

    public ValueTask DisposeAsync()
    {
        var leaked = _pool.RentedCount;
        _pool.Dispose();
        _metrics.Dispose();
        _dir.Delete(recursive: true);
        Assert.True(leaked == 0, $"{leaked} pooled chunk buffers were not returned");
        return ValueTask.CompletedTask;
    }

    /// <summary>The chunks in the fixture: a prompt's whole first chunk and its 5-token tail (raw, with lineages), and an lz4 chunk without one.</summary>
    private static IEnumerable<(ChunkHash Key, int[] Tokens, ChunkLineage? Lineage, string Codec, int PayloadSeed)> FixtureChunks()
    {
        var prompt = Enumerable.Range(1000, 21).ToArray();
        var keys = new ChunkHash[2];
        PrefixHasher.ComputeKeys(Seed, prompt, 16, includePartial: true, keys);
        yield return (keys[0], prompt[..16], new ChunkLineage(Seed, prompt[..16]), "naive", 1);
        yield return (keys[1], prompt[16..], new ChunkLineage(keys[0], prompt[16..]), "naive", 2);
        var other = Enumerable.Range(7, 16).ToArray();
        var otherKey = new ChunkHash[1];
        PrefixHasher.ComputeKeys(Seed, other, 16, includePartial: false, otherKey);
        yield return (otherKey[0], other, null, "lz4", 3);
    }

    [Fact]
    public async Task A_directory_written_by_the_format_1_tier_loads_and_is_written_again_byte_for_byte()
    {
        var root = Path.Join(_dir.FullName, "v1");
        var fixtures = new Dictionary<ChunkHash, byte[]>();
        foreach (var file in Directory.GetFiles(FixtureDirectory, "*.kv.hex"))
        {
            var name = Path.GetFileName(file)[..^".hex".Length];
            var key = ChunkHash.Parse(name[..^DiskTier.ChunkFileExtension.Length]);
            var bytes = Convert.FromHexString(File.ReadAllText(file).Trim());
            Directory.CreateDirectory(Path.Join(root, name[..2]));
            File.WriteAllBytes(Path.Join(root, name[..2], name), bytes);
            fixtures[key] = bytes;
        }

        var chunks = FixtureChunks().ToList();
        Assert.Equal(chunks.Select(c => c.Key.ToString()).Order(StringComparer.Ordinal), fixtures.Keys.Select(k => k.ToString()).Order(StringComparer.Ordinal));

        await using (var tier = Open(root, "naive"))
        {
            Assert.Equal(new DiskTierScan(3, 0, 0, 0, tier.StartupScan.Elapsed), tier.StartupScan);
            Assert.Equal(
                chunks.Where(c => c.Lineage is not null).Select(c => $"{c.Key} {c.Lineage!.Parent} {string.Join(",", c.Lineage.Tokens)}").Order(StringComparer.Ordinal),
                tier.GetLineages().Select(l => $"{l.Key} {l.Lineage.Parent} {string.Join(",", l.Lineage.Tokens)}").Order(StringComparer.Ordinal));
            foreach (var (key, tokens, _, _, payloadSeed) in chunks)
            {
                using var hit = tier.TryGet(key);
                Assert.NotNull(hit);
                Assert.Equal(tokens.Length, hit.TokenCount);
                Assert.Equal(Format, hit.Format);
                Assert.True(hit.Span.SequenceEqual(Payload(tokens.Length, payloadSeed)));

                // The cache server's path: the envelope read back is the file's header and payload.
                using var envelope = tier.GetEnvelope(key);
                Assert.NotNull(envelope);
                Assert.True(envelope.Span[..ChunkEnvelope.HeaderSize].SequenceEqual(fixtures[key].AsSpan(0, ChunkEnvelope.HeaderSize)));
                Assert.True(envelope.Span[ChunkEnvelope.HeaderSize..].SequenceEqual(fixtures[key].AsSpan(DiskTier.HeaderBlockSize)));
            }

            Assert.Equal(0, _metrics.Snapshot().CorruptChunks);
        }

        // Today's tier writes the same chunks into the same bytes.
        foreach (var (key, tokens, lineage, codec, payloadSeed) in chunks)
        {
            var fresh = Path.Join(_dir.FullName, "fresh-" + codec);
            await using var tier = Open(fresh, codec);
            using var chunk = _pool.Rent((int)Format.PayloadLength(tokens.Length));
            Payload(tokens.Length, payloadSeed).CopyTo(chunk.Span);
            chunk.Key = key;
            chunk.TokenCount = tokens.Length;
            chunk.Format = Format;
            chunk.Lineage = lineage;
            chunk.SealChecksum();
            Assert.True(tier.Put(chunk));
            Assert.Equal(Convert.ToHexString(fixtures[key]), Convert.ToHexString(File.ReadAllBytes(tier.PathOf(key))));
        }

        // And the server's envelope store writes them into the same bytes too (it keeps no lineage).
        await using (var tier = Open(Path.Join(_dir.FullName, "envelopes"), "naive"))
        {
            var (key, _, _, _, _) = chunks.Single(c => c.Lineage is null);
            var bytes = fixtures[key];
            Assert.True(tier.PutEnvelope(key, [.. bytes.AsSpan(0, ChunkEnvelope.HeaderSize), .. bytes.AsSpan(DiskTier.HeaderBlockSize)]));
            Assert.Equal(Convert.ToHexString(bytes), Convert.ToHexString(File.ReadAllBytes(tier.PathOf(key))));
        }
    }

    /// <summary>Deterministic KV-sized bytes, with runs so that lz4 has something to compress.</summary>
    private static byte[] Payload(int tokens, int seed)
    {
        var bytes = new byte[Format.PayloadLength(tokens)];
        for (var i = 0; i < bytes.Length; i++)
        {
            bytes[i] = (byte)((i / 3 * 31) + (seed * 17));
        }

        return bytes;
    }

    private DiskTier Open(string root, string codec) =>
        new(new DiskTierOptions { Directory = root, CapacityBytes = 64 << 20, Codec = KvCodecs.Find(codec)!, IoThreads = 1, DirectIoProbe = _ => false },
            _pool, _metrics);

    /// <summary>Fixtures/DiskTierV1 next to this file in the source tree (found from the test binaries upwards).</summary>
    private static string FixtureDirectory
    {
        get
        {
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            {
                var fixture = Path.Join(dir.FullName, "tests", "LMCacheSharp.Core.Tests", "Fixtures", "DiskTierV1");
                if (Directory.Exists(fixture))
                {
                    return fixture;
                }
            }

            throw new DirectoryNotFoundException("tests/LMCacheSharp.Core.Tests/Fixtures/DiskTierV1 not found above " + AppContext.BaseDirectory);
        }
    }
}
