using System.Buffers.Binary;
using System.IO.Hashing;
using LMCacheSharp.Core.Codecs;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Metrics;
using LMCacheSharp.Core.Storage;

namespace LMCacheSharp.Core.Tests;

/// <summary>
/// Seeded mutation fuzzing of <see cref="DiskTier"/>'s start-up scan and the reads behind it: a directory of valid chunk
/// files written by real tiers (raw, lz4 and zstd payloads) is copied, its files are mutated (bytes of the header and the
/// payload, header fields with the header checksum recomputed, encoded payloads with their checksum recomputed so the
/// decoders run on them, truncation, extension, files copied under another key's name, deleted, junk files), and a tier
/// is opened over it. The scan must not throw; every chunk the tier still returns is bit-identical to what was stored; a
/// chunk whose file was damaged is a miss; the tier still stores and returns a chunk afterwards; the pool ends empty.
/// The files under FuzzCorpus/DiskTier (chunk files in hex, every input that ever failed) are replayed on every run.
/// Bounded for CI (a few seconds); LMCACHE_FUZZ_ITERATIONS scales the count and LMCACHE_FUZZ_SEED picks another seed.
/// </summary>
public sealed class DiskTierScanFuzzTests : IDisposable
{
    private static readonly KvFormat Format = new(2, 16, 16, KvDataType.F16, KvLayout.LayerKV); // 64 B/token
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("lmcache-disk-fuzz-");
    private readonly KvBufferPool _pool = new();
    private readonly CacheMetrics _metrics = new();

    private static int Seed => int.TryParse(Environment.GetEnvironmentVariable("LMCACHE_FUZZ_SEED"), out var s) ? s : 20261213;

    private static int Iterations(int baseline) =>
        double.TryParse(Environment.GetEnvironmentVariable("LMCACHE_FUZZ_ITERATIONS"), System.Globalization.CultureInfo.InvariantCulture, out var scale)
            ? Math.Max(1, (int)(baseline * scale))
            : baseline;

    public void Dispose()
    {
        var leaked = _pool.RentedCount;
        _pool.Dispose();
        _metrics.Dispose();
        _dir.Delete(recursive: true);
        Assert.True(leaked == 0, $"{leaked} pooled chunk buffers were not returned");
    }

    /// <summary>What a reopened tier may do with a key.</summary>
    private enum Expect
    {
        /// <summary>Its file is untouched where it matters: returned, bit-identical.</summary>
        Hit,
        /// <summary>Its file was damaged: a miss.</summary>
        Miss,
        /// <summary>Its header fields were rewritten with a valid header checksum: a miss, or the stored payload under the header's format.</summary>
        MissOrSamePayload,
    }

    private sealed record Stored(ChunkHash Key, string RelativePath, byte[] File, byte[] Payload, int Tokens, KvCodecId Codec);

    [Fact]
    public async Task Reopening_a_mutated_directory_never_throws_and_returns_only_bit_identical_chunks()
    {
        var random = new Random(Seed + 4);
        var stored = await WriteTemplateAsync();
        var executions = Iterations(600);
        var root = Path.Join(_dir.FullName, "fuzz");
        var dump = Environment.GetEnvironmentVariable("LMCACHE_FUZZ_DUMP");
        for (var i = 0; i < executions; i++)
        {
            if (Directory.Exists(root))
            {
                Directory.Delete(root, recursive: true);
            }

            var files = stored.ToDictionary(s => s.RelativePath, s => s.File);
            var log = new List<string>();
            for (var m = random.Next(1, 4); m > 0; m--)
            {
                Mutate(random, stored, files, log);
            }

            var expect = stored.ToDictionary(s => s.Key, s => Allowed(s, files.GetValueOrDefault(s.RelativePath)));

            foreach (var (path, bytes) in files)
            {
                var full = Path.Join(root, path);
                Directory.CreateDirectory(Path.GetDirectoryName(full)!);
                File.WriteAllBytes(full, bytes);
            }

            if (dump is not null && i < 40)
            {
                Directory.CreateDirectory(dump);
                foreach (var s in stored.Where(s => files.TryGetValue(s.RelativePath, out var f) && !f.AsSpan().SequenceEqual(s.File)))
                {
                    File.WriteAllText(Path.Join(dump, $"{i}-{s.Key.ToString()[..8]}.hex"), Convert.ToHexString(files[s.RelativePath]));
                }

                File.WriteAllLines(Path.Join(dump, $"{i}.log"), log);
            }

            try
            {
                await CheckAsync(root, random.Next(8) == 0, stored, expect);
            }
            catch (Exception e)
            {
                var mutated = string.Join("; ", stored.Where(s => files.TryGetValue(s.RelativePath, out var f) && !f.AsSpan().SequenceEqual(s.File))
                    .Select(s => $"{s.RelativePath} {Convert.ToHexString(files[s.RelativePath])}"));
                Assert.Fail($"execution {i} (seed {Seed + 4}): {string.Join(", ", log)}: {e.GetType().Name}: {e.Message}; mutated files: {mutated}");
            }
        }

        TestContext.Current.TestOutputHelper?.WriteLine($"disk tier scan: {executions} executions, 0 finds");
    }

