namespace LMCacheSharp.Http;

/// <summary>How <see cref="PrometheusExporter"/> names and types the instruments it exports.</summary>
public enum PrometheusNaming
{
    /// <summary>
    /// The names lmcache serve, the router and the controller have exported since they first had /metrics (made then by
    /// prometheus-net's MeterAdapter): the meter's and the instrument's names joined by <c>_</c>, lower case, every other
    /// character <c>_</c> (meter <c>LMCacheSharp</c>, instrument <c>lmcache.num_lookup_requests</c>:
    /// <c>lmcachesharp_lmcache_num_lookup_requests</c>). Counters are exported as gauges, without a <c>_total</c> suffix.
    /// </summary>
    MeterAndInstrument,

    /// <summary>
    /// The instrument's name alone, with Prometheus's conventions: counters are counters named <c>NAME_total</c>
    /// (instrument <c>lmcache_server.hits</c>: <c>lmcache_server_hits_total</c>). The cache server's names.
    /// </summary>
    Instrument,
}
