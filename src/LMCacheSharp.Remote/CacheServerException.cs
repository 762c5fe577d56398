using LMCacheSharp.Protocol;

namespace LMCacheSharp.Remote;

/// <summary>The cache server answered a request with an error status.</summary>
public sealed class CacheServerException : Exception
{
    /// <summary>Creates the exception.</summary>
    public CacheServerException(StatusCode status, string message)
        : base($"{status}: {message}")
    {
        Status = status;
    }

    /// <summary>Creates the exception.</summary>
    public CacheServerException()
        : this(StatusCode.InternalError, "cache server error")
    {
    }

    /// <summary>Creates the exception.</summary>
    public CacheServerException(string message)
        : this(StatusCode.InternalError, message)
    {
    }

    /// <summary>Creates the exception.</summary>
    public CacheServerException(string message, Exception innerException)
        : base(message, innerException)
    {
        Status = StatusCode.InternalError;
    }

    /// <summary>The status the server sent.</summary>
    public StatusCode Status { get; }
}

/// <summary>The connection to the cache server failed or was closed; the requests on it did not complete.</summary>
public sealed class CacheConnectionException : IOException
{
    /// <summary>Creates the exception.</summary>
    public CacheConnectionException(string message, Exception? innerException = null)
        : base(message, innerException)
    {
    }

    /// <summary>Creates the exception.</summary>
    public CacheConnectionException()
        : this("cache server connection failed")
    {
    }

    /// <summary>Creates the exception.</summary>
    public CacheConnectionException(string message)
        : this(message, null)
    {
    }
}