    [Fact]
    public async Task Every_corpus_file_is_a_miss_or_a_verified_chunk_and_never_an_exception()
    {
        var files = Directory.GetFiles(CorpusDirectory, "*.hex").Order(StringComparer.Ordinal).ToArray();
        Assert.NotEmpty(files);
        var n = 0;
        foreach (var file in files)
        {
            var bytes = Convert.FromHexString(File.ReadAllText(file).Trim());
            var root = Path.Join(_dir.FullName, "corpus", (n++).ToString(System.Globalization.CultureInfo.InvariantCulture));

            // Under the key its header names (when it has one) and under another key.
            var named = bytes.Length >= 96 ? new ChunkHash(bytes.AsSpan(64, 32)) : KeyOf(1);
            var keys = new[] { named, KeyOf(2) }.Distinct().ToArray();
            foreach (var key in keys)
            {
                var hex = key.ToString();
                Directory.CreateDirectory(Path.Join(root, hex[..2]));
                File.WriteAllBytes(Path.Join(root, hex[..2], hex + DiskTier.ChunkFileExtension), bytes);
            }

            try
            {
                await using var tier = Open(root, directIo: false);
                foreach (var key in keys)
                {
                    using var chunk = tier.TryGet(key);
                    if (chunk is not null)
                    {
                        Assert.Equal(key, chunk.Key);
                        Assert.Equal(chunk.Format.PayloadLength(chunk.TokenCount), chunk.Length);
                        Assert.True(chunk.VerifyChecksum());
                    }
                }
            }
            catch (Exception e) when (e is not Xunit.Sdk.XunitException)
            {
                Assert.Fail($"{Path.GetFileName(file)}: {e.GetType().Name}: {e.Message}");
            }
        }
    }

    /// <summary>Opens a tier over the mutated directory and checks every key against what its file allows.</summary>
    private async Task CheckAsync(string root, bool directIo, List<Stored> stored, Dictionary<ChunkHash, Expect> expect)
    {
        await using var tier = Open(root, directIo);
        Assert.Equal(tier.StartupScan.Recovered, tier.Count);
        foreach (var s in stored)
        {
            using var chunk = tier.TryGet(s.Key);
            var allowed = expect[s.Key];
            if (chunk is null)
            {
                Assert.True(allowed != Expect.Hit, $"{s.RelativePath}: an intact file was a miss");
                continue;
            }

            Assert.True(allowed != Expect.Miss, $"{s.RelativePath}: a damaged file was returned");
            Assert.Equal(s.Key, chunk.Key);
            Assert.True(chunk.Span.SequenceEqual(s.Payload), $"{s.RelativePath}: returned KV differs from what was stored");
            Assert.Equal(chunk.Format.PayloadLength(chunk.TokenCount), chunk.Length);
            if (allowed == Expect.Hit)
            {
                Assert.Equal(Format, chunk.Format);
                Assert.Equal(s.Tokens, chunk.TokenCount);
            }
        }

        // Keys the template never held (a file copied under a new name) are misses.
        Assert.Null(tier.TryGet(KeyOf(999)));

        // The tier is still usable: a chunk that missed can be stored again and comes back identical.
        var again = stored.FirstOrDefault(s => !tier.Contains(s.Key));
        if (again is not null)
        {
            using var chunk = _pool.Rent(again.Payload.Length);
            again.Payload.CopyTo(chunk.Span);
            chunk.Key = again.Key;
            chunk.TokenCount = again.Tokens;
            chunk.Format = Format;
            chunk.SealChecksum();
            Assert.True(tier.Put(chunk));
            using var hit = tier.TryGet(again.Key);
            Assert.NotNull(hit);
            Assert.True(hit.Span.SequenceEqual(again.Payload));
        }
    }

    private static readonly int[] HeaderFields = [8, 9, 10, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96];
    private static readonly uint[] Interesting = [0, 1, 2, 3, 4, 7, 8, 15, 16, 17, 63, 64, 65, 255, 256, 4095, 4096, 4097, 65536, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF];

