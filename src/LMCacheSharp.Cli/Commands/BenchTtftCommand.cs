using System.CommandLine;
using LMCacheSharp.Bench;

namespace LMCacheSharp.Cli.Commands;

/// <summary><c>lmcache bench ttft</c>: the flags of <see cref="TtftBench"/>.</summary>
internal static class BenchTtftCommand
{
    public static Command Create()
    {
        var defaults = new TtftBenchSettings();
        var model = new Option<string[]>("--model") { Description = "GGUF model(s). Default: the generated bench model (~222M, q8_0; generated if absent) and ../shared/models/stories260K.gguf.", AllowMultipleArgumentsPerToken = true };
        var tokens = new Option<string>("--tokens") { Description = "Cached prompt lengths (each prompt has one more, uncached token).", DefaultValueFactory = _ => string.Join(',', defaults.Lengths) };
        var rounds = new Option<int>("--rounds") { Description = "Rounds of the warm, raw-restore and decode measurements (median reported).", DefaultValueFactory = _ => defaults.Rounds };
        var coldRounds = new Option<int>("--cold-rounds") { Description = "Rounds of the cold prefill (median reported).", DefaultValueFactory = _ => defaults.ColdRounds };
        var chunk = new Option<int>("--chunk-size") { Description = "Tokens per chunk.", DefaultValueFactory = _ => defaults.ChunkSize };
        var layout = new Option<string>("--layout") { Description = "Chunk layout: stateblob, portable or both.", DefaultValueFactory = _ => "both" };
        var fa = new Option<string>("--flash-attention") { Description = "on, off or auto (on for generated models, off for head size < 32).", DefaultValueFactory = _ => defaults.FlashAttention };
        var threads = new Option<int>("--threads") { Description = "Compute threads.", DefaultValueFactory = _ => defaults.Threads };
        var output = new Option<string>("--out") { Description = "Folder for ttft.json, ttft.csv and ttft.png.", DefaultValueFactory = _ => defaults.Output };
        var command = new Command("ttft", "Time to first token, cold vs cached prefix, next to llama.cpp's raw restore and one decode step.")
        {
            model, tokens, rounds, coldRounds, chunk, layout, fa, threads, output,
        };
        var llama = new LlamaNativeOptions();
        llama.AddTo(command);
        command.SetAction(async (r, ct) =>
        {
            // Every problem of the flags is reported at once, each naming its flag, before any model work.
            var problems = new List<string>();
            var lengths = TtftBenchSettings.ParseLengths(r.GetValue(tokens)!, problems);
            var layouts = TtftBenchSettings.ParseLayouts(r.GetValue(layout)!, problems);
            var settings = new TtftBenchSettings
            {
                Models = r.GetValue(model) ?? [],
                Lengths = lengths ?? defaults.Lengths,
                Rounds = r.GetValue(rounds),
                ColdRounds = r.GetValue(coldRounds),
                ChunkSize = r.GetValue(chunk),
                Layouts = layouts ?? defaults.Layouts,
                FlashAttention = r.GetValue(fa)!.ToLowerInvariant(),
                Threads = r.GetValue(threads),
                GpuLayers = r.GetValue(llama.GpuLayers),
                Output = r.GetValue(output)!,
            };
            problems.AddRange(settings.GetErrors().Where(e => lengths is not null || !e.StartsWith("--tokens", StringComparison.Ordinal)));
            problems.AddRange(llama.LibraryErrors(r));
            problems.AddRange(llama.GpuLayersErrors(r));
            if (problems.Count > 0)
            {
                return await ConfigFlags.FailAsync("lmcache bench ttft", problems);
            }

            llama.Apply(r);
            await TtftBench.RunAsync(settings, ProgressLine.ForStderr(), ct);
            return 0;
        });
        return command;
    }
}
