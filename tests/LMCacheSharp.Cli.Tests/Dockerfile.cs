using System.Text.Json;
using System.Text.RegularExpressions;

namespace LMCacheSharp.Cli.Tests;

/// <summary>
/// What a docker/*.Dockerfile runs, read from the file (COPY source, ENV, ENTRYPOINT), so that the publish-output tests
/// start the very command the image starts, with only the paths, the address and the port swapped for the test's.
/// </summary>
internal sealed partial record Dockerfile(string CopySource, IReadOnlyDictionary<string, string> Environment, IReadOnlyList<string> Entrypoint)
{
    /// <summary>The folder the image's files go to (COPY artifacts/publish/ /app/).</summary>
    public const string AppFolder = "/app/";

    public static Dockerfile Read(string name)
    {
        var text = File.ReadAllText(Path.Combine(LmcacheProcess.RepositoryRoot, "docker", name));
        var copy = CopyLine().Match(text);
        Assert.True(copy.Success, $"{name}: no COPY <publish folder>/ {AppFolder}");
        var environment = new Dictionary<string, string>();
        foreach (Match env in EnvLine().Matches(text))
        {
            foreach (Match pair in EnvPair().Matches(env.Groups[1].Value))
            {
                environment[pair.Groups[1].Value] = pair.Groups[2].Value;
            }
        }

        var entry = EntrypointLine().Match(text);
        Assert.True(entry.Success, $"{name}: no ENTRYPOINT in exec (JSON) form");
        return new Dockerfile(copy.Groups[1].Value, environment, JsonSerializer.Deserialize<string[]>(entry.Groups[1].Value)!);
    }

    /// <summary>
    /// The entrypoint for the publish folder here: the image's /app/ becomes <paramref name="publish"/>, and each
    /// "--name value" pair in <paramref name="replace"/> takes the test's value (the address and port).
    /// </summary>
    public (string FileName, string[] Args) CommandFor(string publish, params (string Option, string Value)[] replace)
    {
        var args = Entrypoint.Select(a => a.StartsWith(AppFolder, StringComparison.Ordinal) ? Path.Combine(publish, a[AppFolder.Length..]) : a).ToArray();
        foreach (var (option, value) in replace)
        {
            var i = Array.IndexOf(args, option);
            Assert.True(i >= 0 && i + 1 < args.Length, $"the entrypoint has no {option} VALUE");
            args[i + 1] = value;
        }

        return (args[0], args[1..]);
    }

    [GeneratedRegex(@"^COPY\s+(\S+)\s+/app/\s*$", RegexOptions.Multiline)]
    private static partial Regex CopyLine();

    [GeneratedRegex(@"^ENV\s+(.+)$", RegexOptions.Multiline)]
    private static partial Regex EnvLine();

    [GeneratedRegex(@"(\w+)=(\S+)")]
    private static partial Regex EnvPair();

    [GeneratedRegex(@"^ENTRYPOINT\s+(\[.*\])\s*$", RegexOptions.Multiline)]
    private static partial Regex EntrypointLine();
}
