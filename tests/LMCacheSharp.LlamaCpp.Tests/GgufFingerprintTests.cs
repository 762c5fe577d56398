using LMCacheSharp.LlamaCpp.Gguf;

namespace LMCacheSharp.LlamaCpp.Tests;

public sealed class GgufFingerprintTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("lmcache-fp-").FullName;

    [Fact]
    public void EqualFilesShareAFingerprintAndOneChangedWeightDoesNot()
    {
        var spec = new LlamaModelSpec(1, 64, 2, 2, 64, 300, 256, GgmlTensorType.F16, 3);
        var a = Path.Combine(_dir, "a.gguf");
        var b = Path.Combine(_dir, "b.gguf");
        GgufModelWriter.Write(spec, a);
        GgufModelWriter.Write(spec, b);
        Assert.Equal(GgufFingerprint.Compute(a), GgufFingerprint.Compute(b));
        Assert.StartsWith("gguf-sha256:", GgufFingerprint.Compute(a), StringComparison.Ordinal);

        var bytes = File.ReadAllBytes(b);
        bytes[^40] ^= 1; // a weight near the end of the last tensor
        File.WriteAllBytes(b, bytes);
        Assert.NotEqual(GgufFingerprint.Compute(a), GgufFingerprint.Compute(b));
    }

    [Fact]
    public void TheFingerprintIsRememberedUntilTheFileChanges()
    {
        var path = Path.Combine(_dir, "m.gguf");
        GgufModelWriter.Write(new LlamaModelSpec(1, 64, 2, 2, 64, 300, 256), path);
        var cacheDir = Path.Combine(_dir, "records");
        var first = GgufFingerprint.Get(path, cacheDir);
        Assert.Single(Directory.GetFiles(cacheDir));

        // Change a weight but keep length and write time: the remembered value is used (no weights read).
        var stamp = File.GetLastWriteTimeUtc(path);
        var bytes = File.ReadAllBytes(path);
        bytes[^40] ^= 1;
        File.WriteAllBytes(path, bytes);
        File.SetLastWriteTimeUtc(path, stamp);
        Assert.Equal(first, GgufFingerprint.Get(path, cacheDir));

        // A new write time invalidates the record.
        File.SetLastWriteTimeUtc(path, stamp.AddSeconds(5));
        var second = GgufFingerprint.Get(path, cacheDir);
        Assert.NotEqual(first, second);
        Assert.Equal(GgufFingerprint.Compute(path), second);
    }

    [Fact]
    public void ANonGgufFileOrAMissingFileIsAClearError()
    {
        var path = Path.Combine(_dir, "not.gguf");
        File.WriteAllText(path, "definitely not a model");
        Assert.Contains("not a GGUF", Assert.Throws<InvalidDataException>(() => GgufFingerprint.Get(path, _dir)).Message, StringComparison.Ordinal);
        Assert.Throws<FileNotFoundException>(() => GgufFingerprint.Get(Path.Combine(_dir, "missing.gguf"), _dir));
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);
}
