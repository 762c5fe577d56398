namespace LMCacheSharp.Bench;

/// <summary>The checks every bench's settings share, so that each names its flag the same way.</summary>
internal static class SettingsChecks
{
    /// <summary>Adds "<paramref name="flag"/>: must be MIN..MAX, got VALUE" to <paramref name="errors"/> when the value is out of range.</summary>
    public static void Range(List<string> errors, string flag, int value, int min, int max)
    {
        if (value < min || value > max)
        {
            errors.Add($"{flag}: must be {min}..{max}, got {value}");
        }
    }
}
