using System.Globalization;

namespace LMCacheSharp.Core.Configuration;

/// <summary>
/// The parsers of configuration values shared by every <see cref="ConfigLoader{TOptions}"/>: each throws
/// <see cref="FormatException"/> with a message that quotes the value and says what was expected.
/// </summary>
public static class ConfigParsers
{
    /// <summary>Longest time in seconds: ranges are the options' business, this only keeps a TimeSpan finite.</summary>
    public const double MaxSeconds = 1e6;

    /// <summary>An integer (invariant culture).</summary>
    /// <exception cref="FormatException">Anything else.</exception>
    public static int ParseInt(string value) =>
        int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out var i) ? i : throw new FormatException($"'{value}' is not an integer");

    /// <summary>A boolean as configuration writes it: true/false, 1/0, yes/no, on/off (any case).</summary>
    /// <exception cref="FormatException">Anything else.</exception>
    public static bool ParseBool(string value) => (value ?? throw new ArgumentNullException(nameof(value))).ToLowerInvariant() switch
    {
        "true" or "1" or "yes" or "on" => true,
        "false" or "0" or "no" or "off" => false,
        _ => throw new FormatException($"'{value}' is not a boolean (true/false)"),
    };

    /// <summary>A size in bytes as a human string ("4GB", "512MB", "4096"; binary units), by <see cref="ByteSize"/>.</summary>
    /// <exception cref="FormatException">Anything else.</exception>
    public static long ParseSize(string value) => ByteSize.TryParse(value, out var bytes)
        ? bytes
        : throw new FormatException($"'{value}' is not a size: use a number with an optional unit B, KB, MB, GB or TB (binary), e.g. 4GB");

    /// <summary>A time in seconds, decimals allowed, 0..<see cref="MaxSeconds"/>.</summary>
    /// <exception cref="FormatException">Anything else.</exception>
    public static TimeSpan ParseSeconds(string value) =>
        double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out var seconds) && double.IsFinite(seconds) && seconds is >= 0 and <= MaxSeconds
            ? TimeSpan.FromSeconds(seconds)
            : throw new FormatException($"'{value}' is not a number of seconds (0..{MaxSeconds:0})");
}
