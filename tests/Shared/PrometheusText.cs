using System.Globalization;

namespace LMCacheSharp.Tests.Shared;

/// <summary>
/// Prometheus text as a host's /metrics answers it: the TYPE of each family and the value of each series
/// (<c>name{labels}</c> as written). Compiled into each test project that reads /metrics.
/// </summary>
internal sealed class PrometheusText
{
    private readonly Dictionary<string, string> _types = new(StringComparer.Ordinal);
    private readonly Dictionary<string, double> _samples = new(StringComparer.Ordinal);

    public PrometheusText(string text)
    {
        Text = text;
        foreach (var line in text.Split('\n'))
        {
            if (line.StartsWith("# TYPE ", StringComparison.Ordinal))
            {
                var parts = line.Split(' ');
                _types[parts[2]] = parts[3];
            }
            else if (line.Length > 0 && line[0] != '#')
            {
                var space = line.LastIndexOf(' ');
                _samples[line[..space]] = double.Parse(line[(space + 1)..], CultureInfo.InvariantCulture);
            }
        }
    }

    public string Text { get; }

    /// <summary>Family name to TYPE (counter, gauge, histogram).</summary>
    public IReadOnlyDictionary<string, string> Types => _types;

    /// <summary>The value of <paramref name="series"/> (<c>name</c> or <c>name{a="x",b="y"}</c>); fails when absent.</summary>
    public double this[string series]
    {
        get
        {
            Assert.True(_samples.TryGetValue(series, out var value), $"no {series} in:\n{Text}");
            return value;
        }
    }

    public bool Has(string series) => _samples.ContainsKey(series);

    /// <summary>Asserts that every family of <paramref name="expected"/> is there with its TYPE.</summary>
    public void AssertFamilies(IEnumerable<(string Name, string Type)> expected)
    {
        var missing = expected.Where(e => !_types.TryGetValue(e.Name, out var type) || type != e.Type).ToList();
        Assert.True(missing.Count == 0, "missing or of another type: " + string.Join(", ", missing.Select(m => $"{m.Name} ({m.Type})")) + "\n" + Text);
    }
}
