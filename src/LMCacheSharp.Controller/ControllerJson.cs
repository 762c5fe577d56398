using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Http;

namespace LMCacheSharp.Controller;

/// <summary>A request the controller refuses: status, message, and the OpenAI error fields.</summary>
internal sealed class ControllerRequestException(int status, string message, string? param = null, string code = "invalid_request") : Exception(message)
{
    public int Status { get; } = status;

    public string? Param { get; } = param;

    public string Code { get; } = code;

    public ControllerRequestException()
        : this(400, "bad request")
    {
    }

    public ControllerRequestException(string message)
        : this(400, message)
    {
    }

    public ControllerRequestException(string message, Exception innerException)
        : this(400, message + ": " + innerException?.Message)
    {
    }
}

/// <summary>Reading request bodies and writing errors in OpenAI's shape: the controller's one way to report errors.</summary>
internal static class ControllerJson
{
    public static JsonObject Error(string message, string type, string? param, string code) => Http.OpenAiErrors.Body(message, type, param, code);

    public static Task WriteErrorAsync(HttpContext http, int status, string message, string? param = null, string? code = null) =>
        Http.OpenAiErrors.WriteAsync(http, status, message, null, param, code);

    /// <summary>The body as a JSON object; bad JSON, another type, or a body over Kestrel's limit: a 4xx exception.</summary>
    public static async Task<JsonObject> ReadObjectAsync(HttpContext http)
    {
        JsonNode? node;
        try
        {
            node = await JsonNode.ParseAsync(http.Request.Body, cancellationToken: http.RequestAborted).ConfigureAwait(false);
        }
        catch (JsonException e)
        {
            throw new ControllerRequestException(400, "the body is not valid JSON: " + e.Message, code: "invalid_json");
        }
        catch (BadHttpRequestException e) when (e.StatusCode == StatusCodes.Status413PayloadTooLarge)
        {
            throw new ControllerRequestException(413, "the body is larger than the controller accepts (--max-body-size)", code: "body_too_large");
        }

        return node as JsonObject ?? throw new ControllerRequestException(400, "the body must be a JSON object", code: "invalid_json");
    }

    public static string? OptionalString(JsonObject body, string name)
    {
        var node = body[name];
        if (node is null)
        {
            return null;
        }

        return node is JsonValue v && v.TryGetValue<string>(out var s)
            ? s
            : throw new ControllerRequestException(400, $"'{name}' must be a string", name);
    }

    public static string RequiredString(JsonObject body, string name) =>
        OptionalString(body, name) is { Length: > 0 } s ? s : throw new ControllerRequestException(400, $"'{name}' is required (a non-empty string)", name);

    public static long OptionalLong(JsonObject? body, string name, long fallback = 0)
    {
        var node = body?[name];
        if (node is null)
        {
            return fallback;
        }

        return node is JsonValue v && v.TryGetValue<long>(out var n) ? n
            : node is JsonValue d && d.TryGetValue<double>(out var x) && x == Math.Floor(x) && Math.Abs(x) < 9e15 ? (long)x
            : throw new ControllerRequestException(400, $"'{name}' must be an integer", name);
    }

    public static int[]? OptionalTokens(JsonObject body, string name, int max)
    {
        var node = body[name];
        if (node is null)
        {
            return null;
        }

        if (node is not JsonArray array)
        {
            throw new ControllerRequestException(400, $"'{name}' must be an array of token ids", name);
        }

        if (array.Count > max)
        {
            throw new ControllerRequestException(400, $"'{name}' has {array.Count} tokens; at most {max} (--max-lookup-tokens)", name, "too_many_tokens");
        }

        var tokens = new int[array.Count];
        for (var i = 0; i < tokens.Length; i++)
        {
            if (array[i] is not JsonValue v || !v.TryGetValue<int>(out tokens[i]) || tokens[i] < 0)
            {
                throw new ControllerRequestException(400, $"'{name}[{i}]' must be a non-negative integer token id", name);
            }
        }

        return tokens;
    }

    public static IReadOnlyList<string> OptionalStrings(JsonObject body, string name)
    {
        var node = body[name];
        if (node is null)
        {
            return [];
        }

        if (node is not JsonArray array || array.Any(n => n is not JsonValue v || !v.TryGetValue<string>(out _)))
        {
            throw new ControllerRequestException(400, $"'{name}' must be an array of strings", name);
        }

        return [.. array.Select(n => n!.GetValue<string>())];
    }
}
