using System.CommandLine;
using LMCacheSharp.LlamaCpp;

namespace LMCacheSharp.Cli.Commands;

/// <summary>
/// <c>--llama-native PATH</c> and <c>--gpu-layers N</c>, shared by the commands that load a model in this process
/// (serve, bench ttft, bench serving): which llama.cpp library to load and how many layers it offloads.
/// </summary>
internal sealed class LlamaNativeOptions
{
    public Option<string?> Library { get; } = new("--llama-native")
    {
        Description = "llama.cpp shared library to load instead of the bundled CPU build (libllama.so, llama.dll or libllama.dylib of a " +
            "CUDA, Metal or Vulkan build of the llama.cpp commit LLamaSharp 0.30 binds). Default: the CPU build for this machine.",
    };

    public Option<int> GpuLayers { get; } = new("--gpu-layers", "-ngl")
    {
        Description = $"Model layers offloaded to the GPU (a number above the model's layers offloads all); needs a GPU build (--llama-native). Default 0; 0..{LlamaContextSettings.MaxGpuLayers}.",
        DefaultValueFactory = _ => 0,
    };

    /// <summary>Adds both options to <paramref name="command"/>.</summary>
    public void AddTo(Command command)
    {
        command.Options.Add(Library);
        command.Options.Add(GpuLayers);
    }

    /// <summary>Problems of --llama-native (missing, not loadable, not llama.cpp), each naming the option.</summary>
    public IEnumerable<string> LibraryErrors(ParseResult result) =>
        result.GetValue(Library) is { } path ? LlamaNativeLibrary.GetErrors(path).Select(e => "--llama-native: " + e) : [];

    /// <summary>Problems of --gpu-layers, naming the option (commands whose options class validates it need not ask).</summary>
    public IEnumerable<string> GpuLayersErrors(ParseResult result) =>
        result.GetValue(GpuLayers) is var n && n is >= 0 and <= LlamaContextSettings.MaxGpuLayers
            ? [] : [$"--gpu-layers: must be 0..{LlamaContextSettings.MaxGpuLayers}, got {n}"];

    /// <summary>
    /// Makes LLamaSharp load the library given, else the CPU build from lmcache's own folder (never one from the current
    /// directory); call after the checks and before any model is loaded.
    /// </summary>
    public void Apply(ParseResult result)
    {
        if (result.GetValue(Library) is { } path)
        {
            LlamaNativeLibrary.Use(path);
        }
        else
        {
            LlamaNativeLibrary.PreferApplicationFolder();
        }
    }
}
