namespace LMCacheSharp.Bench;

/// <summary>A bench that cannot go on (no workload loaded, a fleet member that did not start): its message is for the user, without a stack trace.</summary>
public sealed class BenchException : Exception
{
    /// <summary>Creates the exception.</summary>
    public BenchException()
    {
    }

    /// <summary>Creates the exception with its message.</summary>
    public BenchException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with its message and cause.</summary>
    public BenchException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}
