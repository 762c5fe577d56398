namespace LMCacheSharp.Bench;

/// <summary>
/// A progress line for long bench steps (loading, measuring, writing a model): redrawn in place on a terminal, silent
/// elsewhere. The <c>lmcache</c> command passes its stderr line; <see cref="Silent"/> draws nothing.
/// </summary>
public interface IProgressLine
{
    /// <summary>A line that draws nothing.</summary>
    static IProgressLine Silent { get; } = new SilentLine();

    /// <summary>Shows <paramref name="stage"/> at <paramref name="fraction"/> (0..1); 1 finishes the stage's line.</summary>
    void Report(string stage, double fraction, string? detail = null);

    /// <summary>Erases an unfinished line, so that a result printed next takes its place.</summary>
    void Clear();

    private sealed class SilentLine : IProgressLine
    {
        public void Report(string stage, double fraction, string? detail = null)
        {
        }

        public void Clear()
        {
        }
    }
}
