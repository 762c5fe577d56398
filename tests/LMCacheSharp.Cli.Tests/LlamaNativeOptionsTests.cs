using System.Runtime.Intrinsics.X86;

namespace LMCacheSharp.Cli.Tests;

/// <summary><c>--llama-native PATH</c> and <c>--gpu-layers N</c> of serve and the benchmarks that load a model in process.</summary>
public sealed class LlamaNativeOptionsTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(120);

    // The CPU build from LLamaSharp.Backend.Cpu in the built CLI's output folder.
    private static string CpuBuildFolder
    {
        get
        {
            var native = Path.Combine(Path.GetDirectoryName(LmcacheProcess.DllPath)!, "runtimes", "linux-x64", "native");
            return Path.Combine(native, Avx2.IsSupported ? "avx2" : "noavx");
        }
    }

    [Fact]
    public async Task Missing_foreign_and_unloadable_libraries_are_one_message_and_exit_code_2()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "the library names here are Linux's");
        var dir = Directory.CreateTempSubdirectory("lmcache-native-");
        try
        {
            var text = Path.Combine(dir.FullName, "libllama.so");
            await File.WriteAllTextAsync(text, "not a shared library");
            var ggml = Path.Combine(CpuBuildFolder, "libggml-base.so"); // a real shared library, but ggml's, not llama.cpp's
            var missing = Path.Combine(dir.FullName, "nowhere", "libllama.so");
            var (code, stdout, stderr) = await LmcacheProcess.RunAsync(Bound, "serve", "--port", "0", "--llama-native", missing, "--gpu-layers", "-1");
            Assert.Equal(2, code);
            Assert.Contains("lmcache serve: invalid configuration:", stderr, StringComparison.Ordinal);
            Assert.Contains($"--llama-native: file not found: {missing}", stderr, StringComparison.Ordinal);
            Assert.Contains("--gpu-layers: must be 0..10000, got -1", stderr, StringComparison.Ordinal);
            Assert.DoesNotContain("Generating", stdout, StringComparison.Ordinal); // refused before any model work

            (code, _, stderr) = await LmcacheProcess.RunAsync(Bound, "serve", "--port", "0", "--llama-native", ggml);
            Assert.Equal(2, code);
            Assert.Contains($"--llama-native: {ggml} is not a llama.cpp library (it exports no llama_backend_init", stderr, StringComparison.Ordinal);

            (code, _, stderr) = await LmcacheProcess.RunAsync(Bound, "serve", "--port", "0", "--llama-native", text);
            Assert.Equal(2, code);
            Assert.Contains($"--llama-native: {text} cannot be loaded as a shared library:", stderr, StringComparison.Ordinal);

            (code, _, stderr) = await LmcacheProcess.RunAsync(Bound, "serve", "--port", "0", "--llama-native", dir.FullName);
            Assert.Equal(2, code);
            Assert.Contains("is a directory; name the library file in it", stderr, StringComparison.Ordinal);
            Assert.DoesNotContain("   at ", stderr, StringComparison.Ordinal);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Theory]
    [InlineData("ttft")]
    [InlineData("serving")]
    public async Task The_benchmarks_refuse_a_bad_library_with_exit_code_2(string bench)
    {
        var missing = Path.Combine(Path.GetTempPath(), "no-such-dir-" + Guid.NewGuid().ToString("N"), "libllama.so");
        string[] args = bench == "ttft"
            ? ["bench", "ttft", "--llama-native", missing, "--gpu-layers", "20000"]
            : ["bench", "serving", "--workload", "doc-qa", "--llama-native", missing, "--gpu-layers", "20000"];
        var (code, _, stderr) = await LmcacheProcess.RunAsync(Bound, args);
        Assert.Equal(2, code);
        Assert.Contains($"--llama-native: file not found: {missing}", stderr, StringComparison.Ordinal);
        Assert.Contains("--gpu-layers: must be 0..10000, got 20000", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Serve_loads_the_library_named_and_answers_with_it()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "checks the library mapped into the process through /proc");
        // A copy of the CPU build in a folder of its own, as a user would unpack a CUDA or Vulkan build: proves that the
        // library comes from the path given and not from the runtimes/ folder next to lmcache.dll.
        var dir = Directory.CreateTempSubdirectory("lmcache-native-");
        try
        {
            foreach (var file in Directory.EnumerateFiles(CpuBuildFolder, "*.so"))
            {
                File.Copy(file, Path.Combine(dir.FullName, Path.GetFileName(file)));
            }

            var library = Path.Combine(dir.FullName, "libllama.so");
            var model = await Artifacts.TinyModelAsync();
            await using var serve = await RunningLmcache.StartAsync(Bound, "dotnet", LmcacheProcess.DllPath, "serve", "--port", "0",
                "--model", model, "--threads", "1", "--llama-native", library, "--gpu-layers", "99"); // a CPU build ignores the layers
            RunningLmcache.AssertCompletion(await serve.CompleteAsync("Hello through --llama-native", 3), 3);
            Assert.Equal([library], serve.MappedLibraries("libllama.so"));
            Assert.Equal([Path.Combine(dir.FullName, "libggml-cpu.so")], serve.MappedLibraries("libggml-cpu.so"));
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }
}
