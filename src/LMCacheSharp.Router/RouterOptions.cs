using Microsoft.Extensions.Logging;

namespace LMCacheSharp.Router;

/// <summary>How the router picks an instance for a request (<c>--policy</c>; the names are a contract).</summary>
public enum RoutingPolicyKind
{
    /// <summary><c>kv-aware</c>: the instance whose memory tier holds the longest prefix of the prompt, weighed against load.</summary>
    KvAware,

    /// <summary><c>round-robin</c>: each healthy instance in turn.</summary>
    RoundRobin,

    /// <summary><c>session</c>: sticky by the <c>X-Session-Id</c> header or the request's <c>user</c> field (consistent hashing).</summary>
    Session,

    /// <summary><c>least-loaded</c>: the instance with the fewest requests in flight and queued.</summary>
    LeastLoaded,
}

/// <summary>Settings of <c>lmcache router</c>. Every setting documents its default, unit and range; <see cref="GetErrors"/> checks them all.</summary>
public sealed class RouterOptions
{
    /// <summary>Largest request body the router buffers to route on (bytes). Default 32 MiB, as <c>lmcache serve</c>; 1 KiB..1 GiB.</summary>
    public long MaxBodyBytes { get; set; } = 32L << 20;

    /// <summary>
    /// The instances' base URLs (<c>--instances URL,URL,...</c>): http or https, no path, query or fragment; 1..1024. Give either
    /// this or <see cref="Controller"/>, not both.
    /// </summary>
    public IReadOnlyList<Uri> Instances { get; set; } = [];

    /// <summary>
    /// The fleet controller (<c>--controller URL</c>, an <c>lmcache controller</c>): the instances are those registered there
    /// (<c>GET /instances</c>, every <see cref="ControllerInterval"/>), kv-aware asks its <c>POST /lookup</c> once per request,
    /// and the router reports its decisions to <c>POST /router/report</c>. An http(s) URL without query or fragment. Default
    /// null. Give either this or <see cref="Instances"/>, not both.
    /// </summary>
    public Uri? Controller { get; set; }

    /// <summary>
    /// The controller's <c>--auth-token</c> (<c>--controller-token</c>, also <c>LMCACHE_CONTROLLER_TOKEN</c>), sent as the bearer
    /// token on every call to the controller. Default null (none); only with <see cref="Controller"/>.
    /// </summary>
    public string? ControllerToken { get; set; }

    /// <summary>
    /// With <see cref="Controller"/>: time between refreshes of the instance list (<c>GET /instances</c>) and decision reports
    /// (<c>POST /router/report</c>) (<c>--controller-interval</c>); after a failed controller lookup, kv-aware asks the instances
    /// directly for this long before trying the controller again. Default 2 s (the controller's heartbeat interval); 0.05..3600 s.
    /// </summary>
    public TimeSpan ControllerInterval { get; set; } = TimeSpan.FromSeconds(2);

    /// <summary>
    /// Prefill/decode disaggregation (<c>--pd</c>): each completion request first goes, with max_tokens 1 and no stream, to an
    /// instance whose /load reports role prefill (it answers once the prompt's KV is in the shared store), then as sent to one
    /// whose role is decode, which restores that KV and generates. Instances of role both serve either step when no instance
    /// has the role; a failed prefill step is logged and the decode instance prefills itself. The policy picks within each
    /// group. Default false.
    /// </summary>
    public bool PrefillDecode { get; set; }

    /// <summary>
    /// With <see cref="PrefillDecode"/> (<c>--pd-min-tokens</c>): a request whose prompt the chosen decode instance would have to
    /// prefill fewer than this many tokens of (its <c>/lookup</c> over every tier, within <see cref="LookupTimeout"/>) skips the
    /// prefill step and is prefilled where it decodes, as NVIDIA Dynamo's conditional disaggregation does: a short prefill costs
    /// the decode batch less than the round trip through the prefill instance and the store, and short requests never queue
    /// behind long prompts there. 0 sends every request through the prefill step. Default 256 tokens (one LMCache chunk); 0..1,048,576.
    /// </summary>
    public int PdMinTokens { get; set; } = 256;

    /// <summary>The routing policy (<c>--policy</c>). Default <see cref="RoutingPolicyKind.KvAware"/>.</summary>
    public RoutingPolicyKind Policy { get; set; } = RoutingPolicyKind.KvAware;

    /// <summary>Time between health probes of each instance (<c>--health-interval</c>, GET /health, /v1/models and /load). Default 2 s; 0.05..3600 s.</summary>
    public TimeSpan HealthInterval { get; set; } = TimeSpan.FromSeconds(2);

