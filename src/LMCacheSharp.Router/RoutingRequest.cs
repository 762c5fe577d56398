using System.Text.Json;

namespace LMCacheSharp.Router;

/// <summary>What the router read from a completion or chat request to route it. The body is forwarded as it came.</summary>
public sealed class RoutingRequest
{
    /// <summary>The header that names a session for the <c>session</c> policy (wins over the body's <c>user</c> field).</summary>
    public const string SessionHeader = "X-Session-Id";

    /// <summary>The request path (/v1/completions or /v1/chat/completions).</summary>
    public required string Path { get; init; }

    /// <summary>The request body, buffered.</summary>
    public required ReadOnlyMemory<byte> Body { get; init; }

    /// <summary>The <c>model</c> field, or null when absent (any instance will do).</summary>
    public string? Model { get; init; }

    /// <summary>The session: the <see cref="SessionHeader"/> header, else the <c>user</c> field, else null.</summary>
    public string? SessionKey { get; init; }

    /// <summary>The <c>stream</c> field.</summary>
    public bool Stream { get; init; }

    /// <summary>The <c>stream_options.include_usage</c> field.</summary>
    public bool IncludeUsage { get; init; }

    /// <summary>kv-aware's lookup answers, kept so that a retry does not ask again.</summary>
    internal IReadOnlyList<CacheReport>? Reports { get; set; }

    /// <summary>
    /// Reads the routing fields of <paramref name="body"/>. Throws <see cref="JsonException"/> for a body that is not JSON;
    /// a JSON value that is not an object, or fields of the wrong type, are left for the instance to refuse (it names them).
    /// </summary>
    public static RoutingRequest Parse(string path, ReadOnlyMemory<byte> body, string? sessionHeader)
    {
        using var doc = JsonDocument.Parse(body);
        var root = doc.RootElement;
        string? model = null, user = null;
        bool stream = false, includeUsage = false;
        if (root.ValueKind == JsonValueKind.Object)
        {
            model = String(root, "model");
            user = String(root, "user");
            stream = root.TryGetProperty("stream", out var s) && s.ValueKind == JsonValueKind.True;
            includeUsage = root.TryGetProperty("stream_options", out var o) && o.ValueKind == JsonValueKind.Object &&
                o.TryGetProperty("include_usage", out var u) && u.ValueKind == JsonValueKind.True;
        }

        return new RoutingRequest
        {
            Path = path,
            Body = body,
            Model = string.IsNullOrEmpty(model) ? null : model,
            SessionKey = !string.IsNullOrEmpty(sessionHeader) ? sessionHeader : string.IsNullOrEmpty(user) ? null : user,
            Stream = stream,
            IncludeUsage = includeUsage,
        };
    }

    private static string? String(JsonElement root, string name)
    {
        if (!root.TryGetProperty(name, out var value) || value.ValueKind != JsonValueKind.String)
        {
            return null;
        }

        try
        {
            return value.GetString();
        }
        catch (InvalidOperationException)
        {
            return null; // not valid text (a lone surrogate): the instance refuses it by name
        }
    }
}
