using System.Diagnostics;
using System.Net;
using System.Text.Json;
using LMCacheSharp.Http;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Yarp.ReverseProxy.Forwarder;

namespace LMCacheSharp.Router;

/// <summary>
/// Forwards /v1/completions and /v1/chat/completions: buffers the body (at most <see cref="RouterOptions.MaxBodyBytes"/>), reads
/// the routing fields, lets the policy pick a healthy instance that serves the model, and forwards through YARP's
/// <see cref="IHttpForwarder"/> (responses, streams included, are copied as they arrive: no buffering). A request that fails
/// before any response byte reached the client (connection refused or reset, a 5xx) is retried once on another instance;
/// once bytes have been sent it never is (the client's stream ends, cut off).
/// </summary>
internal sealed class RouterProxy
{
    private readonly InstanceSet _instances;
    private readonly IRoutingPolicy _policy;
    private readonly IHttpForwarder _forwarder;
    private readonly HttpMessageInvoker _client;
    private readonly ForwarderRequestConfig _config;
    private readonly RouterOptions _options;
    private readonly RouterMetrics _metrics;
    private readonly ILogger _log;

    public RouterProxy(InstanceSet instances, IRoutingPolicy policy, IHttpForwarder forwarder, HttpMessageInvoker client,
        RouterOptions options, RouterMetrics metrics, ILogger log)
    {
        _instances = instances;
        _policy = policy;
        _forwarder = forwarder;
        _client = client;
        _options = options;
        _metrics = metrics;
        _log = log;
        _config = new ForwarderRequestConfig
        {
            ActivityTimeout = options.RequestTimeout,
            Version = HttpVersion.Version11,
            VersionPolicy = HttpVersionPolicy.RequestVersionOrLower,
        };
    }

