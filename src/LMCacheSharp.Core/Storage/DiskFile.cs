using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace LMCacheSharp.Core.Storage;

/// <summary>
/// File operations of the disk tier: opening with O_DIRECT (Linux x64/arm64, through open(2); .NET has no option for it)
/// or buffered, full positional reads and writes, fsync of a file and of a directory.
/// </summary>
internal static partial class DiskFile
{
    private const int ORdOnly = 0;
    private const int OWrOnly = 1;
    private const int OCreat = 0x40;
    private const int OExcl = 0x80;
    private const int OCloExec = 0x80000;
    private const int EInval = 22;
    private const int ENoEnt = 2;

    /// <summary>Whether this platform can open files with O_DIRECT at all.</summary>
    public static bool DirectIoAvailable =>
        OperatingSystem.IsLinux() && RuntimeInformation.ProcessArchitecture is Architecture.X64 or Architecture.Arm64;

    private static int ODirect => RuntimeInformation.ProcessArchitecture == Architecture.Arm64 ? 0x10000 : 0x4000;

    private static int ODirectory => RuntimeInformation.ProcessArchitecture == Architecture.Arm64 ? 0x4000 : 0x10000;

    /// <summary>Opens a file for reading. Throws <see cref="FileNotFoundException"/> when it is absent.</summary>
    public static SafeFileHandle OpenRead(string path, bool direct) =>
        direct ? OpenDirect(path, ORdOnly, 0) : File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);

    /// <summary>Creates a new file for writing (fails if it exists).</summary>
    public static SafeFileHandle CreateNew(string path, bool direct) =>
        direct ? OpenDirect(path, OWrOnly | OCreat | OExcl, 0b110_100_100) : File.OpenHandle(path, FileMode.CreateNew, FileAccess.Write, FileShare.None);

    /// <summary>Whether O_DIRECT works in <paramref name="directory"/>: creates, writes and deletes a probe file.</summary>
    public static unsafe bool ProbeDirectIo(string directory)
    {
        if (!DirectIoAvailable)
        {
            return false;
        }

        var probe = Path.Join(directory, $".direct-probe.{Environment.ProcessId}.tmp");
        var block = NativeMemory.AlignedAlloc(4096, 4096);
        try
        {
            new Span<byte>(block, 4096).Clear();
            using (var handle = CreateNew(probe, direct: true))
            {
                WriteFully(handle, new ReadOnlySpan<byte>(block, 4096), 0);
            }

            using (var handle = OpenRead(probe, direct: true))
            {
                return ReadFully(handle, new Span<byte>(block, 4096), 0) == 4096;
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
        finally
        {
            NativeMemory.AlignedFree(block);
            try
            {
                File.Delete(probe);
            }
            catch (IOException)
            {
            }
        }
    }

    /// <summary>
    /// Reads until <paramref name="buffer"/> is full or the file ends; returns the bytes read. A read that ends off a
    /// 512-byte boundary is the end of the file (with O_DIRECT the next read would be misaligned).
    /// </summary>
    public static int ReadFully(SafeFileHandle handle, Span<byte> buffer, long offset)
    {
        var total = 0;
        while (total < buffer.Length)
        {
            var n = RandomAccess.Read(handle, buffer[total..], offset + total);
            if (n <= 0)
            {
                break;
            }

            total += n;
            if ((n & 511) != 0)
            {
                break;
            }
        }

        return total;
    }

    /// <summary>
    /// One vectored read (preadv) at <paramref name="offset"/> into <paramref name="first"/> then <paramref name="second"/>,
    /// repeated until both are full or the file ends; returns the bytes read. The spans must stay pinned (native memory).
    /// </summary>
    public static unsafe long ReadFully(SafeFileHandle handle, Span<byte> first, Span<byte> second, long offset)
    {
        fixed (byte* a = first)
        fixed (byte* b = second)
        {
            using var firstMemory = new NativeMemoryManager(a, first.Length);
            using var secondMemory = new NativeMemoryManager(b, second.Length);
            var buffers = new[] { firstMemory.Memory, secondMemory.Memory };
            long total = RandomAccess.Read(handle, buffers, offset);
            if (total < first.Length + (long)second.Length && total > 0 && (total & 511) == 0)
            {
                // A short vectored read (a signal, or the end of the file): finish with plain reads.
                total += total < first.Length
                    ? ReadFully(handle, first[(int)total..], offset + total)
                    : 0;
                if (total >= first.Length)
                {
                    total += ReadFully(handle, second[(int)(total - first.Length)..], offset + total);
                }
            }

            return total;
        }
    }

    /// <summary>Writes all of <paramref name="buffer"/> at <paramref name="offset"/>.</summary>
    public static void WriteFully(SafeFileHandle handle, ReadOnlySpan<byte> buffer, long offset) => RandomAccess.Write(handle, buffer, offset);

    /// <summary>fsync of an open file.</summary>
    public static void Sync(SafeFileHandle handle)
    {
        if (OperatingSystem.IsLinux() || OperatingSystem.IsMacOS())
        {
            if (FSync(handle) != 0)
            {
                throw new IOException($"fsync failed (errno {Marshal.GetLastPInvokeError()})");
            }
        }
        else
        {
            using var stream = new FileStream(handle, FileAccess.Write, 0);
            stream.Flush(flushToDisk: true);
        }
    }

    /// <summary>fsync of a directory, so a rename in it is durable (Linux; a no-op elsewhere). Best effort.</summary>
    public static void SyncDirectory(string directory)
    {
        if (!DirectIoAvailable)
        {
            return;
        }

        var fd = Open(directory, ORdOnly | ODirectory | OCloExec, 0);
        if (fd < 0)
        {
            return;
        }

        using var handle = new SafeFileHandle(fd, ownsHandle: true);
        _ = FSync(handle);
    }

    private static SafeFileHandle OpenDirect(string path, int flags, int mode)
    {
        var fd = Open(path, flags | ODirect | OCloExec, mode);
        if (fd >= 0)
        {
            return new SafeFileHandle(fd, ownsHandle: true);
        }

        var errno = Marshal.GetLastPInvokeError();
        throw errno switch
        {
            ENoEnt => new FileNotFoundException($"'{path}' not found", path),
            EInval => new IOException($"O_DIRECT refused for '{path}' (EINVAL)"),
            _ => new IOException($"open('{path}') failed (errno {errno})"),
        };
    }

    /// <summary>A <see cref="Memory{T}"/> over pinned native memory, for the vectored read.</summary>
    private sealed unsafe class NativeMemoryManager(byte* pointer, int length) : System.Buffers.MemoryManager<byte>
    {
        public override Span<byte> GetSpan() => new(pointer, length);

        public override System.Buffers.MemoryHandle Pin(int elementIndex = 0) => new(pointer + elementIndex);

        public override void Unpin()
        {
        }

        protected override void Dispose(bool disposing)
        {
        }
    }

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags, int mode);

    [LibraryImport("libc", EntryPoint = "fsync", SetLastError = true)]
    private static partial int FSync(SafeFileHandle fd);
}
