using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using LMCacheSharp.Core.Codecs;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Storage;
using Microsoft.Win32.SafeHandles;

namespace LMCacheSharp.Benchmarks;

/// <summary>
/// The disk tier against plain file I/O of the same bytes, 16 chunks of 8 MiB per operation, raw codec:
/// <list type="bullet">
/// <item>read: <see cref="DiskTier.TryGet"/> (header block read and check, payload read into a pooled chunk, XxHash3
/// verification, file time refresh) against open + one full read of an 8 MiB file into an aligned native buffer + close;</item>
/// <item>write: <see cref="DiskTier.Put"/> (temp file, header block + payload, rename, index) against create + one 8 MiB
/// write + close of a file with the same name each time.</item>
/// </list>
/// DirectIo=false reads from the page cache (the files were just written: a memory-speed ceiling); DirectIo=true uses
/// O_DIRECT on both sides, so the device is measured. /tmp must be on a filesystem that takes O_DIRECT (the tier falls back
/// otherwise, and the benchmark then says so by failing).
/// Run: dotnet run -c Release --project bench/LMCacheSharp.Benchmarks -- --filter '*DiskTierBenchmarks*'
/// </summary>
[MemoryDiagnoser]
[MedianColumn]
[SimpleJob(launchCount: 1, warmupCount: 2, iterationCount: 15)]
public unsafe partial class DiskTierBenchmarks
{
    private const int ChunkBytes = 8 << 20;
    private const int Chunks = 16;
    private static readonly KvFormat Format = new(1, 16384, 16384, KvDataType.F16, KvLayout.LayerKV); // 32 KiB/token: 256 tokens = 8 MiB

    private string _dir = "";
    private KvBufferPool _pool = null!;
    private DiskTier _tier = null!;
    private KvChunk[] _chunks = [];
    private string[] _plainFiles = [];
    private byte* _buffer;

    [Params(false, true)]
    public bool DirectIo { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _dir = Directory.CreateTempSubdirectory("lmcache-bench-disk-").FullName;
        _pool = new KvBufferPool(512L << 20);
        _tier = new DiskTier(new DiskTierOptions
        {
            Directory = Path.Join(_dir, "tier"),
            CapacityBytes = 4L << 30,
            Codec = RawCodec.Instance,
            DirectIo = DirectIo,
        }, _pool);
        if (_tier.DirectIo != DirectIo)
        {
            throw new InvalidOperationException($"O_DIRECT refused in {_dir}: run on a filesystem that takes it");
        }

        _buffer = (byte*)NativeMemory.AlignedAlloc(ChunkBytes, 4096);
        var random = new Random(1);
        _chunks = new KvChunk[Chunks];
        _plainFiles = new string[Chunks];
        Directory.CreateDirectory(Path.Join(_dir, "plain"));
        for (var i = 0; i < Chunks; i++)
        {
            var chunk = _pool.Rent(ChunkBytes);
            random.NextBytes(chunk.Span);
            var key = new byte[32];
            key[0] = (byte)i;
            key[31] = 0xD1;
            chunk.Key = new ChunkHash(key);
            chunk.TokenCount = 256;
            chunk.Format = Format;
            chunk.SealChecksum();
            _chunks[i] = chunk;
            _plainFiles[i] = Path.Join(_dir, "plain", $"{i}.bin");
        }

        TierWrite();
        PlainWrite();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _tier.DisposeAsync().AsTask().GetAwaiter().GetResult();
        foreach (var chunk in _chunks)
        {
            chunk.Release();
        }

        _pool.Dispose();
        NativeMemory.AlignedFree(_buffer);
        Directory.Delete(_dir, recursive: true);
    }

    [Benchmark(Baseline = true, OperationsPerInvoke = Chunks, Description = "read 8 MiB: plain file")]
    [BenchmarkCategory("read")]
    public long PlainRead()
    {
        long total = 0;
        foreach (var file in _plainFiles)
        {
            using var handle = OpenRead(file);
            total += RandomAccess.Read(handle, new Span<byte>(_buffer, ChunkBytes), 0);
        }

        return total == (long)Chunks * ChunkBytes ? total : throw new InvalidOperationException("short read");
    }

    [Benchmark(OperationsPerInvoke = Chunks, Description = "read 8 MiB: disk tier (verified)")]
    [BenchmarkCategory("read")]
    public long TierRead()
    {
        long total = 0;
        foreach (var source in _chunks)
        {
            var chunk = _tier.TryGet(source.Key) ?? throw new InvalidOperationException("miss");
            total += chunk.Length;
            chunk.Release();
        }

        return total;
    }

    [Benchmark(OperationsPerInvoke = Chunks, Description = "write 8 MiB: plain file")]
    [BenchmarkCategory("write")]
    public void PlainWrite()
    {
        for (var i = 0; i < Chunks; i++)
        {
            File.Delete(_plainFiles[i]);
            using var handle = CreateNew(_plainFiles[i]);
            RandomAccess.Write(handle, new ReadOnlySpan<byte>((void*)_chunks[i].Pointer, ChunkBytes), 0);
        }
    }

    [Benchmark(OperationsPerInvoke = Chunks, Description = "write 8 MiB: disk tier (temp + rename)")]
    [BenchmarkCategory("write")]
    public void TierWrite()
    {
        foreach (var chunk in _chunks)
        {
            _tier.Remove(chunk.Key);
            if (!_tier.Put(chunk))
            {
                throw new InvalidOperationException("put refused");
            }
        }
    }

    private SafeFileHandle OpenRead(string path) => DirectIo ? OpenDirect(path, 0) : File.OpenHandle(path);

    private SafeFileHandle CreateNew(string path) =>
        DirectIo ? OpenDirect(path, 1 | 0x40 | 0x80) : File.OpenHandle(path, FileMode.CreateNew, FileAccess.Write);

    private static SafeFileHandle OpenDirect(string path, int flags)
    {
        var oDirect = RuntimeInformation.ProcessArchitecture == Architecture.Arm64 ? 0x10000 : 0x4000;
        var fd = Open(path, flags | oDirect | 0x80000, 0b110_100_100);
        return fd >= 0 ? new SafeFileHandle(fd, ownsHandle: true) : throw new IOException($"open({path}) failed: errno {Marshal.GetLastPInvokeError()}");
    }

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags, int mode);
}