    /// <summary>
    /// What the final bytes of a key's file allow: intact where it is read (the header, the payload, the length; the
    /// padding between is never read) is a hit; a header whose checksum holds over changed fields (rewritten by a mutation
    /// that recomputed it) may still be read, but only as the stored payload; anything else is a miss.
    /// </summary>
    private static Expect Allowed(Stored s, byte[]? file)
    {
        if (file is null)
        {
            return Expect.Miss;
        }

        if (file.Length == s.File.Length && file.AsSpan(0, ChunkEnvelope.HeaderSize).SequenceEqual(s.File.AsSpan(0, ChunkEnvelope.HeaderSize)) &&
            file.AsSpan(DiskTier.HeaderBlockSize).SequenceEqual(s.File.AsSpan(DiskTier.HeaderBlockSize)))
        {
            return Expect.Hit;
        }

        return file.Length >= ChunkEnvelope.HeaderSize && BinaryPrimitives.ReadUInt64LittleEndian(file.AsSpan(120)) == XxHash3.HashToUInt64(file.AsSpan(0, 120))
            ? Expect.MissOrSamePayload
            : Expect.Miss;
    }

    /// <summary>One mutation of the directory, described in <paramref name="log"/>.</summary>
    private static void Mutate(Random random, List<Stored> stored, Dictionary<string, byte[]> files, List<string> log)
    {
        var s = stored[random.Next(stored.Count)];
        if (!files.TryGetValue(s.RelativePath, out var original))
        {
            return; // deleted by an earlier mutation
        }

        var data = original.ToArray();
        var kind = random.Next(11);
        if (data.Length <= DiskTier.HeaderBlockSize && kind is not (5 or 6 or 7 or 8 or 9))
        {
            // Cut short by an earlier mutation: no header fields or payload left to aim at, so a byte of what is there.
            if (data.Length > 0)
            {
                data[random.Next(data.Length)] ^= (byte)(1 << random.Next(8));
            }

            files[s.RelativePath] = data;
            log.Add($"{s.RelativePath}: short file, bit flip");
            return;
        }

        switch (kind)
        {
            case 0: // flip a bit in the header or the payload
                {
                    var at = random.Next(2) == 0 ? random.Next(ChunkEnvelope.HeaderSize) : DiskTier.HeaderBlockSize + random.Next(data.Length - DiskTier.HeaderBlockSize);
                    data[at] ^= (byte)(1 << random.Next(8));
                    break;
                }

            case 1: // an interesting u32 over a header field, checksum left as it was
                BinaryPrimitives.WriteUInt32LittleEndian(data.AsSpan(HeaderFields[random.Next(HeaderFields.Length)]), Interesting[random.Next(Interesting.Length)]);
                break;
            case 2: // a header field rewritten and the header checksum recomputed: reaches the checks behind it
                {
                    var field = HeaderFields[random.Next(HeaderFields.Length - 1)];
                    if (field is 8 or 9 or 10)
                    {
                        data[field] = (byte)random.Next(random.Next(2) == 0 ? 6 : 256);
                    }
                    else
                    {
                        BinaryPrimitives.WriteUInt32LittleEndian(data.AsSpan(field), Interesting[random.Next(Interesting.Length)]);
                    }

                    SealHeader(data);
                    break;
                }

            case 3: // tokens and both lengths rewritten consistently (checksums kept), file cut or grown to match
                {
                    var tokens = (int)Interesting[random.Next(8)];
                    var raw = (int)Format.PayloadLength(tokens);
                    BinaryPrimitives.WriteUInt32LittleEndian(data.AsSpan(16), (uint)tokens);
                    BinaryPrimitives.WriteUInt64LittleEndian(data.AsSpan(32), (ulong)raw);
                    var encoded = s.Codec == KvCodecId.Raw ? raw : BinaryPrimitives.ReadInt32LittleEndian(data.AsSpan(40));
                    BinaryPrimitives.WriteUInt64LittleEndian(data.AsSpan(40), (ulong)encoded);
                    SealHeader(data);
                    Array.Resize(ref data, DiskTier.HeaderBlockSize + encoded);
                    break;
                }

            case 4 when s.Codec != KvCodecId.Raw: // encoded payload damaged, its checksum recomputed: the decoder runs on it
                {
                    var payload = data.AsSpan(DiskTier.HeaderBlockSize);
                    for (var n = random.Next(1, 4); n > 0; n--)
                    {
                        payload[random.Next(payload.Length)] = (byte)random.Next(256);
                    }

                    if (random.Next(3) == 0)
                    {
                        var cut = random.Next(payload.Length);
                        Array.Resize(ref data, DiskTier.HeaderBlockSize + cut);
                        BinaryPrimitives.WriteUInt64LittleEndian(data.AsSpan(40), (ulong)cut);
                    }

                    BinaryPrimitives.WriteUInt64LittleEndian(data.AsSpan(56), XxHash3.HashToUInt64(data.AsSpan(DiskTier.HeaderBlockSize)));
                    SealHeader(data);
                    break;
                }

            case 5: // truncated
                Array.Resize(ref data, random.Next(3) switch
                {
                    0 => random.Next(ChunkEnvelope.HeaderSize + 1),
                    1 => DiskTier.HeaderBlockSize,
                    _ => random.Next(data.Length),
                });
                break;
            case 6: // grown
                {
                    var grown = new byte[data.Length + random.Next(1, 5000)];
                    data.CopyTo(grown, 0);
                    if (random.Next(2) == 0)
                    {
                        random.NextBytes(grown.AsSpan(data.Length));
                    }

                    data = grown;
                    break;
                }

            case 7: // another chunk's file under this key's name
                {
                    var other = stored[random.Next(stored.Count)];
                    if (other.Key == s.Key || !files.TryGetValue(other.RelativePath, out var otherBytes))
                    {
                        return;
                    }

                    data = otherBytes.ToArray();
                    break;
                }

            case 8: // deleted
                files.Remove(s.RelativePath);
                log.Add($"{s.RelativePath}: deleted");
                return;
            case 9: // junk beside it: a temp file, a file under a new key, a name the tier does not write, a misplaced chunk
                {
                    var fresh = KeyOf(999).ToString();
                    var junk = random.Next(4) switch
                    {
                        0 => s.RelativePath + ".123.1.tmp",
                        1 => Path.Join(fresh[..2], fresh + DiskTier.ChunkFileExtension),
                        2 => s.RelativePath.ToUpperInvariant(),
                        _ => Path.Join(s.RelativePath[..2] == "00" ? "01" : "00", Path.GetFileName(s.RelativePath)),
                    };
                    files[junk] = random.Next(2) == 0 ? data : data[..random.Next(data.Length)];
                    log.Add($"junk {junk}");
                    return;
                }

            default: // the padding after the header: not read, so the chunk stays a hit
                data[ChunkEnvelope.HeaderSize + random.Next(DiskTier.HeaderBlockSize - ChunkEnvelope.HeaderSize)] = (byte)random.Next(256);
                log.Add($"{s.RelativePath}: padding");
                files[s.RelativePath] = data;
                return;
        }

        files[s.RelativePath] = data;
        log.Add($"{s.RelativePath}: mutation {kind}");
    }

