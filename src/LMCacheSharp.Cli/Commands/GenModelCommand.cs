using System.CommandLine;
using System.Diagnostics;
using LMCacheSharp.LlamaCpp.Gguf;

namespace LMCacheSharp.Cli.Commands;

/// <summary>
/// <c>lmcache gen-model</c>: writes a Llama-architecture GGUF with random weights and a working byte-fallback tokenizer,
/// from a preset (tiny, small, bench) and/or explicit shape options, so tests and benchmarks need no download.
/// </summary>
internal static class GenModelCommand
{
    public static Command Create()
    {
        var preset = new Option<string?>("--preset") { Description = "Starting shape: tiny (~0.1M params), small (~4M), bench (~222M). Explicit options override it." };
        var layers = new Option<int?>("--layers") { Description = "Transformer blocks." };
        var embd = new Option<int?>("--embd") { Description = "Hidden size (a multiple of --heads; of 32 for q8_0)." };
        var heads = new Option<int?>("--heads") { Description = "Attention heads." };
        var kvHeads = new Option<int?>("--kv-heads") { Description = "Key/value heads (divides --heads; fewer than --heads = GQA)." };
        var ffn = new Option<int?>("--ffn") { Description = "Feed-forward hidden size (a multiple of 32 for q8_0)." };
        var vocab = new Option<int?>("--vocab") { Description = "Vocabulary size (>= 259: 3 special + 256 byte tokens)." };
        var ctx = new Option<int?>("--ctx") { Description = "Context length written to the model." };
        var type = new Option<string>("--type") { Description = "Weight type: f16 or q8_0 (norms are f32).", DefaultValueFactory = _ => "f16" };
        var seed = new Option<ulong>("--seed") { Description = "Seed of the random weights (same shape + seed = same bytes).", DefaultValueFactory = _ => 42 };
        var output = new Option<string>("--output", "-o") { Description = "Output .gguf file.", Required = true };
        var command = new Command("gen-model", "Write a Llama-architecture GGUF model with random weights and a working tokenizer.")
        {
            preset, layers, embd, heads, kvHeads, ffn, vocab, ctx, type, seed, output,
        };
        command.SetAction(async (result, ct) =>
        {
            LlamaModelSpec spec;
            try
            {
                var weightType = LlamaModelSpec.ParseType(result.GetValue(type)!);
                var baseSpec = result.GetValue(preset) is { } name
                    ? LlamaModelSpec.FromPreset(name, weightType, result.GetValue(seed))
                    : null;
                int Pick(Option<int?> option, int? fallback) => result.GetValue(option) ?? fallback
                    ?? throw new ArgumentException($"{option.Name} is required without --preset");
                spec = new LlamaModelSpec(
                    Pick(layers, baseSpec?.Layers), Pick(embd, baseSpec?.EmbeddingLength), Pick(heads, baseSpec?.HeadCount),
                    Pick(kvHeads, baseSpec?.KvHeadCount ?? result.GetValue(heads)), Pick(ffn, baseSpec?.FeedForwardLength),
                    Pick(vocab, baseSpec?.VocabSize), Pick(ctx, baseSpec?.ContextLength), weightType, result.GetValue(seed));
                var errors = spec.GetErrors();
                if (errors.Count > 0)
                {
                    throw new ArgumentException(string.Join(Environment.NewLine, errors));
                }
            }
            catch (ArgumentException e)
            {
                var message = e.ParamName is { } name ? e.Message.Replace($" (Parameter '{name}')", "", StringComparison.Ordinal) : e.Message;
                return await ConfigFlags.FailAsync("lmcache gen-model", message.Split(Environment.NewLine));
            }

            var path = Path.GetFullPath(result.GetValue(output)!);
            Console.WriteLine($"{spec}");
            var sw = Stopwatch.StartNew();
            var length = await Task.Run(() => Write(spec, path, ct), ct);
            Console.WriteLine($"wrote {path}: {length / 1048576.0:F1} MiB in {sw.Elapsed.TotalSeconds:F1} s");
            return 0;
        });
        return command;
    }

    /// <summary>Writes <paramref name="spec"/> to <paramref name="path"/> with a progress line on stderr (when it is a terminal).</summary>
    public static long Write(LlamaModelSpec spec, string path, CancellationToken ct)
    {
        var progress = ProgressLine.ForStderr();
        try
        {
            return GgufModelWriter.Write(spec, path, (done, total) =>
                progress.Report("writing", (double)done / Math.Max(total, 1), $"{done / 1048576.0:F1} / {total / 1048576.0:F1} MiB"), ct);
        }
        finally
        {
            progress.Finish();
        }
    }
}