    /// <summary>How long a health probe may take before the instance counts as down. Default 2 s; 0.05..60 s.</summary>
    public TimeSpan HealthTimeout { get; set; } = TimeSpan.FromSeconds(2);

    /// <summary>
    /// How long kv-aware waits for the instances' /lookup answers (<c>--lookup-timeout</c>); an instance that has not answered
    /// by then counts as holding nothing. With <see cref="Controller"/>, also how long it waits for the controller's one answer
    /// before asking the instances instead (so at worst twice this). Default 50 ms; 1 ms..10 s.
    /// </summary>
    public TimeSpan LookupTimeout { get; set; } = TimeSpan.FromMilliseconds(50);

    /// <summary>
    /// kv-aware's near-tie band (<c>--kv-tie-tokens</c>): instances whose cached prefix is within this many tokens of the longest
    /// count as holding the longest, so load decides among them. Default 256 tokens (one LMCache chunk); 0..1,048,576.
    /// </summary>
    public int KvTieTokens { get; set; } = 256;

    /// <summary>
    /// kv-aware's weight of load against cached tokens (<c>--kv-load-weight</c>): each request in flight or queued on an instance
    /// costs as much as this many cached tokens it would save. Default 256 tokens per request; 0..1,048,576 (0: load only breaks exact ties).
    /// </summary>
    public int KvLoadWeightTokens { get; set; } = 256;

    /// <summary>
    /// Seconds a forwarded request may go without progress (no response headers yet, or no response bytes) before it fails with
    /// 504 (<c>--request-timeout</c>). Default 600 s; 1..86400 s.
    /// </summary>
    public TimeSpan RequestTimeout { get; set; } = TimeSpan.FromSeconds(600);

    /// <summary>Log level: one line per request at Information. Default Information.</summary>
    public LogLevel LogLevel { get; set; } = LogLevel.Information;

    /// <summary>Every problem with the settings, each as "--flag: message"; empty when valid.</summary>
    public IReadOnlyList<string> GetErrors()
    {
        var errors = new List<string>();
        if (MaxBodyBytes is < 1024 or > 1L << 30)
        {
            errors.Add($"--max-body-size: must be 1KB..1GB, got {MaxBodyBytes} bytes");
        }

        if (Controller is null && Instances.Count == 0)
        {
            errors.Add("--instances or --controller: give one: the instances' URLs (--instances http://127.0.0.1:8001,http://127.0.0.1:8002) or the controller's (--controller http://127.0.0.1:9300)");
        }
        else if (Controller is not null && Instances.Count > 0)
        {
            errors.Add("--instances and --controller: give one, not both (with --controller the instances are those registered with the controller)");
        }
        else if (Instances.Count > 1024)
        {
            errors.Add($"--instances: give 1..1024 instance URLs (comma-separated), got {Instances.Count}");
        }

        if (Controller is not null && CheckController(Controller) is { } controllerProblem)
        {
            errors.Add("--controller: " + controllerProblem);
        }

        if (Controller is null && ControllerToken is not null)
        {
            errors.Add("--controller-token: only with --controller");
        }

        foreach (var url in Instances)
        {
            if (CheckInstance(url) is { } problem)
            {
                errors.Add("--instances: " + problem);
            }
        }

        var duplicates = Instances.GroupBy(u => Key(u)).Where(g => g.Count() > 1).Select(g => g.Key).ToList();
        if (duplicates.Count > 0)
        {
            errors.Add("--instances: listed more than once: " + string.Join(", ", duplicates));
        }

        Range(errors, "--health-interval", HealthInterval, 0.05, 3600);
        Range(errors, "--health-timeout", HealthTimeout, 0.05, 60);
        Range(errors, "--lookup-timeout", LookupTimeout, 0.001, 10);
        Range(errors, "--request-timeout", RequestTimeout, 1, 86400);
        Range(errors, "--controller-interval", ControllerInterval, 0.05, 3600);
        if (KvTieTokens is < 0 or > 1 << 20)
        {
            errors.Add($"--kv-tie-tokens: must be 0..1048576 tokens, got {KvTieTokens}");
        }

        if (KvLoadWeightTokens is < 0 or > 1 << 20)
        {
            errors.Add($"--kv-load-weight: must be 0..1048576 tokens per request, got {KvLoadWeightTokens}");
        }

        if (PdMinTokens is < 0 or > 1_048_576)
        {
            errors.Add($"--pd-min-tokens: must be 0..1048576 tokens, got {PdMinTokens}");
        }

        return errors;
    }

    /// <summary>Throws <see cref="ArgumentException"/> listing every problem of <see cref="GetErrors"/>.</summary>
    public void Validate()
    {
        var errors = GetErrors();
        if (errors.Count > 0)
        {
            throw new ArgumentException("Invalid router options:" + Environment.NewLine + string.Join(Environment.NewLine, errors.Select(e => "  " + e)));
        }
    }