    private static void SealHeader(byte[] data) =>
        BinaryPrimitives.WriteUInt64LittleEndian(data.AsSpan(120), XxHash3.HashToUInt64(data.AsSpan(0, 120)));

    /// <summary>Valid chunk files written by real tiers with the raw, lz4 and zstd codecs (1, 7 and 16 tokens).</summary>
    private async Task<List<Stored>> WriteTemplateAsync()
    {
        var root = Path.Join(_dir.FullName, "template");
        var stored = new List<Stored>();
        var n = 0;
        foreach (var codec in new[] { "naive", "lz4", "zstd" })
        {
            await using var tier = new DiskTier(new DiskTierOptions { Directory = root, CapacityBytes = 64 << 20, Codec = KvCodecs.Find(codec)!, DirectIoProbe = _ => false }, _pool);
            foreach (var tokens in new[] { 1, 7, 16 })
            {
                using var chunk = _pool.Rent((int)Format.PayloadLength(tokens));
                CodecTestData.KvLike(KvDataType.F16, chunk.Length / 2, seed: n).CopyTo(chunk.Span);
                chunk.Key = KeyOf(n++);
                chunk.TokenCount = tokens;
                chunk.Format = Format;
                chunk.SealChecksum();
                Assert.True(tier.Put(chunk));
                var path = tier.PathOf(chunk.Key);
                stored.Add(new Stored(chunk.Key, Path.GetRelativePath(root, path), File.ReadAllBytes(path), chunk.Span.ToArray(), tokens,
                    KvCodecs.Find(codec)!.Id));
            }
        }

        return stored;
    }

    private DiskTier Open(string root, bool directIo) =>
        new(new DiskTierOptions { Directory = root, CapacityBytes = 64 << 20, DirectIo = directIo, IoThreads = 1, DirectIoProbe = directIo ? DiskFile.ProbeDirectIo : _ => false },
            _pool, _metrics);

    private static ChunkHash KeyOf(int i)
    {
        var bytes = new byte[ChunkHash.Size];
        BinaryPrimitives.WriteInt32LittleEndian(bytes, i);
        return new ChunkHash([.. XxHash128.Hash(bytes), .. XxHash128.Hash(bytes.AsSpan(0, 8))]);
    }

    /// <summary>FuzzCorpus/DiskTier next to this file in the source tree (found from the test binaries upwards).</summary>
    private static string CorpusDirectory
    {
        get
        {
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            {
                var corpus = Path.Join(dir.FullName, "tests", "LMCacheSharp.Core.Tests", "FuzzCorpus", "DiskTier");
                if (Directory.Exists(corpus))
                {
                    return corpus;
                }
            }

            throw new DirectoryNotFoundException("tests/LMCacheSharp.Core.Tests/FuzzCorpus/DiskTier not found above " + AppContext.BaseDirectory);
        }
    }
}