    public async Task HandleAsync(HttpContext http)
    {
        var start = Stopwatch.GetTimestamp();
        var log = new RequestLog();
        try
        {
            await RouteAsync(http, log).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (http.RequestAborted.IsCancellationRequested)
        {
            // The client went away (during the lookups, or while its body was read): nothing to answer.
        }
        finally
        {
            if (_log.IsEnabled(LogLevel.Information))
            {
                _log.LogInformation("{Method} {Path} {Status} instance={Instance} prefill={Prefill} policy={Policy} predicted={Predicted} retried={Retried} total_ms={Total:F1}",
                    http.Request.Method, http.Request.Path.Value, http.RequestAborted.IsCancellationRequested && !http.Response.HasStarted ? 499 : http.Response.StatusCode,
                    log.Instance ?? "-", log.Prefill ?? "-", _policy.Name, log.Predicted?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "-", log.Retried ?? "-",
                    Stopwatch.GetElapsedTime(start).TotalMilliseconds);
            }
        }
    }

    /// <summary>What the request line logs.</summary>
    private sealed class RequestLog
    {
        public string? Instance { get; set; }

        public int? Predicted { get; set; }

        public string? Retried { get; set; }

        public string? Prefill { get; set; }
    }

    private async Task RouteAsync(HttpContext http, RequestLog log)
    {
        using var body = await BufferedBody.ReadAsync(http, _options.MaxBodyBytes).ConfigureAwait(false);
        if (body is null)
        {
            _metrics.Rejected("too_large");
            await OpenAiErrors.WriteAsync(http, StatusCodes.Status413PayloadTooLarge,
                $"the request body is larger than {_options.MaxBodyBytes} bytes, the router's limit", "invalid_request_error", null, "request_too_large").ConfigureAwait(false);
            return;
        }

        RoutingRequest request;
        try
        {
            request = RoutingRequest.Parse(http.Request.Path.Value ?? "", body.Memory, http.Request.Headers[RoutingRequest.SessionHeader].ToString());
        }
        catch (JsonException e)
        {
            _metrics.Rejected("bad_json");
            await OpenAiErrors.WriteAsync(http, StatusCodes.Status400BadRequest, $"the request body is not valid JSON: {e.Message}", "invalid_request_error")
                .ConfigureAwait(false);
            return;
        }

        var members = _instances.Current;
        var serving = request.Model is { } model ? members.Where(i => i.Status.Serves(model)).ToList() : [.. members];
        var healthy = serving.Where(i => i.Healthy).ToList();
        if (healthy.Count == 0)
        {
            await RefuseAsync(http, request, members).ConfigureAwait(false);
            return;
        }

        string? prefilledBy = null;
        List<RouterInstance>? prefillers = null;
        if (_options.PrefillDecode)
        {
            // The decode step goes to instances of role decode (else both); the prefill step, if any instance has role prefill.
            var decoders = serving.Where(i => i.Status.Role == "decode").ToList();
            serving = decoders.Any(i => i.Healthy) ? decoders : serving.Where(i => i.Status.Role == "both").ToList();
            healthy = serving.Where(i => i.Healthy).ToList();
            if (healthy.Count == 0)
            {
                _metrics.Rejected("no_decode_instance");
                await OpenAiErrors.WriteAsync(http, StatusCodes.Status503ServiceUnavailable,
                    "no healthy instance of role decode or both serves the request now (--pd); retry later", "server_error", null, "no_healthy_instance").ConfigureAwait(false);
                return;
            }

            prefillers = members.Where(i => i.Healthy && i.Status.Role == "prefill" && (request.Model is not { } m || i.Status.Serves(m))).ToList();
        }

        var decision = await _policy.ChooseAsync(request, healthy, http.RequestAborted).ConfigureAwait(false);
        if (prefillers is not null)
        {
            prefilledBy = await PrefillAsync(http, request, prefillers, decision.Instance, log).ConfigureAwait(false);
        }

        log.Predicted = decision.PredictedCachedTokens;
        var retried = (RouterInstance?)null;
        string? failure;
        while (true)
        {
            var instance = decision.Instance;
            log.Instance = instance.Name;
            // Another instance to retry on decides whether a 5xx is held back (retried) or passed to the client.
            var canRetry = retried is null && serving.Any(i => i != instance && i.Healthy);
            _metrics.Decision(_policy.Name, instance);
            failure = await ForwardAsync(http, request, body, decision, canRetry, prefilledBy).ConfigureAwait(false);
            if (failure is null || !canRetry)
            {
                break;
            }

            var rest = serving.Where(i => i != instance && i.Healthy).ToList();
            if (rest.Count == 0)
            {
                break;
            }

            _metrics.Retry(instance, failure);
            if (_log.IsEnabled(LogLevel.Warning))
            {
                _log.LogWarning("{Path}: {Instance} failed before answering ({Failure}); retrying once elsewhere", request.Path, instance.Name, failure);
            }

            retried = instance;
            log.Retried = instance.Name;
            decision = await _policy.ChooseAsync(request, rest, http.RequestAborted).ConfigureAwait(false);
        }

        if (failure is not null && !http.Response.HasStarted && !http.RequestAborted.IsCancellationRequested)
        {
            _metrics.Rejected("all_failed");
            var timedOut = failure == "timeout";
            await OpenAiErrors.WriteAsync(http, timedOut ? StatusCodes.Status504GatewayTimeout : StatusCodes.Status502BadGateway,
                $"instance {decision.Instance.Name} failed ({failure}){(retried is null ? "" : $" after {retried.Name} failed too")}", "server_error",
                null, timedOut ? "upstream_timeout" : "upstream_failed").ConfigureAwait(false);
        }
    }

    /// <summary>No healthy instance serves the request's model: 404 when none serves it at all, else 503.</summary>
    private async Task RefuseAsync(HttpContext http, RoutingRequest request, IReadOnlyList<RouterInstance> members)
    {
        var known = members.SelectMany(i => i.Status.Models).Select(m => m["id"]?.GetValue<string>()).OfType<string>().Distinct().ToList();
        if (request.Model is { } model && members.Any(i => i.Healthy) && !members.Any(i => i.Status.Serves(model)))
        {
            _metrics.Rejected("unknown_model");
            await OpenAiErrors.WriteAsync(http, StatusCodes.Status404NotFound,
                $"The model '{model}' does not exist; the instances serve {string.Join(", ", known.Select(k => $"'{k}'"))} (see /v1/models).",
                "invalid_request_error", "model", "model_not_found").ConfigureAwait(false);
            return;
        }

        _metrics.Rejected("no_healthy_instance");
        await OpenAiErrors.WriteAsync(http, StatusCodes.Status503ServiceUnavailable,
            request.Model is { } m ? $"no healthy instance serves '{m}' now; retry later" : "no instance is healthy now; retry later",
            "server_error", null, "no_healthy_instance").ConfigureAwait(false);
    }

    /// <summary>One attempt. Returns null when the response went to the client, else why it failed before any byte did.</summary>
    private async Task<string?> ForwardAsync(HttpContext http, RoutingRequest request, BufferedBody body, RoutingDecision decision, bool canRetry,
        string? prefilledBy)
    {
        var instance = decision.Instance;
        http.Request.Body = body.OpenRead();
        var transformer = new Transformer(instance.Name, canRetry, prefilledBy);
        var client = http.Response.Body;
        var tap = !request.Stream || request.IncludeUsage ? new UsageTap(client, request.Stream) : null;
        ForwarderError error;
        try
        {
            if (tap is not null)
            {
                http.Response.Body = tap;
            }

            using (instance.Begin())
            {
                error = await _forwarder.SendAsync(http, instance.Name, _client, _config, transformer).ConfigureAwait(false);
            }
        }
        finally
        {
            http.Response.Body = client;
        }

        if (transformer.HeldBack is { } status)
        {
            http.Response.Clear();
            _metrics.Response(instance, "5xx");
            return $"answered {status}";
        }

        if (error == ForwarderError.None)
        {
            var code = http.Response.StatusCode;
            _metrics.Response(instance, code switch { < 300 => "2xx", < 400 => "3xx", < 500 => "4xx", _ => "5xx" });
            if (code < 300 && tap?.ReadUsage() is { } usage)
            {
                _metrics.Usage(instance, usage.CachedTokens, decision.PredictedCachedTokens);
            }

            return null;
        }

        _metrics.Response(instance, "failed");
        if (http.Response.HasStarted || http.RequestAborted.IsCancellationRequested)
        {
            return null; // bytes went out (YARP cut the client's connection), or the client left: nothing to retry
        }

        var timedOut = error == ForwarderError.RequestTimedOut;
        var reason = http.Features.Get<IForwarderErrorFeature>()?.Exception?.GetBaseException().Message ?? error.ToString();
        http.Response.Clear();
        if (!timedOut && error is ForwarderError.Request or ForwarderError.RequestBodyDestination or ForwarderError.ResponseHeaders
            or ForwarderError.ResponseBodyDestination && instance.MarkDown($"a request failed: {reason}"))
        {
            _metrics.HealthChanged(instance, false);
            if (_log.IsEnabled(LogLevel.Warning))
            {
                _log.LogWarning("instance {Instance} is out until its next good health probe: {Reason}", instance.Name, reason);
            }
        }

        return timedOut ? "timeout" : reason;
    }

    /// <summary>
    /// The prompt tokens <paramref name="decoder"/> would have to prefill itself: its <c>/lookup</c> over every tier (what it
    /// would restore), within the lookup timeout; null when it does not answer in time (then the prefill step runs).
    /// </summary>
    private async Task<int?> UncachedTokensAsync(RouterInstance decoder, RoutingRequest request, CancellationToken cancellationToken)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(_options.LookupTimeout);
        try
        {
            var answer = await InstanceLookup.AskAsync(_client, decoder, request.Body, "memory,disk,remote", deadline.Token).ConfigureAwait(false);
            return Math.Max(0, answer.PromptTokens - answer.MostCached);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            return null;
        }
        catch (Exception e) when (e is HttpRequestException or JsonException or KeyNotFoundException or InvalidOperationException or FormatException or IOException)
        {
            return null;
        }
    }

