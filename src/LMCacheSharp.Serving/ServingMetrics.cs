using System.Diagnostics.Metrics;

namespace LMCacheSharp.Serving;

/// <summary>
/// Request metrics of the OpenAI server, on the meter <see cref="MeterName"/> (exported at /metrics as
/// <c>lmcachesharp_serving_lmcache_serving_*</c>, see docs/serving.md). A total also read in process
/// (<see cref="TotalPrefilledTokens"/>) is counted once, in a field its observable counter reports.
/// </summary>
public sealed class ServingMetrics : IDisposable
{
    /// <summary>The meter name.</summary>
    public const string MeterName = "LMCacheSharp.Serving";

    private readonly Meter _meter;
    private readonly Histogram<double> _ttft;
    private readonly Histogram<double> _tokensPerSecond;
    private readonly Counter<long> _promptTokens;
    private readonly Counter<long> _cachedTokens;
    private readonly Counter<long> _generatedTokens;
    private readonly Counter<long> _requests;
    private readonly UpDownCounter<long> _inFlight;
    private readonly Histogram<double> _restoreTime;
    private readonly Histogram<double> _prefillTime;
    private readonly Histogram<double> _queueTime;
    private readonly Histogram<double> _decodeTime;
    private long _totalPrefilled;

    /// <summary>Creates the instruments.</summary>
    public ServingMetrics(IMeterFactory? meterFactory = null)
    {
        _meter = meterFactory?.Create(MeterName) ?? new Meter(MeterName);
        _ttft = _meter.CreateHistogram<double>("lmcache_serving.time_to_first_token", "s", "Time from request arrival to the first generated token.",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60] });
        _tokensPerSecond = _meter.CreateHistogram<double>("lmcache_serving.generation_tokens_per_second", "{token}/s", "Decode speed of a request after its first token.");
        _promptTokens = _meter.CreateCounter<long>("lmcache_serving.prompt_tokens", "{token}", "Prompt tokens received.");
        _cachedTokens = _meter.CreateCounter<long>("lmcache_serving.cached_prompt_tokens", "{token}", "Prompt tokens not prefilled (from the cache or shared in context).");
        _meter.CreateObservableCounter("lmcache_serving.prefilled_tokens", () => Interlocked.Read(ref _totalPrefilled), "{token}", "Prompt tokens computed by prefill.");
        _generatedTokens = _meter.CreateCounter<long>("lmcache_serving.generation_tokens", "{token}", "Tokens generated.");
        _requests = _meter.CreateCounter<long>("lmcache_serving.requests", "{request}", "Finished requests by finish reason.");
        _inFlight = _meter.CreateUpDownCounter<long>("lmcache_serving.requests_in_flight", "{request}", "Requests queued or running.");
        var buckets = new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30] };
        _restoreTime = _meter.CreateHistogram<double>("lmcache_serving.restore_time", "s", "Writing a request's cached KV into its sequence.", advice: buckets);
        _prefillTime = _meter.CreateHistogram<double>("lmcache_serving.prefill_time", "s", "From the restore to the first token (prefill of the uncached tokens).", advice: buckets);
        _decodeTime = _meter.CreateHistogram<double>("lmcache_serving.decode_step_time", "s", "One llama_decode call of the inference loop (a batch of prompt and next tokens).", advice: buckets);
        _queueTime = _meter.CreateHistogram<double>("lmcache_serving.queue_time", "s", "From arrival to admission (lookup, waiting for a sequence).", advice: buckets);
    }

    private Func<double>? _loopAge;

    /// <summary>The meter holding the instruments.</summary>
    public Meter Meter => _meter;

    /// <summary>Exports <c>lmcache_serving_loop_progress_age_seconds</c>: seconds since the inference loop last made progress (0 when idle).</summary>
    internal void ObserveLoopProgressAge(Func<double> age)
    {
        if (Interlocked.Exchange(ref _loopAge, age) is null)
        {
            _meter.CreateObservableGauge("lmcache_serving.loop_progress_age", () => _loopAge?.Invoke() ?? 0, "s",
                "Seconds since the inference loop last finished a step while requests were pending (0 when idle).");
        }
    }

    /// <summary>Prompt tokens computed by prefill since start (in-process total).</summary>
    public long TotalPrefilledTokens => Interlocked.Read(ref _totalPrefilled);

    internal void Started() => _inFlight.Add(1);

    internal void FirstToken(TimeSpan ttft) => _ttft.Record(ttft.TotalSeconds);

    internal void Decoded(int tokens, TimeSpan time) => _decodeTime.Record(time.TotalSeconds, new KeyValuePair<string, object?>("batch", tokens <= 8 ? "decode" : "prefill"));

    internal void Timings(Inference.GenerationTimings t)
    {
        _restoreTime.Record(t.RestoreMs / 1000);
        _prefillTime.Record(t.PromptMs / 1000);
        _queueTime.Record(t.QueueMs / 1000);
    }

    internal void Prefilled(int tokens) => Interlocked.Add(ref _totalPrefilled, tokens);

    internal void Finished(string reason, int promptTokens, int cachedTokens, int generated, double decodeSeconds)
    {
        _inFlight.Add(-1);
        _requests.Add(1, new KeyValuePair<string, object?>("finish_reason", reason));
        _promptTokens.Add(promptTokens);
        _cachedTokens.Add(cachedTokens);
        _generatedTokens.Add(generated);
        if (generated > 1 && decodeSeconds > 0)
        {
            _tokensPerSecond.Record((generated - 1) / decodeSeconds);
        }
    }

    /// <inheritdoc />
    public void Dispose() => _meter.Dispose();
}
