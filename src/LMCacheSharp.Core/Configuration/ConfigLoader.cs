using System.Collections;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace LMCacheSharp.Core.Configuration;

/// <summary>A value for one configuration key from the command line (or another caller), with where it came from ("--port").</summary>
/// <param name="Key">The configuration key (<c>chunk_size</c>, <c>port</c>).</param>
/// <param name="Value">The value as text.</param>
/// <param name="Source">Where it came from, named in error messages ("--port", "command line").</param>
public readonly record struct ConfigValue(string Key, string Value, string Source);

/// <summary>
/// The one configuration path of every lmcache host. Options start at their defaults; then, later wins: a YAML (or JSON)
/// file (path given, or the one named by <see cref="FileVariable"/>), environment variables <c>PREFIX_KEY</c> (the key in
/// upper case), and values from the command line. Unknown keys in the file or on the command line are errors (with a
/// suggestion); unknown variables with the prefix are left alone (other tools share it); keys of <c>ignoredKeys</c> are
/// warnings. Then the host's validation sees the final values. Every problem is collected and thrown at once as
/// <see cref="LMCacheConfigurationException"/>, each as <c>key (source): message</c>, the source being the file and line,
/// the variable or the flag where the key was last set.
/// </summary>
/// <typeparam name="TOptions">The options class the keys set.</typeparam>
public sealed class ConfigLoader<TOptions>
    where TOptions : class
{
    private readonly Dictionary<string, Action<TOptions, string>> _setters = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string> _keysByErrorName = new(StringComparer.Ordinal);
    private readonly HashSet<string> _ignored;

    /// <summary>Creates a loader without keys (add them with <see cref="Add"/>).</summary>
    /// <param name="environmentPrefix">Prefix of the environment variables, e.g. <c>LMCACHE_SERVER_</c>.</param>
    /// <param name="fileVariable">The variable that names a configuration file when no path is given, e.g. <c>LMCACHE_SERVER_CONFIG_FILE</c>.</param>
    /// <param name="ignoredKeys">Keys accepted and ignored with a warning (LMCache settings of features this port does not have).</param>
    public ConfigLoader(string environmentPrefix, string fileVariable, IEnumerable<string>? ignoredKeys = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(environmentPrefix);
        ArgumentException.ThrowIfNullOrEmpty(fileVariable);
        EnvironmentPrefix = environmentPrefix;
        FileVariable = fileVariable;
        _ignored = new HashSet<string>(ignoredKeys ?? [], StringComparer.Ordinal);
    }

    /// <summary>Prefix of the environment variables.</summary>
    public string EnvironmentPrefix { get; }

    /// <summary>The variable naming a configuration file.</summary>
    public string FileVariable { get; }

    /// <summary>The keys, in the order they were added.</summary>
    public IReadOnlyCollection<string> Keys => _setters.Keys;

    /// <summary>The environment variable of <paramref name="key"/>: the prefix and the key in upper case.</summary>
    public string VariableOf(string key) => EnvironmentPrefix + (key ?? throw new ArgumentNullException(nameof(key))).ToUpperInvariant();

    /// <summary>Adds a key.</summary>
    /// <param name="key">The key, lower case with underscores (<c>max_value_size</c>).</param>
    /// <param name="set">Sets the value (trimmed); throws <see cref="FormatException"/> with a message for a value it cannot take.</param>
    /// <param name="errorName">The name the host's validation uses for this setting in its errors ("max value size: ..."), when not the key.</param>
    public ConfigLoader<TOptions> Add(string key, Action<TOptions, string> set, string? errorName = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(key);
        ArgumentNullException.ThrowIfNull(set);
        _setters.Add(key, set);
        _keysByErrorName[errorName ?? key] = key;
        return this;
    }

    /// <summary>
    /// Binds <paramref name="options"/> from the file, the environment and <paramref name="values"/>, then validates it.
    /// Throws <see cref="LMCacheConfigurationException"/> listing every problem.
    /// </summary>
    /// <param name="options">The options to bind, at their defaults.</param>
    /// <param name="path">A YAML or JSON file; null means the one named by <see cref="FileVariable"/>, if set.</param>
    /// <param name="environment">Environment variables; null means the process environment.</param>
    /// <param name="values">Values applied last (the command line).</param>
    /// <param name="warnings">Receives warnings (ignored keys).</param>
    /// <param name="validate">
    /// The problems of the final values, each "name: message" (the name a key or a key's error name, whose source is then
    /// added), given the options and where each key was set (key -> source).
    /// </param>
    public TOptions Load(TOptions options, string? path, IDictionary<string, string?>? environment, IEnumerable<ConfigValue>? values,
        ICollection<string>? warnings, Func<TOptions, IReadOnlyDictionary<string, string>, IEnumerable<string>>? validate)
    {
        ArgumentNullException.ThrowIfNull(options);
        environment ??= ReadProcessEnvironment();
        var errors = new List<string>();
        var sources = new Dictionary<string, string>(StringComparer.Ordinal);
        path ??= environment.TryGetValue(FileVariable, out var named) && !string.IsNullOrWhiteSpace(named) ? named : null;
        if (path is not null)
        {
            string? text = null;
            try
            {
                text = File.ReadAllText(path);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                errors.Add($"config file '{path}': cannot be read: {e.Message}");
            }

            if (text is not null)
            {
                ApplyYaml(options, text, path, errors, sources, warnings);
            }
        }

        // Ordered, so that the errors of several variables read the same on every run.
        foreach (var (name, value) in environment.OrderBy(e => e.Key, StringComparer.Ordinal))
        {
            // An empty variable is an unset one (compose files pass ${VAR:-} through).
            if (!name.StartsWith(EnvironmentPrefix, StringComparison.Ordinal) || name == FileVariable || string.IsNullOrWhiteSpace(value))
            {
                continue;
            }

            var key = name[EnvironmentPrefix.Length..].ToLowerInvariant();
            if (_setters.ContainsKey(key))
            {
                Apply(options, key, value, name, errors, sources, warnings);
            }
            else if (_ignored.Contains(key))
            {
                warnings?.Add($"{name}: LMCache setting not used by LMCacheSharp; ignored");
            }

            // Other variables with the prefix (LMCACHE_LOG_LEVEL, LMCACHE_USE_EXPERIMENTAL...) belong to other tools: not ours to reject.
        }

        foreach (var (key, value, source) in values ?? [])
        {
            Apply(options, key, value, source, errors, sources, warnings);
        }

        Validate(options, validate, errors, sources);
        return errors.Count > 0 ? throw new LMCacheConfigurationException(errors) : options;
    }

    /// <summary>Binds <paramref name="options"/> from YAML text alone (no environment), then validates it; for tests and tools.</summary>
    /// <param name="options">The options to bind, at their defaults.</param>
    /// <param name="yaml">The YAML (or JSON) text.</param>
    /// <param name="source">Its name in error messages.</param>
    /// <param name="warnings">Receives warnings (ignored keys).</param>
    /// <param name="validate">As in <see cref="Load"/>.</param>
    public TOptions LoadText(TOptions options, string yaml, string source, ICollection<string>? warnings,
        Func<TOptions, IReadOnlyDictionary<string, string>, IEnumerable<string>>? validate)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(yaml);
        var errors = new List<string>();
        var sources = new Dictionary<string, string>(StringComparer.Ordinal);
        ApplyYaml(options, yaml, source, errors, sources, warnings);
        Validate(options, validate, errors, sources);
        return errors.Count > 0 ? throw new LMCacheConfigurationException(errors) : options;
    }

    private void Validate(TOptions options, Func<TOptions, IReadOnlyDictionary<string, string>, IEnumerable<string>>? validate, List<string> errors,
        Dictionary<string, string> sources)
    {
        if (validate is null)
        {
            return;
        }

        // Range checks see the final values: each problem names where its key was last set.
        foreach (var error in validate(options, sources))
        {
            var colon = error.IndexOf(':', StringComparison.Ordinal);
            if (colon > 0 && _keysByErrorName.TryGetValue(error[..colon], out var key))
            {
                errors.Add(sources.TryGetValue(key, out var where) ? $"{key} ({where}){error[colon..]}" : $"{key}{error[colon..]}");
            }
            else
            {
                errors.Add(error);
            }
        }
    }

    private void ApplyYaml(TOptions options, string text, string source, List<string> errors, Dictionary<string, string> sources, ICollection<string>? warnings)
    {
        var stream = new YamlStream();
        try
        {
            stream.Load(new StringReader(text));
        }
        catch (YamlException e)
        {
            errors.Add($"{source}: not valid YAML at line {e.Start.Line}, column {e.Start.Column}: {e.Message}");
            return;
        }

        if (stream.Documents.Count == 0 || stream.Documents[0].RootNode is YamlScalarNode { Value: null or "" })
        {
            return;
        }

        if (stream.Documents[0].RootNode is not YamlMappingNode root)
        {
            errors.Add($"{source}: the top level must be a mapping of keys to values");
            return;
        }

        foreach (var (keyNode, valueNode) in root.Children)
        {
            var key = (keyNode as YamlScalarNode)?.Value ?? "";
            var where = $"{source} line {keyNode.Start.Line}";
            if (_ignored.Contains(key))
            {
                warnings?.Add($"{key} ({where}): LMCache setting not used by LMCacheSharp; ignored");
                continue;
            }

            if (valueNode is not YamlScalarNode scalar)
            {
                errors.Add(_setters.ContainsKey(key) ? $"{key} ({where}): must be a single value, not a list or mapping" : Unknown(key, where));
                continue;
            }

            var value = scalar.Value ?? "";
            if (scalar.Style == ScalarStyle.Plain && value is "~" or "null" or "Null" or "NULL")
            {
                value = "";
            }

            Apply(options, key, value, where, errors, sources, warnings);
        }
    }

    private void Apply(TOptions options, string key, string value, string where, List<string> errors, Dictionary<string, string> sources,
        ICollection<string>? warnings)
    {
        if (!_setters.TryGetValue(key, out var setter))
        {
            if (_ignored.Contains(key))
            {
                warnings?.Add($"{key} ({where}): LMCache setting not used by LMCacheSharp; ignored");
                return;
            }

            errors.Add(Unknown(key, where));
            return;
        }

        sources[key] = where;
        try
        {
            setter(options, value.Trim());
        }
        catch (FormatException e)
        {
            errors.Add($"{key} ({where}): {e.Message}");
        }
    }

    private string Unknown(string key, string where)
    {
        var best = _setters.Keys.OrderBy(k => Distance(k, key)).First();
        var hint = Distance(best, key) <= 3 ? $"; did you mean '{best}'?" : "";
        return $"{key} ({where}): unknown key{hint} Known keys: {string.Join(", ", _setters.Keys)}";
    }

    private static Dictionary<string, string?> ReadProcessEnvironment()
    {
        var result = new Dictionary<string, string?>(StringComparer.Ordinal);
        foreach (DictionaryEntry entry in Environment.GetEnvironmentVariables())
        {
            result[(string)entry.Key] = entry.Value as string;
        }

        return result;
    }

    private static int Distance(string a, string b)
    {
        var d = new int[a.Length + 1, b.Length + 1];
        for (var i = 0; i <= a.Length; i++)
        {
            d[i, 0] = i;
        }

        for (var j = 0; j <= b.Length; j++)
        {
            d[0, j] = j;
        }

        for (var i = 1; i <= a.Length; i++)
        {
            for (var j = 1; j <= b.Length; j++)
            {
                d[i, j] = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1), d[i - 1, j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1));
            }
        }

        return d[a.Length, b.Length];
    }
}
