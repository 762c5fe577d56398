using System.Globalization;

namespace LMCacheSharp.Core.Configuration;

/// <summary>
/// Parses human sizes: "4GB", "512 MiB", "1.5g", "4096" (bytes). Units are binary (1 KB = 1 KiB = 1024 bytes), as
/// LMCache's GB settings are. The one place sizes are parsed.
/// </summary>
public static class ByteSize
{
    /// <summary>Parses <paramref name="text"/>; a bare number is read in <paramref name="defaultUnit"/> (bytes unless told).</summary>
    public static bool TryParse(string? text, out long bytes, long defaultUnit = 1)
    {
        bytes = 0;
        if (string.IsNullOrWhiteSpace(text))
        {
            return false;
        }

        var s = text.Trim();
        var split = s.Length;
        while (split > 0 && char.IsLetter(s[split - 1]))
        {
            split--;
        }

        var unitText = s[split..].Trim().ToUpperInvariant();
        var numberText = s[..split].Trim();
        long unit;
        switch (unitText)
        {
            case "": unit = defaultUnit; break;
            case "B": unit = 1; break;
            case "K" or "KB" or "KIB": unit = 1L << 10; break;
            case "M" or "MB" or "MIB": unit = 1L << 20; break;
            case "G" or "GB" or "GIB": unit = 1L << 30; break;
            case "T" or "TB" or "TIB": unit = 1L << 40; break;
            default: return false;
        }

        if (!double.TryParse(numberText, NumberStyles.Float, CultureInfo.InvariantCulture, out var value) ||
            double.IsNaN(value) || double.IsInfinity(value) || value < 0)
        {
            return false;
        }

        var result = value * unit;
        if (result > long.MaxValue / 2)
        {
            return false;
        }

        bytes = (long)Math.Round(result);
        return true;
    }

    /// <summary>Parses or throws <see cref="FormatException"/> with the accepted forms.</summary>
    public static long Parse(string text, long defaultUnit = 1) =>
        TryParse(text, out var bytes, defaultUnit)
            ? bytes
            : throw new FormatException($"'{text}' is not a size: use a number with an optional unit B, KB, MB, GB or TB (binary), e.g. 4GB.");

    /// <summary>Formats bytes with a binary unit, e.g. "4.0 GiB".</summary>
    public static string Format(long bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB"];
        double value = bytes;
        var i = 0;
        while (Math.Abs(value) >= 1024 && i < units.Length - 1)
        {
            value /= 1024;
            i++;
        }

        return i == 0 ? $"{bytes} B" : string.Create(CultureInfo.InvariantCulture, $"{value:0.0} {units[i]}");
    }
}
