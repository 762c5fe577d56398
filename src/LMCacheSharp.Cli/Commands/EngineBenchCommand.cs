using System.CommandLine;
using LMCacheSharp.Bench;
using LMCacheSharp.Core.Configuration;

namespace LMCacheSharp.Cli.Commands;

/// <summary><c>lmcache bench engine</c>: the flags of <see cref="EngineBench"/>.</summary>
internal static class EngineBenchCommand
{
    public static Command Create()
    {
        var defaults = new EngineBenchSettings();
        var promptTokens = new Option<int>("--prompt-tokens") { Description = "Tokens per prompt.", DefaultValueFactory = _ => defaults.PromptTokens };
        var bytesPerToken = new Option<int>("--kv-bytes-per-token") { Description = "KV bytes per token across all layers (32768 makes 8 MiB chunks of 256 tokens).", DefaultValueFactory = _ => defaults.KvBytesPerToken };
        var rounds = new Option<int>("--rounds") { Description = "Measured rounds; the median is reported.", DefaultValueFactory = _ => defaults.Rounds };
        var config = new Option<string?>("--config") { Description = "LMCache YAML configuration (chunk_size, max_local_cpu_size, ...)." };
        var command = new Command("engine", "Store, look up and retrieve synthetic KV through the cache engine; print GB/s next to memcpy.")
        {
            promptTokens, bytesPerToken, rounds, config,
        };
        command.SetAction(async (r, ct) =>
        {
            var problems = new List<string>();
            var options = new LMCacheOptions();
            try
            {
                options = LMCacheConfigLoader.Load(r.GetValue(config));
            }
            catch (LMCacheConfigurationException e)
            {
                problems.AddRange(e.Errors);
            }

            var settings = new EngineBenchSettings(r.GetValue(promptTokens), r.GetValue(bytesPerToken), r.GetValue(rounds));
            problems.AddRange(settings.GetErrors(options.ChunkSize));
            if (problems.Count > 0)
            {
                return await ConfigFlags.FailAsync("lmcache bench engine", problems);
            }

            try
            {
                Console.Write(EngineBench.Table(await EngineBench.RunAsync(options, settings, ct)));
                return 0;
            }
            catch (InvalidOperationException e)
            {
                await Console.Error.WriteLineAsync("lmcache bench engine: " + e.Message);
                return 1;
            }
        });
        return command;
    }
}
