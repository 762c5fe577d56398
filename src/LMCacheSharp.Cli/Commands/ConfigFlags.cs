using System.CommandLine;
using LMCacheSharp.Core.Configuration;

namespace LMCacheSharp.Cli.Commands;

/// <summary>
/// The command-line end of a host's <see cref="ConfigLoader{TOptions}"/>: <c>--config FILE</c> and one flag per key
/// (<c>--max-value-size</c> for <c>max_value_size</c>), whose values go to the loader last, each naming its flag; and the one
/// way every command reports configuration problems (all at once, exit code 2).
/// </summary>
internal sealed class ConfigFlags
{
    private readonly List<(Option<string?> Option, string Key)> _flags = [];

    /// <param name="fileDescription">Help of <c>--config</c>.</param>
    public ConfigFlags(string fileDescription) => Config = new Option<string?>("--config") { Description = fileDescription };

    /// <summary><c>--config FILE</c>: a YAML or JSON file of the keys.</summary>
    public Option<string?> Config { get; }

    /// <summary>The flag of <paramref name="key"/>: <c>--</c> and the key with dashes.</summary>
    /// <param name="key">The configuration key.</param>
    /// <param name="description">Help; names the environment variable.</param>
    /// <param name="valueOptional">Whether the flag alone means true (<c>--disk-fsync</c>).</param>
    public Option<string?> Add(string key, string description, bool valueOptional = false)
    {
        var option = new Option<string?>("--" + key.Replace('_', '-')) { Description = description };
        if (valueOptional)
        {
            option.Arity = ArgumentArity.ZeroOrOne;
        }

        _flags.Add((option, key));
        return option;
    }

    /// <summary>Adds <c>--config</c> and every flag to <paramref name="command"/>; <paramref name="keys"/> (the loader's) must each have one.</summary>
    public void AddTo(Command command, IReadOnlyCollection<string> keys)
    {
        if (!keys.Order(StringComparer.Ordinal).SequenceEqual(_flags.Select(f => f.Key).Order(StringComparer.Ordinal)))
        {
            throw new InvalidOperationException($"{command.Name}: the flags ({string.Join(", ", _flags.Select(f => f.Key))}) are not the loader's keys ({string.Join(", ", keys)})");
        }

        command.Options.Add(Config);
        foreach (var (option, _) in _flags)
        {
            command.Options.Add(option);
        }
    }

    /// <summary>The flags given on the command line, as loader values named by their flags.</summary>
    public List<ConfigValue> Values(ParseResult result)
    {
        var values = new List<ConfigValue>();
        foreach (var (option, key) in _flags)
        {
            if (result.GetResult(option) is { Implicit: false } given)
            {
                // A flag of arity zero-or-one given without a value (--disk-fsync) means true.
                values.Add(new ConfigValue(key, given.Tokens.Count == 0 ? "true" : result.GetValue(option) ?? "", option.Name));
            }
        }

        return values;
    }

    /// <summary>Prints every problem under one heading on stderr (<c>lmcache server: invalid configuration:</c>) and returns exit code 2.</summary>
    public static async Task<int> FailAsync(string command, IEnumerable<string> problems)
    {
        await Console.Error.WriteLineAsync($"{command}: invalid configuration:" + Environment.NewLine +
            string.Join(Environment.NewLine, problems.Distinct().Select(p => "  " + p)));
        return 2;
    }
}
