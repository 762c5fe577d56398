using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Diagnostics;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace LMCacheSharp.Http;

/// <summary>
/// Errors in OpenAI's shape, <c>{"error": {"message", "type", "param", "code"}}</c>: the one way lmcache serve, the router
/// and the controller answer a request they refuse or fail.
/// </summary>
public static partial class OpenAiErrors
{
    /// <summary>The error object; <paramref name="code"/> defaults to <paramref name="type"/>.</summary>
    public static JsonObject Body(string message, string type, string? param = null, string? code = null) => new()
    {
        ["error"] = new JsonObject { ["message"] = message, ["type"] = type, ["param"] = param, ["code"] = code ?? type },
    };

    /// <summary>The error type OpenAI uses for <paramref name="status"/>: authentication_error, server_error or invalid_request_error.</summary>
    public static string TypeOf(int status) => status switch
    {
        401 => "authentication_error",
        >= 500 => "server_error",
        _ => "invalid_request_error",
    };

    /// <summary>Writes an error response; 429 and 503 carry <c>Retry-After: 1</c>.</summary>
    public static Task WriteAsync(HttpContext http, int status, string message, string? type = null, string? param = null, string? code = null)
    {
        ArgumentNullException.ThrowIfNull(http);
        http.Response.StatusCode = status;
        if (status is StatusCodes.Status429TooManyRequests or StatusCodes.Status503ServiceUnavailable)
        {
            http.Response.Headers.RetryAfter = "1";
        }

        return http.Response.WriteAsJsonAsync(Body(message, type ?? TypeOf(status), param, code));
    }

    /// <summary>
    /// Routing's bare 404 and 405, a bad HTTP request (Kestrel's limits) and any unhandled exception answer in OpenAI's
    /// shape: 404 <c>not_found</c> naming <paramref name="endpoints"/>, 405 <c>method_not_allowed</c>, the request's own
    /// status, or 500 <c>server_error</c> (logged under <paramref name="loggerCategory"/>, never shown to the client).
    /// </summary>
    public static void UseOpenAiErrors(this WebApplication app, string endpoints, string loggerCategory)
    {
        ArgumentNullException.ThrowIfNull(app);
        app.UseStatusCodePages(async context =>
        {
            var http = context.HttpContext;
            if (http.Response.StatusCode is 404 or 405)
            {
                var notFound = http.Response.StatusCode == 404;
                await WriteAsync(http, http.Response.StatusCode,
                    notFound ? $"no endpoint {http.Request.Path} (see {endpoints})" : $"{http.Request.Method} is not allowed on {http.Request.Path}",
                    "invalid_request_error", code: notFound ? "not_found" : "method_not_allowed").ConfigureAwait(false);
            }
        });
        app.UseExceptionHandler(error => error.Run(async http =>
        {
            var e = http.Features.Get<IExceptionHandlerFeature>()?.Error;
            if (e is BadHttpRequestException bad)
            {
                await WriteAsync(http, bad.StatusCode, bad.Message, "invalid_request_error").ConfigureAwait(false);
                return;
            }

            LogUnhandled(http.RequestServices.GetRequiredService<ILoggerFactory>().CreateLogger(loggerCategory), e, http.Request.Path.Value);
            await WriteAsync(http, 500, "internal server error", "server_error").ConfigureAwait(false);
        }));
    }

    [LoggerMessage(Level = LogLevel.Error, Message = "unhandled error on {Path}")]
    private static partial void LogUnhandled(ILogger logger, Exception? exception, string? path);
}
