namespace LMCacheSharp.Bench.Tests;

public sealed class StatisticsTests
{
    [Theory]
    [InlineData(new double[] { 3 }, 3)]
    [InlineData(new double[] { 5, 1, 3 }, 3)]
    [InlineData(new double[] { 4, 1, 3, 2 }, 2.5)] // the mean of the two middle values
    [InlineData(new double[] { }, 0)]
    public void Median_is_the_middle_or_the_mean_of_the_two_middle_values(double[] values, double median) =>
        Assert.Equal(median, Statistics.Median(values));

    [Theory]
    [InlineData(0.0, 10)]
    [InlineData(1.0, 50)]
    [InlineData(0.5, 30)]
    [InlineData(0.9, 46)] // numpy.percentile([10, 20, 30, 40, 50], 90) = 46
    [InlineData(0.95, 48)]
    [InlineData(0.25, 20)]
    public void Percentile_interpolates_between_ranks_as_numpy_does(double p, double expected) =>
        Assert.Equal(expected, Statistics.Percentile([50, 10, 40, 20, 30], p), 9);

    [Fact]
    public void The_order_of_the_values_does_not_matter_and_the_input_is_not_changed()
    {
        double[] values = [9, 1, 5, 3, 7, 2];
        var copy = values.ToArray();
        var p50 = Statistics.Percentile(values, 0.5);
        Assert.Equal(Statistics.Percentile(values.Reverse(), 0.5), p50);
        Assert.Equal(Statistics.Median(values), p50);
        Assert.Equal(copy, values);
    }

    [Theory]
    [InlineData(-0.1)]
    [InlineData(1.5)]
    [InlineData(double.NaN)]
    public void A_quantile_outside_0_to_1_is_refused(double p) =>
        Assert.Throws<ArgumentOutOfRangeException>(() => Statistics.Percentile([1.0, 2.0], p));
}
