using System.Text.RegularExpressions;

namespace LMCacheSharp.Cli.Tests;

/// <summary>
/// The command line of every lmcache command and subcommand as a contract: the exact names of its subcommands and flags
/// (scripts and docs depend on them), <c>--help</c> exiting 0, and bad arguments exiting non-zero with a clear message.
/// </summary>
public sealed partial class CommandLineTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(60);

    /// <summary>Each command (its words after lmcache), its subcommands and its flags, exactly.</summary>
    public static TheoryData<string, string[], string[]> Commands => new()
    {
        { "", ["bench", "serve", "server", "router", "controller", "gen-model"], ["--help", "--version"] },
        { "bench", ["engine", "ttft", "serving", "fleet", "pd"], ["--help"] },
        { "bench engine", [], ["--prompt-tokens", "--kv-bytes-per-token", "--rounds", "--config", "--help"] },
        {
            "bench ttft", [],
            ["--model", "--tokens", "--rounds", "--cold-rounds", "--chunk-size", "--layout", "--flash-attention", "--threads", "--out", "--llama-native",
                "--gpu-layers", "--help"]
        },
        {
            "bench serving", [],
            ["--url", "--model", "--configs", "--workload", "--data", "--documents", "--questions", "--requests", "--max-prompt-chars", "--max-tokens",
                "--ctx-size", "--output", "--doc-words", "--rounds", "--conversations", "--turns", "--clients", "--repeats", "--max-concurrent", "--threads",
                "--chunk-size", "--client-doc-words", "--llama-native", "--gpu-layers", "--help"]
        },
        {
            "bench fleet", [],
            ["--model", "--instances", "--threads", "--ctx-size", "--documents", "--users", "--questions", "--doc-words", "--max-tokens", "--concurrency",
                "--policies", "--shared-cache", "--controller", "--output", "--help"]
        },
        {
            "bench pd", [],
            ["--model", "--threads", "--ctx-size", "--streams", "--stream-tokens", "--long-prompts", "--long-words", "--long-max-tokens", "--interval",
                "--repeats", "--modes", "--output", "--help"]
        },
        {
            "serve", [],
            ["--model", "--model-name", "--config", "--lmcache", "--host", "--port", "--ctx-size", "--max-concurrent", "--max-queue", "--batch-size",
                "--threads", "--flash-attention", "--default-max-tokens", "--no-cache", "--log-level", "--stall-timeout", "--kv-events", "--kv-events-replay",
                "--kv-events-topic", "--controller", "--controller-token", "--role", "--kv-unified", "--llama-native", "--gpu-layers", "--help"]
        },
        {
            "server", [],
            ["--config", "--host", "--port", "--capacity", "--auth-token", "--metrics-port", "--max-connections", "--frame-timeout", "--max-value-size",
                "--max-inflight-put", "--min-data-rate", "--max-auth-failures", "--max-children", "--max-child-tokens", "--max-pinned", "--salt-quota",
                "--default-salt-quota", "--disk", "--disk-capacity",
                "--disk-write-queue", "--disk-write-queue-records", "--disk-shutdown-flush-timeout", "--disk-fsync", "--help"]
        },
        {
            "router", [],
            ["--host", "--port", "--instances", "--controller", "--controller-token", "--controller-interval", "--policy", "--health-interval",
                "--health-timeout", "--lookup-timeout", "--kv-tie-tokens", "--kv-load-weight", "--max-body-size", "--request-timeout", "--log-level", "--pd", "--pd-min-tokens", "--help"]
        },
        {
            "controller", [],
            ["--config", "--host", "--port", "--auth-token", "--heartbeat-interval", "--heartbeat-timeout", "--max-body-size", "--help"]
        },
        { "gen-model", [], ["--preset", "--layers", "--embd", "--heads", "--kv-heads", "--ffn", "--vocab", "--ctx", "--type", "--seed", "--output", "--help"] },
    };

    private static string[] Words(string command) => command.Split(' ', StringSplitOptions.RemoveEmptyEntries);

    [Theory]
    [MemberData(nameof(Commands))]
    public async Task Help_exits_0_and_lists_exactly_the_subcommands_and_flags(string command, string[] subcommands, string[] flags)
    {
        var (code, stdout, stderr) = await LmcacheProcess.RunAsync(Bound, [.. Words(command), "--help"]);
        Assert.True(code == 0, stderr);
        Assert.Contains(("lmcache " + command).Trim() + " [", stdout, StringComparison.Ordinal); // the usage line
        Assert.Empty(stderr);
        // The first column of the Options and Commands sections: "  -o, --output <output>  ..." and "  serving  ...".
        var listed = OptionLine().Matches(stdout).Select(m => m.Groups[1].Value).ToList();
        Assert.Equal(flags.Order(StringComparer.Ordinal), listed.Order(StringComparer.Ordinal));
        var section = stdout.IndexOf("Commands:", StringComparison.Ordinal);
        var commands = section < 0 ? [] : CommandLine().Matches(stdout[section..]).Select(m => m.Groups[1].Value).ToList();
        Assert.Equal(subcommands, commands);
    }

    /// <summary>Every command with a value that does not parse or is out of range: the exit code and the message.</summary>
    public static TheoryData<string[], int, string> BadValues => new()
    {
        { ["bench", "engine", "--rounds", "x"], 1, "Cannot parse argument 'x' for option '--rounds'" },
        { ["bench", "engine", "--rounds", "0", "--prompt-tokens", "16"], 2, "--prompt-tokens: must be chunk_size (256)..16777216, got 16" },
        { ["bench", "engine", "--config", "/nonexistent/lmcache.yaml"], 2, "config file '/nonexistent/lmcache.yaml': cannot be read" },
        { ["bench", "ttft", "--layout", "odd", "--tokens", "1,x"], 2, "--layout: must be stateblob, portable or both, got 'odd'" },
        { ["bench", "serving", "--workload", "nonsense"], 2, "--workload: takes a comma list of leval, sharegpt, doc-qa, chat, clients, all, peer; got 'nonsense'" },
        { ["bench", "fleet", "--instances", "0"], 2, "--instances: must be 1..16, got 0" },
        { ["serve", "--port", "0", "--flash-attention", "maybe"], 2, "--flash-attention: must be on, off or auto, got 'maybe'" },
        { ["serve", "--port", "0", "--role", "mixer"], 2, "--role: must be both, prefill or decode, got 'mixer'" },
        { ["serve", "--port", "0", "--kv-unified", "maybe"], 2, "--kv-unified: must be on or off, got 'maybe'" },
        { ["serve", "--port", "0", "--kv-unified", "off", "--ctx-size", "512", "--max-concurrent", "16"], 2, "--kv-unified off: each of the 16 sequences gets --ctx-size / --max-concurrent cells, which must be at least 64, got 32" },
        { ["serve", "--port", "0", "--role", "prefill"], 2, "--role prefill: needs a shared store for the KV (remote_url:" },
        { ["bench", "pd", "--streams", "0", "--modes", "colocated"], 2, "--streams: must be 1..64, got 0" },
        { ["bench", "pd", "--modes", "split"], 2, "--modes: takes a comma list of colocated, disaggregated; got 'split'" },
        { ["server", "--port", "many"], 2, "port (--port): 'many' is not an integer" },
        { ["server", "--port", "0", "--salt-quota", "tenant-a=lots"], 2, "salt_quota (--salt-quota): entry 1: " },
        { ["router", "--instances", "http://127.0.0.1:9", "--policy", "random"], 2, "--policy: must be kv-aware, round-robin, session or least-loaded, got 'random'" },
        { ["router", "--instances", "http://127.0.0.1:9", "--pd", "--pd-min-tokens", "-5"], 2, "--pd-min-tokens: must be 0..1048576 tokens, got -5" },
        { ["controller", "--port", "nine"], 2, "port (--port): 'nine' is not an integer" },
        { ["gen-model", "--type", "f64", "-o", "never-written.gguf"], 2, "unknown weight type 'f64': use f16, q8_0 or f32" },
        { ["gen-model"], 1, "Option '--output' is required." },
        { ["bench"], 1, "Required command was not provided." },
    };

    [Theory]
    [MemberData(nameof(BadValues))]
    public async Task A_bad_value_exits_non_zero_with_one_clear_message_and_no_stack_trace(string[] args, int exitCode, string message)
    {
        var (code, _, stderr) = await LmcacheProcess.RunAsync(Bound, args);
        Assert.Equal(exitCode, code);
        Assert.Contains(message, stderr, StringComparison.Ordinal);
        if (exitCode == 2)
        {
            // The one way every command reports configuration problems: a heading naming the command, then each problem.
            var name = args[0] == "bench" ? $"lmcache bench {args[1]}" : "lmcache " + args[0];
            Assert.StartsWith(name + ": invalid configuration:" + Environment.NewLine + "  ", stderr, StringComparison.Ordinal);
        }

        Assert.DoesNotContain("   at ", stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("Exception", stderr, StringComparison.Ordinal);
    }

    public static TheoryData<string> AllCommands => [.. Commands.Select(row => (string)row.Data.Item1)];

    [Theory]
    [MemberData(nameof(AllCommands))]
    public async Task An_unknown_flag_exits_non_zero_naming_it(string command)
    {
        var (code, _, stderr) = await LmcacheProcess.RunAsync(Bound, [.. Words(command), "--no-such-flag"]);
        Assert.NotEqual(0, code);
        Assert.Contains("Unrecognized command or argument '--no-such-flag'", stderr, StringComparison.Ordinal);
    }

    [GeneratedRegex(@"^  (?:-\S+, )*(--[a-z0-9-]+)", RegexOptions.Multiline)]
    private static partial Regex OptionLine();

    [GeneratedRegex(@"^  ([a-z][a-z0-9-]*) ", RegexOptions.Multiline)]
    private static partial Regex CommandLine();
}
