using System.Buffers.Binary;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;

namespace LMCacheSharp.LlamaCpp;

/// <summary>
/// The model fingerprint of a GGUF file for the cache's key namespace: SHA-256 of the whole file (header, architecture
/// metadata, tokenizer and every weight), as <c>gguf-sha256:&lt;hex&gt;</c>. Two files share KV only when they are
/// byte-identical, so another model, a fine-tune or another quantization never hits the same chunks. The hash is
/// computed once per file and remembered in a small record in a cache directory, keyed by the file's full path, length and
/// last-write time, so later start-ups read no weights at all. (Hashing only the header and sampled tensor data would be
/// faster the first time, but would silently share KV between models that differ only in tensors that were not sampled,
/// for example a fine-tune of a few layers; KV correctness comes first, and the one-time cost is about a second per 2 GB.)
/// </summary>
public static class GgufFingerprint
{
    private const uint GgufMagic = 0x46554747;

    /// <summary>
    /// Default directory of remembered fingerprints: <c>$LMCACHE_FINGERPRINT_DIR</c>, else
    /// <c>$XDG_CACHE_HOME/lmcachesharp/fingerprints</c>, else <c>~/.cache/lmcachesharp/fingerprints</c>.
    /// </summary>
    public static string DefaultCacheDirectory
    {
        get
        {
            var explicitDir = Environment.GetEnvironmentVariable("LMCACHE_FINGERPRINT_DIR");
            if (!string.IsNullOrEmpty(explicitDir))
            {
                return explicitDir;
            }

            var xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
            var root = !string.IsNullOrEmpty(xdg) ? xdg : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
            return Path.Combine(root, "lmcachesharp", "fingerprints");
        }
    }

    /// <summary>
    /// The fingerprint of <paramref name="path"/>, from the remembered record when the file's length and last-write time
    /// still match, else computed (and remembered). <paramref name="cacheDirectory"/> null uses
    /// <see cref="DefaultCacheDirectory"/>; an unwritable cache directory only costs the memory, never the call.
    /// </summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">The file is not a GGUF file.</exception>
    public static string Get(string path, string? cacheDirectory = null, Action<long, long>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var file = new FileInfo(Path.GetFullPath(path));
        if (!file.Exists)
        {
            throw new FileNotFoundException($"model file not found: {file.FullName}", file.FullName);
        }

        cacheDirectory ??= DefaultCacheDirectory;
        var stamp = string.Create(CultureInfo.InvariantCulture, $"{file.FullName}\n{file.Length}\n{file.LastWriteTimeUtc.Ticks}");
        var recordPath = Path.Combine(cacheDirectory,
            Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(file.FullName)))[..32] + ".fingerprint");
        try
        {
            if (File.Exists(recordPath))
            {
                var lines = File.ReadAllText(recordPath).Split('\n', 4);
                if (lines.Length == 4 && string.Join('\n', lines[..3]) == stamp && lines[3].StartsWith("gguf-sha256:", StringComparison.Ordinal))
                {
                    return lines[3].Trim();
                }
            }
        }
        catch (IOException)
        {
            // An unreadable record is recomputed.
        }
        catch (UnauthorizedAccessException)
        {
        }

        var fingerprint = Compute(file.FullName, progress, cancellationToken);
        try
        {
            Directory.CreateDirectory(cacheDirectory);
            var temp = recordPath + "." + Environment.ProcessId.ToString(CultureInfo.InvariantCulture);
            File.WriteAllText(temp, stamp + "\n" + fingerprint);
            File.Move(temp, recordPath, overwrite: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }

        return fingerprint;
    }

    /// <summary>Hashes the whole file now (no remembered record).</summary>
    /// <exception cref="InvalidDataException">The file is not a GGUF file.</exception>
    public static string Compute(string path, Action<long, long>? progress = null, CancellationToken cancellationToken = default)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, FileOptions.SequentialScan);
        Span<byte> head = stackalloc byte[8];
        if (stream.ReadAtLeast(head, 8, throwOnEndOfStream: false) < 8 || BinaryPrimitives.ReadUInt32LittleEndian(head) != GgufMagic)
        {
            throw new InvalidDataException($"{path} is not a GGUF file (bad magic)");
        }

        stream.Position = 0;
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[4 << 20];
        long done = 0, total = stream.Length, lastReport = 0;
        int read;
        while ((read = stream.Read(buffer, 0, buffer.Length)) > 0)
        {
            cancellationToken.ThrowIfCancellationRequested();
            sha.AppendData(buffer, 0, read);
            done += read;
            if (progress is not null && done - lastReport >= 256L << 20)
            {
                lastReport = done;
                progress(done, total);
            }
        }

        return "gguf-sha256:" + Convert.ToHexStringLower(sha.GetHashAndReset());
    }
}
