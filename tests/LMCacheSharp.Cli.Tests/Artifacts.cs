namespace LMCacheSharp.Cli.Tests;

/// <summary>
/// What .ci/run builds before the tests: the packages (<c>dotnet pack</c> into artifacts/packages) and the CLI's publish
/// output (<c>dotnet publish</c> into artifacts/publish, what the Dockerfiles copy). Tests of them skip when they are absent
/// (a plain <c>dotnet test</c>); under CI=true a skip fails the run, so CI always checks them.
/// </summary>
internal static class Artifacts
{
    /// <summary>How to make them, for the skip message.</summary>
    public const string HowToMake = "run .ci/run, or: dotnet pack LMCacheSharp.slnx -c Release -o artifacts/packages && " +
        "dotnet publish src/LMCacheSharp.Cli -c Release -o artifacts/publish";

    /// <summary>artifacts/packages (or $LMCACHE_TEST_PACKAGES).</summary>
    public static string Packages { get; } = Environment.GetEnvironmentVariable("LMCACHE_TEST_PACKAGES") is { Length: > 0 } p
        ? p : Path.Combine(LmcacheProcess.RepositoryRoot, "artifacts", "packages");

    /// <summary>artifacts/publish (or $LMCACHE_TEST_PUBLISH).</summary>
    public static string Publish { get; } = Environment.GetEnvironmentVariable("LMCACHE_TEST_PUBLISH") is { Length: > 0 } p
        ? p : Path.Combine(LmcacheProcess.RepositoryRoot, "artifacts", "publish");

    /// <summary>The newest package of <paramref name="id"/>: its file and version; skips the test when there is none.</summary>
    public static (string Path, string Version) RequirePackage(string id, string extension = ".nupkg")
    {
        var file = Directory.Exists(Packages)
            ? new DirectoryInfo(Packages).EnumerateFiles(id + ".*" + extension)
                .Where(f => char.IsAsciiDigit(f.Name[id.Length + 1])) // LMCacheSharp.Cli.0.1.0, not LMCacheSharp.Cli.Tests...
                .OrderByDescending(f => f.LastWriteTimeUtc).FirstOrDefault()
            : null;
        if (file is null)
        {
            Assert.Skip($"no {id} package in {Packages}: {HowToMake}");
        }

        return (file.FullName, file.Name[(id.Length + 1)..^extension.Length]);
    }

    /// <summary>artifacts/publish/lmcache.dll; skips the test when it is absent.</summary>
    public static string RequirePublishedDll()
    {
        var dll = Path.Combine(Publish, "lmcache.dll");
        if (!File.Exists(dll))
        {
            Assert.Skip($"no {dll}: {HowToMake}");
        }

        return dll;
    }

    /// <summary>A tiny generated model (0.3 MiB, random weights), made once per test run with the built lmcache.</summary>
    public static Task<string> TinyModelAsync() => TinyModel.Value;

    private static readonly Lazy<Task<string>> TinyModel = new(async () =>
    {
        var path = Path.Combine(LmcacheProcess.Home, "models", "tiny.gguf");
        var (code, stdout, stderr) = await LmcacheProcess.RunAsync(TimeSpan.FromSeconds(120), "gen-model", "--preset", "tiny", "-o", path);
        Assert.True(code == 0, stdout + stderr);
        return path;
    });
}
