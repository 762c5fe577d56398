using System.Diagnostics;
using LMCacheSharp.Serving;

namespace LMCacheSharp.Cli;

/// <summary>
/// One progress line on stderr, redrawn in place with a carriage return (stage, bar, percent), for long work: generating a
/// model, loading one, benchmark steps. Silent when stderr is not a terminal (redirected to a file or a pipe, as under
/// tests, CI and containers' log collectors), so logs hold results and never a stream of redraws. Thread-safe.
/// </summary>
internal sealed class ProgressLine : IProgress<StartupProgress>, Bench.IProgressLine
{
    private const int BarWidth = 24;
    private static readonly long RedrawInterval = Stopwatch.Frequency / 10; // at most 10 redraws a second

    private readonly TextWriter? _output;
    private readonly Lock _lock = new();
    private string? _stage;
    private int _percent = -1;
    private int _width;
    private long _drawnAt;

    /// <summary>A line on <paramref name="output"/>, or a silent one when <paramref name="output"/> is null.</summary>
    public ProgressLine(TextWriter? output) => _output = output;

    /// <summary>The line on stderr when stderr is a terminal, else a silent one.</summary>
    public static ProgressLine ForStderr() => new(Console.IsErrorRedirected ? null : Console.Error);

    /// <summary>Whether anything is written.</summary>
    public bool Enabled => _output is not null;

    /// <inheritdoc />
    public void Report(StartupProgress value) => Report(value.Stage, value.Fraction);

    /// <summary>Shows <paramref name="stage"/> at <paramref name="fraction"/> (0..1); 1 finishes the stage's line.</summary>
    public void Report(string stage, double fraction, string? detail = null)
    {
        if (_output is null)
        {
            return;
        }

        var percent = (int)Math.Clamp(fraction * 100, 0, 100);
        lock (_lock)
        {
            var now = Stopwatch.GetTimestamp();
            var sameStage = stage == _stage;
            if (sameStage && (percent == _percent || (percent < 100 && now - _drawnAt < RedrawInterval)))
            {
                return;
            }

            if (!sameStage && _stage is not null && _percent < 100)
            {
                _output.WriteLine(); // the last stage did not say it finished: keep its line
            }

            var filled = percent * BarWidth / 100;
            var text = $"{stage} [{new string('#', filled)}{new string('.', BarWidth - filled)}] {percent,3}%{(detail is null ? "" : " " + detail)}";
            _output.Write("\r" + text.PadRight(_width));
            _width = text.Length;
            if (percent == 100)
            {
                _output.WriteLine();
                _width = 0;
            }

            _output.Flush();
            _stage = stage;
            _percent = percent;
            _drawnAt = now;
        }
    }

    /// <summary>Erases an unfinished line, so that a result printed next (on stdout, to the same terminal) takes its place.</summary>
    public void Clear()
    {
        lock (_lock)
        {
            if (_output is not null && _width > 0)
            {
                _output.Write("\r" + new string(' ', _width) + "\r");
                _output.Flush();
            }

            _stage = null;
            _percent = -1;
            _width = 0;
        }
    }

    /// <summary>Ends an unfinished line, so that what is printed next starts on its own line.</summary>
    public void Finish()
    {
        lock (_lock)
        {
            if (_output is not null && _stage is not null && _percent < 100)
            {
                _output.WriteLine();
                _output.Flush();
            }

            _stage = null;
            _percent = -1;
            _width = 0;
        }
    }
}
