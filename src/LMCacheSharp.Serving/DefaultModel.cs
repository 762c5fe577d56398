using LMCacheSharp.LlamaCpp.Gguf;

namespace LMCacheSharp.Serving;

/// <summary>
/// The model served when none is given: a small Llama-architecture GGUF with RANDOM weights (it produces gibberish),
/// generated once into the user's data folder so that <c>lmcache serve</c> works on a fresh machine without a download.
/// </summary>
public static class DefaultModel
{
    /// <summary>The name the default model is served under; says what it is.</summary>
    public const string Name = "lmcache-random-small";

    /// <summary>Where the default model is kept: $LMCACHE_HOME/models, else the user's local data folder.</summary>
    public static string PathOnDisk
    {
        get
        {
            var home = Environment.GetEnvironmentVariable("LMCACHE_HOME");
            if (string.IsNullOrEmpty(home))
            {
                var data = Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData, Environment.SpecialFolderOption.Create);
                home = Path.Combine(string.IsNullOrEmpty(data) ? Path.GetTempPath() : data, "lmcachesharp");
            }

            return Path.Combine(home, "models", Name + ".gguf");
        }
    }

    /// <summary>Returns the default model's path, generating it first if absent (a few seconds).</summary>
    /// <param name="log">Where the line saying that the model is generated goes, or null.</param>
    /// <param name="progress">Where the generation reports its progress, or null.</param>
    public static string Ensure(TextWriter? log = null, IProgress<StartupProgress>? progress = null)
    {
        var path = PathOnDisk;
        if (File.Exists(path))
        {
            return path;
        }

        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        var spec = LlamaModelSpec.FromPreset("small");
        log?.WriteLine($"Generating the default model (random weights, {spec.ParameterCount / 1e6:F1}M parameters) at {path} ...");
        var temp = path + "." + Environment.ProcessId + ".tmp";
        try
        {
            GgufModelWriter.Write(spec, temp, progress is null ? null
                : (done, total) => progress.Report(new StartupProgress("generating the default model", (double)done / Math.Max(total, 1))));
            File.Move(temp, path, overwrite: true);
        }
        finally
        {
            File.Delete(temp);
        }

        return path;
    }
}