    /// <summary>The policy named <paramref name="name"/> (kv-aware, round-robin, session, least-loaded), or null.</summary>
    public static RoutingPolicyKind? ParsePolicy(string? name) => name?.Trim().ToLowerInvariant() switch
    {
        "kv-aware" => RoutingPolicyKind.KvAware,
        "round-robin" => RoutingPolicyKind.RoundRobin,
        "session" => RoutingPolicyKind.Session,
        "least-loaded" => RoutingPolicyKind.LeastLoaded,
        _ => null,
    };

    /// <summary>The contract name of a policy (<c>kv-aware</c>, <c>round-robin</c>, <c>session</c>, <c>least-loaded</c>).</summary>
    public static string PolicyName(RoutingPolicyKind kind) => kind switch
    {
        RoutingPolicyKind.KvAware => "kv-aware",
        RoutingPolicyKind.RoundRobin => "round-robin",
        RoutingPolicyKind.Session => "session",
        RoutingPolicyKind.LeastLoaded => "least-loaded",
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, null),
    };

    /// <summary>
    /// Parses a comma-separated list of instance URLs. Every entry that is not an absolute http(s) URL is added to
    /// <paramref name="problems"/> (named); a bare host:port gets http://.
    /// </summary>
    public static IReadOnlyList<Uri> ParseInstances(string? list, ICollection<string> problems)
    {
        ArgumentNullException.ThrowIfNull(problems);
        var urls = new List<Uri>();
        foreach (var part in (list ?? "").Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            var text = part.Contains("://", StringComparison.Ordinal) ? part : "http://" + part;
            if (!Uri.TryCreate(text, UriKind.Absolute, out var url))
            {
                problems.Add($"--instances: '{part}' is not a URL (http://host:port)");
                continue;
            }

            if (CheckInstance(url) is { } problem)
            {
                problems.Add("--instances: " + problem);
                continue;
            }

            urls.Add(url);
        }

        return urls;
    }

    /// <summary>The form an instance URL is named by in metrics, logs and /health: scheme://host:port, no trailing slash.</summary>
    public static string Key(Uri url)
    {
        ArgumentNullException.ThrowIfNull(url);
        return url.GetLeftPart(UriPartial.Authority);
    }

    /// <summary>
    /// Parses <c>--controller</c>: an absolute http(s) URL (a bare host:port gets http://); a bad one is added to
    /// <paramref name="problems"/> and the result is null.
    /// </summary>
    public static Uri? ParseController(string? text, ICollection<string> problems)
    {
        ArgumentNullException.ThrowIfNull(problems);
        if (string.IsNullOrWhiteSpace(text))
        {
            problems.Add("--controller: give the controller's URL, e.g. http://127.0.0.1:9300");
            return null;
        }

        var trimmed = text.Trim();
        var withScheme = trimmed.Contains("://", StringComparison.Ordinal) ? trimmed : "http://" + trimmed;
        if (!Uri.TryCreate(withScheme, UriKind.Absolute, out var url))
        {
            problems.Add($"--controller: '{trimmed}' is not a URL (http://host:9300)");
            return null;
        }

        if (CheckController(url) is { } problem)
        {
            problems.Add("--controller: " + problem);
            return null;
        }

        return url;
    }

    private static string? CheckController(Uri url)
    {
        if (!url.IsAbsoluteUri || url.Scheme is not ("http" or "https"))
        {
            return $"'{url}' must be an http:// or https:// URL such as http://127.0.0.1:9300";
        }

        return url.Query.Length > 0 || url.Fragment.Length > 0 ? $"'{url}' must have no query or fragment (the router adds /instances, /lookup, ...)" : null;
    }

    private static string? CheckInstance(Uri url)
    {
        if (!url.IsAbsoluteUri || url.Scheme is not ("http" or "https"))
        {
            return $"'{url}' must be an http:// or https:// URL";
        }

        if (url.AbsolutePath != "/" || url.Query.Length > 0 || url.Fragment.Length > 0)
        {
            return $"'{url}' must be a base URL with no path, query or fragment (the router adds /v1/...)";
        }

        return null;
    }

    private static void Range(List<string> errors, string flag, TimeSpan value, double min, double max)
    {
        if (value.TotalSeconds < min || value.TotalSeconds > max)
        {
            errors.Add($"{flag}: must be {min.ToString(System.Globalization.CultureInfo.InvariantCulture)}..{max.ToString(System.Globalization.CultureInfo.InvariantCulture)} s, got {value.TotalSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture)}");
        }
    }
}
