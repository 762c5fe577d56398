namespace LMCacheSharp.Cli.Tests;

/// <summary>
/// The LMCacheSharp.Cli package that .ci/run packs, installed as users install it (<c>dotnet tool install --tool-path</c>)
/// from a package source that holds only the local package folder: what a clean machine with the .NET 10 runtime gets.
/// </summary>
public sealed class ToolPackageTests(ToolPackageTests.InstalledTool tool) : IClassFixture<ToolPackageTests.InstalledTool>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(120);

    [Fact]
    public async Task The_installed_tool_prints_its_version_and_the_help_of_serve()
    {
        var lmcache = await tool.RequireAsync();
        var (code, stdout, stderr) = await LmcacheProcess.RunFileAsync(Bound, lmcache, new Dictionary<string, string>(), "--version");
        Assert.True(code == 0, stderr);
        Assert.StartsWith(tool.Version, stdout.Trim(), StringComparison.Ordinal);

        (code, stdout, stderr) = await LmcacheProcess.RunFileAsync(Bound, lmcache, new Dictionary<string, string>(), "serve", "--help");
        Assert.True(code == 0, stderr);
        Assert.Contains("lmcache serve [options]", stdout, StringComparison.Ordinal);
        Assert.Contains("--llama-native", stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_installed_tool_generates_a_model_and_serves_a_completion_with_its_own_llama_cpp()
    {
        var lmcache = await tool.RequireAsync();
        var model = Path.Combine(tool.Folder, "tiny.gguf");
        var (code, stdout, stderr) = await LmcacheProcess.RunFileAsync(Bound, lmcache, new Dictionary<string, string>(),
            "gen-model", "--preset", "tiny", "-o", model);
        Assert.True(code == 0, stdout + stderr);

        await using var serve = await RunningLmcache.StartAsync(Bound, lmcache, "serve", "--port", "0", "--model", model, "--threads", "1");
        RunningLmcache.AssertCompletion(await serve.CompleteAsync("Hello from the installed tool", 4), 4);
        // llama.cpp came from the tool's own runtimes/ folder (the CPU build of LLamaSharp.Backend.Cpu in the package).
        var llama = Assert.Single(serve.MappedLibraries("libllama.so"));
        Assert.StartsWith(Path.Combine(tool.Folder, ".store"), llama, StringComparison.Ordinal);
        Assert.Contains("/runtimes/linux-x64/native/", llama, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_installed_tool_carries_the_bench_harness_and_its_chart_library()
    {
        var (package, _) = Artifacts.RequirePackage("LMCacheSharp.Cli");
        using (var zip = System.IO.Compression.ZipFile.OpenRead(package))
        {
            // lmcache bench lives in LMCacheSharp.Bench (not a package of its own): the tool must carry it, ScottPlot and Skia's native library.
            foreach (var file in new[] { "LMCacheSharp.Bench.dll", "ScottPlot.dll", "SkiaSharp.dll", "runtimes/linux-x64/native/libSkiaSharp.so" })
            {
                Assert.Contains(zip.Entries, e => e.FullName.EndsWith("/any/" + file, StringComparison.Ordinal));
            }
        }

        var lmcache = await tool.RequireAsync();
        foreach (var bench in new[] { "engine", "ttft", "serving", "fleet" })
        {
            var (help, helpOut, helpErr) = await LmcacheProcess.RunFileAsync(Bound, lmcache, new Dictionary<string, string>(), "bench", bench, "--help");
            Assert.True(help == 0, helpErr);
            Assert.Contains($"lmcache bench {bench} [options]", helpOut, StringComparison.Ordinal);
        }

        var (code, stdout, stderr) = await LmcacheProcess.RunFileAsync(Bound, lmcache, new Dictionary<string, string>(),
            "bench", "engine", "--prompt-tokens", "1024", "--kv-bytes-per-token", "256", "--rounds", "1");
        Assert.True(code == 0, stdout + stderr);
        Assert.Contains("retrieve (memory tier)", stdout, StringComparison.Ordinal);
    }

    /// <summary>The tool installed once for the class into a temporary --tool-path.</summary>
    public sealed class InstalledTool : IAsyncLifetime
    {
        private Task<string>? _install;

        /// <summary>The --tool-path folder.</summary>
        public string Folder { get; } = Directory.CreateTempSubdirectory("lmcache-tool-").FullName;

        /// <summary>The package version installed.</summary>
        public string Version { get; private set; } = "";

        /// <summary>The installed lmcache command; skips the test when there is no package to install.</summary>
        public Task<string> RequireAsync()
        {
            var (_, version) = Artifacts.RequirePackage("LMCacheSharp.Cli");
            Version = version;
            return _install ??= InstallAsync(version);
        }

        private async Task<string> InstallAsync(string version)
        {
            // Only the local folder as a source: the package must carry everything the tool needs.
            var config = Path.Combine(Folder, "nuget.config");
            await File.WriteAllTextAsync(config, $"""
                <?xml version="1.0" encoding="utf-8"?>
                <configuration>
                  <packageSources>
                    <clear />
                    <add key="local" value="{Artifacts.Packages}" />
                  </packageSources>
                </configuration>
                """);
            var (code, stdout, stderr) = await LmcacheProcess.RunFileAsync(TimeSpan.FromMinutes(5), "dotnet", new Dictionary<string, string>(),
                "tool", "install", "--tool-path", Folder, "--configfile", config, "LMCacheSharp.Cli", "--version", version);
            Assert.True(code == 0, $"dotnet tool install failed ({code}):\n{stdout}\n{stderr}");
            var lmcache = Path.Combine(Folder, OperatingSystem.IsWindows() ? "lmcache.exe" : "lmcache");
            Assert.True(File.Exists(lmcache), $"no {lmcache} after install:\n{stdout}");
            return lmcache;
        }

        public ValueTask InitializeAsync() => ValueTask.CompletedTask;

        public ValueTask DisposeAsync()
        {
            Directory.Delete(Folder, recursive: true);
            return ValueTask.CompletedTask;
        }
    }
}
