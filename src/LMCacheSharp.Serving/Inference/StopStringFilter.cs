namespace LMCacheSharp.Serving.Inference;

/// <summary>
/// Streams generated text while watching for stop strings: text that could still be the start of a stop string is held
/// back until it is known not to be one, and nothing from a stop string on is ever emitted.
/// </summary>
public sealed class StopStringFilter(IReadOnlyList<string> stops)
{
    private readonly System.Text.StringBuilder _pending = new();

    /// <summary>True once a stop string was seen.</summary>
    public bool Stopped { get; private set; }

    /// <summary>Adds generated text; returns the text that is safe to emit now.</summary>
    public string Push(string text)
    {
        if (Stopped)
        {
            return "";
        }

        _pending.Append(text);
        if (stops.Count == 0)
        {
            return Flush();
        }

        var current = _pending.ToString();
        var cut = -1;
        foreach (var stop in stops)
        {
            var at = current.IndexOf(stop, StringComparison.Ordinal);
            if (at >= 0 && (cut < 0 || at < cut))
            {
                cut = at;
            }
        }

        if (cut >= 0)
        {
            Stopped = true;
            _pending.Clear();
            return current[..cut];
        }

        // Hold back the longest tail that is a prefix of some stop string.
        var hold = 0;
        foreach (var stop in stops)
        {
            for (var n = Math.Min(stop.Length - 1, current.Length); n > hold; n--)
            {
                if (current.AsSpan(current.Length - n).SequenceEqual(stop.AsSpan(0, n)))
                {
                    hold = n;
                    break;
                }
            }
        }

        _pending.Clear();
        _pending.Append(current, current.Length - hold, hold);
        return current[..^hold];
    }

    /// <summary>Returns whatever is held back (at the end of generation).</summary>
    public string Flush()
    {
        var s = _pending.ToString();
        _pending.Clear();
        return Stopped ? "" : s;
    }
}
