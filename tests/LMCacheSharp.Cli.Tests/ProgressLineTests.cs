namespace LMCacheSharp.Cli.Tests;

/// <summary>The progress line of long work (gen-model here): redrawn on a terminal's stderr, absent when redirected.</summary>
public sealed class ProgressLineTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(120);

    [Fact]
    public async Task Nothing_is_drawn_when_the_output_is_redirected()
    {
        var path = Path.Combine(LmcacheProcess.Home, "progress-redirected.gguf");
        var (code, stdout, stderr) = await LmcacheProcess.RunAsync(Bound, "gen-model", "--preset", "tiny", "-o", path);
        Assert.Equal(0, code);
        Assert.Empty(stderr);
        Assert.DoesNotContain('\r', stdout);
        Assert.Contains("wrote " + path, stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_terminal_gets_one_line_redrawn_to_100_percent()
    {
        // script(1) (util-linux, essential on Debian) runs the command on a pseudo-terminal, as a user's shell would.
        Assert.SkipUnless(File.Exists("/usr/bin/script"), "needs /usr/bin/script for a pseudo-terminal");
        var path = Path.Combine(LmcacheProcess.Home, "progress-terminal.gguf");
        var command = $"dotnet '{LmcacheProcess.DllPath}' gen-model --preset tiny -o '{path}'";
        var (code, stdout, stderr) = await LmcacheProcess.RunFileAsync(Bound, "/usr/bin/script", new Dictionary<string, string>(),
            "-qec", command, "/dev/null");
        Assert.True(code == 0, stdout + stderr);
        Assert.Contains("\rwriting [", stdout, StringComparison.Ordinal);
        Assert.Contains("] 100% ", stdout, StringComparison.Ordinal);
        Assert.Contains("wrote " + path, stdout, StringComparison.Ordinal);
    }
}
