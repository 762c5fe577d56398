namespace LMCacheSharp.Bench;

/// <summary>PNG charts of the benches (ScottPlot).</summary>
internal static class Charts
{
    /// <summary>A grouped bar chart: one group per series, one bar per configuration.</summary>
    public static void Bars(string path, string title, IReadOnlyList<string> configs, IReadOnlyList<string> series, Func<string, string, double> value)
    {
        var plot = new ScottPlot.Plot();
        var palette = new ScottPlot.Palettes.Category10();
        var bars = new List<ScottPlot.Bar>();
        var ticks = new List<ScottPlot.Tick>();
        for (var s = 0; s < series.Count; s++)
        {
            for (var c = 0; c < configs.Count; c++)
            {
                var x = (s * (configs.Count + 1)) + c;
                bars.Add(new ScottPlot.Bar { Position = x, Value = value(configs[c], series[s]), FillColor = palette.GetColor(c) });
            }

            ticks.Add(new ScottPlot.Tick((s * (configs.Count + 1)) + ((configs.Count - 1) / 2.0), series[s]));
        }

        plot.Add.Bars(bars);
        for (var c = 0; c < configs.Count; c++)
        {
            plot.Legend.ManualItems.Add(new ScottPlot.LegendItem { LabelText = configs[c], FillColor = palette.GetColor(c) });
        }

        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual([.. ticks]);
        plot.Axes.Margins(bottom: 0, top: 0.3); // headroom above the tallest bar for the legend
        plot.Title(title);
        plot.ShowLegend(ScottPlot.Alignment.UpperRight);
        plot.SavePng(path, 900, 500);
    }
}
