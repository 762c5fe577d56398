using System.Diagnostics;

namespace LMCacheSharp.Cli.Tests;

/// <summary>Runs the built <c>lmcache</c> command (src/LMCacheSharp.Cli's output of the same configuration) as a process.</summary>
internal static class LmcacheProcess
{
    private static readonly Lazy<string> Dll = new(() =>
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        // tests/LMCacheSharp.Cli.Tests/bin/<Configuration>/<tfm>/
        var tfm = dir.Name;
        var configuration = dir.Parent!.Name;
        var root = dir;
        while (root is not null && !File.Exists(Path.Combine(root.FullName, "LMCacheSharp.slnx")))
        {
            root = root.Parent;
        }

        var path = Path.Combine(root!.FullName, "src", "LMCacheSharp.Cli", "bin", configuration, tfm, "lmcache.dll");
        return File.Exists(path) ? path : throw new FileNotFoundException("build src/LMCacheSharp.Cli first", path);
    });

    public static Task<(int ExitCode, string Stdout, string Stderr)> RunAsync(TimeSpan timeout, params string[] args) =>
        RunAsync(timeout, new Dictionary<string, string>(), args);

    /// <summary>Runs lmcache with <paramref name="environment"/> added to (or replacing entries of) this process's environment.</summary>
    public static async Task<(int ExitCode, string Stdout, string Stderr)> RunAsync(TimeSpan timeout, IReadOnlyDictionary<string, string> environment,
        params string[] args)
    {
        var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        info.ArgumentList.Add(Dll.Value);
        foreach (var a in args)
        {
            info.ArgumentList.Add(a);
        }

        info.Environment["LMCACHE_HOME"] = Path.Combine(Path.GetTempPath(), "lmcache-cli-tests-" + Environment.ProcessId);
        foreach (var (name, value) in environment)
        {
            info.Environment[name] = value;
        }

        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"lmcache {string.Join(' ', args)} did not exit within {timeout}");
        }

        return (process.ExitCode, await stdout, await stderr);
    }
}
