using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Http;

namespace LMCacheSharp.Router;

/// <summary>Errors the router answers itself, in OpenAI's shape (as lmcache serve writes them).</summary>
internal static class OpenAiError
{
    /// <summary>The error object: {"error": {"message", "type", "param", "code"}}.</summary>
    public static JsonObject Body(string message, string type, string? param = null, string? code = null) => new()
    {
        ["error"] = new JsonObject { ["message"] = message, ["type"] = type, ["param"] = param, ["code"] = code ?? type },
    };

    /// <summary>Writes an error response; 503 carries Retry-After.</summary>
    public static Task WriteAsync(HttpContext http, int status, string message, string type, string? param = null, string? code = null)
    {
        http.Response.StatusCode = status;
        if (status == StatusCodes.Status503ServiceUnavailable)
        {
            http.Response.Headers.RetryAfter = "1";
        }

        return http.Response.WriteAsJsonAsync(Body(message, type, param, code));
    }
}
