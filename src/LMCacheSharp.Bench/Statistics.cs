namespace LMCacheSharp.Bench;

/// <summary>The statistics every bench reports: medians and percentiles of measured times, one definition for all.</summary>
public static class Statistics
{
    /// <summary>The median: the middle value, or the mean of the two middle ones for an even count; 0 when empty.</summary>
    public static double Median(IEnumerable<double> values) => Percentile(values, 0.5);

    /// <summary>
    /// The <paramref name="p"/> quantile (0..1) of <paramref name="values"/>, interpolated linearly between the two nearest
    /// ranks (numpy's default); 0 when empty.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="p"/> outside 0..1.</exception>
    public static double Percentile(IEnumerable<double> values, double p)
    {
        ArgumentNullException.ThrowIfNull(values);
        if (!(p is >= 0 and <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(p), p, "a quantile is in 0..1");
        }

        var sorted = values.Order().ToArray();
        if (sorted.Length == 0)
        {
            return 0;
        }

        var rank = p * (sorted.Length - 1);
        var lo = (int)Math.Floor(rank);
        var hi = (int)Math.Ceiling(rank);
        return sorted[lo] + ((sorted[hi] - sorted[lo]) * (rank - lo));
    }
}
