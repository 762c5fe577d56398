using System.Globalization;
using System.Net;

namespace LMCacheSharp.Core.Events;

/// <summary>
/// A KV event endpoint as configured: <c>tcp://HOST:PORT</c>, where HOST is <c>*</c> (every interface), an IP address
/// (IPv6 in brackets) or <c>localhost</c> (127.0.0.1), and PORT is 0..65535 (0 picks a free port). The publisher binds it.
/// </summary>
/// <param name="Host">The address to bind: <c>*</c> or an IP address (<c>localhost</c> already turned into 127.0.0.1).</param>
/// <param name="Port">The port (0: a free one).</param>
public readonly record struct KvEventEndpoint(string Host, int Port)
{
    /// <summary>The endpoint in ZeroMQ's form (<c>tcp://127.0.0.1:5557</c>).</summary>
    public override string ToString() => $"tcp://{Host}:{Port.ToString(CultureInfo.InvariantCulture)}";

    /// <summary>Parses <paramref name="text"/>; false with a one-line reason for anything else.</summary>
    public static bool TryParse(string? text, out KvEventEndpoint endpoint, out string error)
    {
        endpoint = default;
        error = "";
        const string Expected = "must be tcp://HOST:PORT with HOST *, an IP address or localhost and PORT 0..65535";
        if (string.IsNullOrWhiteSpace(text) || !text.StartsWith("tcp://", StringComparison.Ordinal))
        {
            error = $"{Expected}, got '{text}'";
            return false;
        }

        var rest = text["tcp://".Length..];
        var colon = rest.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(rest[(colon + 1)..], NumberStyles.None, CultureInfo.InvariantCulture, out var port) || port > 65535)
        {
            error = $"{Expected}, got '{text}'";
            return false;
        }

        var host = rest[..colon];
        if (host.StartsWith('[') && host.EndsWith(']'))
        {
            host = host[1..^1];
        }

        if (host == "localhost")
        {
            host = "127.0.0.1";
        }
        else if (host != "*" && !IPAddress.TryParse(host, out _))
        {
            error = $"{Expected}, got '{text}' (HOST '{host}' is not *, an IP address or localhost)";
            return false;
        }

        endpoint = new KvEventEndpoint(host.Contains(':', StringComparison.Ordinal) ? $"[{host}]" : host, port);
        return true;
    }
}
