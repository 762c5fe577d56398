using System.Diagnostics;

namespace LMCacheSharp.Cli.Tests;

/// <summary>Runs the built <c>lmcache</c> command (src/LMCacheSharp.Cli's output of the same configuration) as a process.</summary>
internal static class LmcacheProcess
{
    /// <summary>The folder of LMCacheSharp.slnx above this test's output folder.</summary>
    public static string RepositoryRoot { get; } = FindRepositoryRoot();

    private static readonly Lazy<string> Dll = new(() =>
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        // tests/LMCacheSharp.Cli.Tests/bin/<Configuration>/<tfm>/
        var tfm = dir.Name;
        var configuration = dir.Parent!.Name;
        var path = Path.Combine(RepositoryRoot, "src", "LMCacheSharp.Cli", "bin", configuration, tfm, "lmcache.dll");
        return File.Exists(path) ? path : throw new FileNotFoundException("build src/LMCacheSharp.Cli first", path);
    });

    /// <summary>The built lmcache.dll (run it with <c>dotnet</c>).</summary>
    public static string DllPath => Dll.Value;

    /// <summary>The LMCACHE_HOME every lmcache started by these tests gets (so none writes into the user's folders).</summary>
    public static string Home { get; } = Path.Combine(Path.GetTempPath(), "lmcache-cli-tests-" + Environment.ProcessId);

    private static string FindRepositoryRoot()
    {
        var root = new DirectoryInfo(AppContext.BaseDirectory);
        while (root is not null && !File.Exists(Path.Combine(root.FullName, "LMCacheSharp.slnx")))
        {
            root = root.Parent;
        }

        return root?.FullName ?? throw new DirectoryNotFoundException("LMCacheSharp.slnx not found above " + AppContext.BaseDirectory);
    }

    public static Task<(int ExitCode, string Stdout, string Stderr)> RunAsync(TimeSpan timeout, params string[] args) =>
        RunAsync(timeout, new Dictionary<string, string>(), args);

    /// <summary>Runs lmcache with <paramref name="environment"/> added to (or replacing entries of) this process's environment.</summary>
    public static Task<(int ExitCode, string Stdout, string Stderr)> RunAsync(TimeSpan timeout, IReadOnlyDictionary<string, string> environment,
        params string[] args) =>
        RunFileAsync(timeout, "dotnet", environment, [Dll.Value, .. args]);

    /// <summary>Runs <paramref name="fileName"/> (dotnet with a dll, or an installed lmcache) until it exits.</summary>
    public static async Task<(int ExitCode, string Stdout, string Stderr)> RunFileAsync(TimeSpan timeout, string fileName,
        IReadOnlyDictionary<string, string> environment, params string[] args)
    {
        var info = new ProcessStartInfo(fileName) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args)
        {
            info.ArgumentList.Add(a);
        }

        info.Environment["LMCACHE_HOME"] = Home;
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
            throw new TimeoutException($"{fileName} {string.Join(' ', args)} did not exit within {timeout}");
        }

        return (process.ExitCode, await stdout, await stderr);
    }
}
