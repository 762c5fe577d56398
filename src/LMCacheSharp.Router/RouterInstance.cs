using System.Text.Json.Nodes;

namespace LMCacheSharp.Router;

/// <summary>An instance's own account of its load (<c>GET /load</c> or the <c>load</c> of a /lookup answer).</summary>
/// <param name="InFlight">Requests decoding now (holding a sequence).</param>
/// <param name="Queued">Requests waiting for a sequence.</param>
public readonly record struct InstanceLoad(int InFlight, int Queued)
{
    /// <summary>Requests the instance is running or holding.</summary>
    public int Total => InFlight + Queued;
}

/// <summary>What the last health probe of an instance found. Immutable: the monitor swaps a new one in.</summary>
/// <param name="Healthy">Whether requests may go there.</param>
/// <param name="Models">The model cards of its /v1/models (kept from the last good probe while it is down).</param>
/// <param name="Load">Its reported load, or null when it does not report one (not an lmcache serve).</param>
/// <param name="Reason">Why it is down, or null.</param>
/// <param name="Probed">Whether a probe has finished (false before the first one).</param>
/// <param name="Role">Its <c>serve --role</c> as its /load reports it: both, prefill or decode ("both" when it reports none).</param>
public sealed record InstanceStatus(bool Healthy, IReadOnlyList<JsonObject> Models, InstanceLoad? Load, string? Reason, bool Probed, string Role = "both")
{
    /// <summary>Before the first probe: not routable, no models known.</summary>
    public static InstanceStatus Unknown { get; } = new(false, [], null, "not probed yet", false);

    /// <summary>Whether the instance serves <paramref name="model"/> (by id in its /v1/models).</summary>
    public bool Serves(string model) => Models.Any(m => m["id"]?.GetValue<string>() == model);
}

/// <summary>One backend instance: its URL, health and load as the router sees them. Thread-safe.</summary>
public sealed class RouterInstance
{
    private InstanceStatus _status = InstanceStatus.Unknown;
    private int _inFlight;
    private volatile string? _controllerReason;
    private volatile string? _controllerId;

    /// <summary>Creates the instance at <paramref name="url"/> (a base URL: scheme, host, port).</summary>
    public RouterInstance(Uri url)
    {
        ArgumentNullException.ThrowIfNull(url);
        Url = url;
        Name = RouterOptions.Key(url);
    }

    /// <summary>The base URL.</summary>
    public Uri Url { get; }

    /// <summary>scheme://host:port: the name in metrics, logs and /health, and the prefix requests are forwarded to.</summary>
    public string Name { get; }

    /// <summary>What the last probe found (or a forwarding failure since).</summary>
    public InstanceStatus Status => Volatile.Read(ref _status);

    /// <summary>Whether requests may go there now: the router's own probe found it healthy, and the controller (with <c>--controller</c>) does not report it unhealthy.</summary>
    public bool Healthy => Status.Healthy && _controllerReason is null;

    /// <summary>With <c>--controller</c>: why the controller reports the instance unhealthy, or null (also without a controller).</summary>
    public string? ControllerReason => _controllerReason;

    /// <summary>With <c>--controller</c>: the id the controller gave the instance ("i1", ...), or null.</summary>
    public string? ControllerId => _controllerId;

    /// <summary>Why it is not routable now (the controller's reason first), or null when it is.</summary>
    public string? Reason => _controllerReason ?? Status.Reason;

    /// <summary>Requests this router has forwarded there that have not finished.</summary>
    public int InFlight => Volatile.Read(ref _inFlight);

    /// <summary>
    /// The load the policies weigh: the larger of the router's own in-flight count (exact, immediate) and the instance's last
    /// reported running + queued requests (which also counts other clients, but is as old as the last probe). Not the sum:
    /// the router's own requests are in the instance's count too.
    /// </summary>
    public int Load(InstanceLoad? reported = null) => Math.Max(InFlight, (reported ?? Status.Load)?.Total ?? 0);

    /// <summary>Counts a request forwarded there; dispose the result when it finishes.</summary>
    internal InFlightScope Begin()
    {
        Interlocked.Increment(ref _inFlight);
        return new InFlightScope(this);
    }

    /// <summary>Records what the controller's <c>GET /instances</c> said of the instance (<see cref="ControllerLink"/>).</summary>
    internal void SetController(string? id, string? unhealthyReason)
    {
        _controllerId = id;
        _controllerReason = unhealthyReason;
    }

    /// <summary>Replaces the status (the health monitor).</summary>
    internal void SetStatus(InstanceStatus status) => Volatile.Write(ref _status, status);

    /// <summary>Takes the instance out after a failed request (connection refused or reset): the next good probe brings it back.</summary>
    /// <returns>Whether it was healthy until now.</returns>
    internal bool MarkDown(string reason)
    {
        var current = Status;
        SetStatus(current with { Healthy = false, Reason = reason });
        return current.Healthy;
    }

    /// <summary>Ends one in-flight request when disposed.</summary>
    internal readonly struct InFlightScope(RouterInstance instance) : IDisposable
    {
        /// <inheritdoc />
        public void Dispose() => Interlocked.Decrement(ref instance._inFlight);
    }
}
