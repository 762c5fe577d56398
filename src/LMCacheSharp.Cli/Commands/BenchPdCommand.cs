using System.CommandLine;
using LMCacheSharp.Bench;

namespace LMCacheSharp.Cli.Commands;

/// <summary><c>lmcache bench pd</c>: the flags of <see cref="PdBench"/>, whose fleet members are this same lmcache.</summary>
internal static class BenchPdCommand
{
    public static Command Create()
    {
        var d = new PdBenchSettings();
        var model = new Option<string?>("--model") { Description = "GGUF served by both instances. Default: ../shared/models/stories260K.gguf when present, else the generated default model." };
        var threads = new Option<int>("--threads") { Description = "llama.cpp threads of each of the two instances (the same total in both modes; 1..256).", DefaultValueFactory = _ => d.Threads };
        var ctx = new Option<int>("--ctx-size") { Description = "KV cells of each instance's context.", DefaultValueFactory = _ => d.ContextSize };
        var streams = new Option<int>("--streams") { Description = "Decode streams kept running while the long prompts arrive (1..64).", DefaultValueFactory = _ => d.Streams };
        var streamTokens = new Option<int>("--stream-tokens") { Description = "Tokens each decode stream generates before the next starts (2..4096).", DefaultValueFactory = _ => d.StreamTokens };
        var longPrompts = new Option<int>("--long-prompts") { Description = "Long prompts sent while the streams run, each a new document (1..10000).", DefaultValueFactory = _ => d.LongPrompts };
        var longWords = new Option<int>("--long-words") { Description = "Words per long prompt's document (1..100000).", DefaultValueFactory = _ => d.LongWords };
        var longMaxTokens = new Option<int>("--long-max-tokens") { Description = "Tokens each long prompt generates (1..4096).", DefaultValueFactory = _ => d.LongMaxTokens };
        var interval = new Option<double>("--interval") { Description = "Seconds between the arrivals of two long prompts (0..3600).", DefaultValueFactory = _ => d.IntervalSeconds };
        var repeats = new Option<int>("--repeats") { Description = "Runs of each mode, rotated, each on a fresh fleet (1..100).", DefaultValueFactory = _ => d.Repeats };
        var modes = new Option<string>("--modes") { Description = "Modes, comma-separated: colocated (two instances of role both), disaggregated (serve --role prefill + --role decode, router --pd).", DefaultValueFactory = _ => string.Join(',', d.Modes) };
        var output = new Option<string>("--output", "-o") { Description = "Folder for results (pd.json, pd.csv, pd-summary.md).", DefaultValueFactory = _ => d.Output };
        var command = new Command("pd", "Prefill/decode disaggregation vs colocated on the same cores: inter-token latency of running streams while long prompts arrive.")
        {
            model, threads, ctx, streams, streamTokens, longPrompts, longWords, longMaxTokens, interval, repeats, modes, output,
        };
        command.SetAction(async (r, ct) =>
        {
            var settings = new PdBenchSettings
            {
                Model = r.GetValue(model),
                Threads = r.GetValue(threads),
                ContextSize = r.GetValue(ctx),
                Streams = r.GetValue(streams),
                StreamTokens = r.GetValue(streamTokens),
                LongPrompts = r.GetValue(longPrompts),
                LongWords = r.GetValue(longWords),
                LongMaxTokens = r.GetValue(longMaxTokens),
                IntervalSeconds = r.GetValue(interval),
                Repeats = r.GetValue(repeats),
                Modes = FleetBenchSettings.ParseList(r.GetValue(modes)),
                Output = r.GetValue(output)!,
            };
            if (settings.GetErrors() is { Count: > 0 } problems)
            {
                return await ConfigFlags.FailAsync("lmcache bench pd", problems);
            }

            try
            {
                await PdBench.RunAsync(settings, BenchFleetCommand.Self(), ct);
                return 0;
            }
            catch (BenchException e)
            {
                await Console.Error.WriteLineAsync("lmcache bench pd: " + e.Message);
                return 1;
            }
        });
        return command;
    }
}