    /// <summary>The response header that names the instance that answered (scheme://host:port).</summary>
    public const string InstanceHeader = "X-LMCache-Instance";

    /// <summary>With <c>--pd</c>: the response header that names the instance that prefilled the prompt (absent when none did).</summary>
    public const string PrefillInstanceHeader = "X-LMCache-Prefill-Instance";

    /// <summary>The fields a prefill step drops: it asks for one token, not streamed, and nothing the decode step reports.</summary>
    private static readonly string[] PrefillDropped = ["stream", "stream_options", "n", "logprobs", "top_logprobs", "echo", "max_completion_tokens", "best_of"];

    /// <summary>
    /// The prefill step of <c>--pd</c>: the request with max_tokens 1 and no stream goes to one of <paramref name="prefillers"/>
    /// (the policy picks), which answers once the prompt's KV is in the shared store. Returns the instance's name, or null
    /// when there was none or it failed: then the decode instance prefills itself (logged and counted, never an error).
    /// </summary>
    private async Task<string?> PrefillAsync(HttpContext http, RoutingRequest request, List<RouterInstance> prefillers, RouterInstance decoder, RequestLog log)
    {
        if (prefillers.Count == 0)
        {
            _metrics.Prefill("-", "none");
            return null;
        }

        if (_options.PdMinTokens > 0 && await UncachedTokensAsync(decoder, request, http.RequestAborted).ConfigureAwait(false) is { } uncached &&
            uncached < _options.PdMinTokens)
        {
            _metrics.Prefill(decoder.Name, "local");
            log.Prefill = "local";
            return null; // a short prefill costs the decode instance less than a round trip through the prefill instance and the store
        }

        byte[] body;
        try
        {
            if (System.Text.Json.Nodes.JsonNode.Parse(request.Body.Span) is not System.Text.Json.Nodes.JsonObject json)
            {
                return null; // not an object: the decode instance refuses it by name
            }

            foreach (var field in PrefillDropped)
            {
                json.Remove(field);
            }

            json["max_tokens"] = 1;
            body = JsonSerializer.SerializeToUtf8Bytes(json);
        }
        catch (JsonException)
        {
            return null;
        }

        var prefill = RoutingRequest.Parse(request.Path, body, request.SessionKey);
        var decision = await _policy.ChooseAsync(prefill, prefillers, http.RequestAborted).ConfigureAwait(false);
        var instance = decision.Instance;
        var start = Stopwatch.GetTimestamp();
        string outcome;
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(http.RequestAborted);
        timeout.CancelAfter(_options.RequestTimeout);
        try
        {
            using var message = new HttpRequestMessage(HttpMethod.Post, new Uri(instance.Url, request.Path))
            {
                Content = new ByteArrayContent(body),
            };
            message.Content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/json");
            if (http.Request.Headers.Authorization.ToString() is { Length: > 0 } auth)
            {
                message.Headers.TryAddWithoutValidation("Authorization", auth);
            }

            using (instance.Begin())
            using (var response = await _client.SendAsync(message, timeout.Token).ConfigureAwait(false))
            {
                await response.Content.LoadIntoBufferAsync(timeout.Token).ConfigureAwait(false);
                if (response.IsSuccessStatusCode)
                {
                    _metrics.Prefill(instance.Name, "ok", Stopwatch.GetElapsedTime(start));
                    log.Prefill = instance.Name;
                    return instance.Name;
                }

                outcome = $"answered {(int)response.StatusCode}";
            }
        }
        catch (OperationCanceledException) when (!http.RequestAborted.IsCancellationRequested)
        {
            outcome = "timeout";
        }
        catch (HttpRequestException e)
        {
            outcome = e.GetBaseException().Message;
        }

        _metrics.Prefill(instance.Name, outcome == "timeout" ? "timeout" : "error");
        if (_log.IsEnabled(LogLevel.Warning))
        {
            _log.LogWarning("{Path}: prefill on {Instance} failed ({Failure}); the decode instance prefills the prompt itself", request.Path, instance.Name, outcome);
        }

        return null;
    }

    /// <summary>
    /// YARP's default header copying, plus <see cref="InstanceHeader"/>; holds back a 5xx response (discards its body) when
    /// the request can be retried.
    /// </summary>
    private sealed class Transformer(string instance, bool holdBack5xx, string? prefilledBy) : HttpTransformer
    {
        /// <summary>The status of a response held back, or null.</summary>
        public int? HeldBack { get; private set; }

        public override async ValueTask<bool> TransformResponseAsync(HttpContext httpContext, HttpResponseMessage? proxyResponse, CancellationToken cancellationToken)
        {
            if (holdBack5xx && proxyResponse is { StatusCode: >= HttpStatusCode.InternalServerError })
            {
                HeldBack = (int)proxyResponse.StatusCode;
                return false;
            }

            var copy = await base.TransformResponseAsync(httpContext, proxyResponse, cancellationToken).ConfigureAwait(false);
            httpContext.Response.Headers[InstanceHeader] = instance;
            if (prefilledBy is not null)
            {
                httpContext.Response.Headers[PrefillInstanceHeader] = prefilledBy;
            }

            return copy;
        }
    }
}
