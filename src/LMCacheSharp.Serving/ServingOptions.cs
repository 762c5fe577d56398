namespace LMCacheSharp.Serving;

/// <summary>What an instance does in a prefill/decode-disaggregated fleet (<c>serve --role</c>; the names are a contract).</summary>
public enum ServeRole
{
    /// <summary><c>both</c>: prefills and decodes (the default; a colocated instance).</summary>
    Both,

    /// <summary>
    /// <c>prefill</c>: every request generates at most one token, and its answer waits until the prompt's KV is in the
    /// shared store (the cache's remote tier), so that a decode instance can restore it. Needs the cache and a remote tier.
    /// </summary>
    Prefill,

    /// <summary>
    /// <c>decode</c>: serves as usual; in a <c>router --pd</c> fleet its requests come after a prefill instance stored the
    /// prompt's KV, so it prefills only the uncached tail. Needs the cache and a remote tier.
    /// </summary>
    Decode,
}

/// <summary>Options of <c>lmcache serve</c>. Every value is validated by <see cref="Validate"/>.</summary>
public sealed class ServingOptions
{
    /// <summary>GGUF model path. Null: the built-in default model (random weights), generated on first use.</summary>
    public string? ModelPath { get; set; }

    /// <summary>Name the model is served under (/v1/models). Default: the file name without extension.</summary>
    public string? ModelName { get; set; }

    /// <summary>
    /// KV cells of the context, shared by all sequences; range 64..1048576. Default null: <see cref="DefaultContextSize"/>,
    /// or the model's trained context when that is smaller.
    /// </summary>
    public int? ContextSize { get; set; }

    /// <summary>The context size when none is given and the model was trained on at least this many tokens.</summary>
    public const int DefaultContextSize = 4096;

    /// <summary>Requests decoded at once, one sequence each. Default 4; range 1..64.</summary>
    public int MaxConcurrentRequests { get; set; } = 4;

    /// <summary>Requests that may wait for a sequence; beyond it requests get 429. Default 64; range 0..100000.</summary>
    public int MaxQueuedRequests { get; set; } = 64;

    /// <summary>Tokens per decode call (llama.cpp n_batch). Default 512; range 16..65536.</summary>
    public int BatchSize { get; set; } = 512;

    /// <summary>CPU threads for llama.cpp. Default: the processor count.</summary>
    public int Threads { get; set; } = Environment.ProcessorCount;

    /// <summary>Flash attention: null lets the server decide (off on CPU for tiny head sizes). Default null.</summary>
    public bool? FlashAttention { get; set; }

    /// <summary>max_tokens when a request gives none. Default 256; range 1..1048576.</summary>
    public int DefaultMaxTokens { get; set; } = 256;

    /// <summary>Use the KV cache (lookup, restore, store). Default true; false serves plain llama.cpp (the baseline).</summary>
    public bool EnableCache { get; set; } = true;

    /// <summary>
    /// One KV cache shared by all sequences (<c>--kv-unified on</c>, the default): a request may use the whole context, and
    /// sequences share prefix cells in place (<see cref="EnableInContextSharing"/>). Off: a KV stream per sequence, each of
    /// <see cref="ContextSize"/> / <see cref="MaxConcurrentRequests"/> cells, so that attention runs over a request's own
    /// cells only (measured: prefill and decode of 4 concurrent ~800-token requests on stories260K 2.7x faster); no in-place
    /// sharing (a shared prefix comes from the cache tiers instead).
    /// </summary>
    public bool KvUnified { get; set; } = true;

    /// <summary>Reuse KV of other sequences in the same context that share a prefix. Default true. Needs <see cref="KvUnified"/>.</summary>
    public bool EnableInContextSharing { get; set; } = true;

    /// <summary>
    /// /health reports 503 when the inference loop has made no progress for this long while requests are pending.
    /// Default 60 s (one prefill step of a large model on a slow CPU takes seconds); range 1 s..1 h.
    /// </summary>
    public TimeSpan StallTimeout { get; set; } = TimeSpan.FromSeconds(60);

    /// <summary>
    /// Model layers offloaded to the GPU (llama.cpp's n_gpu_layers; a number above the model's layers offloads all).
    /// Default 0; range 0..10000. Needs a GPU build of llama.cpp (<c>--llama-native</c>); the CPU build ignores it.
    /// </summary>
    public int GpuLayers { get; set; }

    /// <summary>The instance's role (<c>--role</c>). Default <see cref="ServeRole.Both"/>.</summary>
    public ServeRole Role { get; set; } = ServeRole.Both;

    /// <summary>
    /// With <see cref="ServeRole.Prefill"/>: the longest an answer waits for the prompt's KV to reach the shared store before it
    /// goes out anyway (the decode instance then prefills what is missing). Default 30 s; range 0.1 s..10 min.
    /// </summary>
    public TimeSpan PrefillStoreTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Where start-up work (generating the default model, loading the model, scanning the disk cache) reports progress, or
    /// null. Reports come synchronously on the thread doing the work. Default null.
    /// </summary>
    public IProgress<StartupProgress>? Progress { get; set; }

    /// <summary>Minimum level logged. Default Information: one line per request; Debug adds ASP.NET Core's and llama.cpp's lines.</summary>
    public Microsoft.Extensions.Logging.LogLevel LogLevel { get; set; } = Microsoft.Extensions.Logging.LogLevel.Information;

    /// <summary>Every problem, each naming its option and range.</summary>
    public IReadOnlyList<string> GetErrors()
    {
        var errors = new List<string>();
        if (ContextSize is not null and (< 64 or > 1_048_576))
        {
            errors.Add($"--ctx-size: must be 64..1048576 tokens, got {ContextSize}");
        }

        if (MaxConcurrentRequests is < 1 or > 64)
        {
            errors.Add($"--max-concurrent: must be 1..64, got {MaxConcurrentRequests}");
        }
        else if (!KvUnified && (ContextSize ?? DefaultContextSize) / MaxConcurrentRequests < 64)
        {
            errors.Add($"--kv-unified off: each of the {MaxConcurrentRequests} sequences gets --ctx-size / --max-concurrent cells, which must be at least 64, got {(ContextSize ?? DefaultContextSize) / MaxConcurrentRequests}");
        }

        if (MaxQueuedRequests is < 0 or > 100_000)
        {
            errors.Add($"--max-queue: must be 0..100000, got {MaxQueuedRequests}");
        }

        if (BatchSize is < 16 or > 65536)
        {
            errors.Add($"--batch-size: must be 16..65536, got {BatchSize}");
        }

        if (BatchSize < MaxConcurrentRequests)
        {
            errors.Add($"--batch-size: must be at least --max-concurrent ({MaxConcurrentRequests}): every running request needs a place in each batch");
        }

        if (Threads is < 1 or > 1024)
        {
            errors.Add($"--threads: must be 1..1024, got {Threads}");
        }

        if (DefaultMaxTokens is < 1 or > 1_048_576)
        {
            errors.Add($"--default-max-tokens: must be 1..1048576, got {DefaultMaxTokens}");
        }

        if (GpuLayers is < 0 or > LlamaCpp.LlamaContextSettings.MaxGpuLayers)
        {
            errors.Add($"--gpu-layers: must be 0..{LlamaCpp.LlamaContextSettings.MaxGpuLayers}, got {GpuLayers}");
        }

        if (StallTimeout < TimeSpan.FromSeconds(1) || StallTimeout > TimeSpan.FromHours(1))
        {
            errors.Add($"--stall-timeout: must be 1..3600 seconds, got {StallTimeout.TotalSeconds}");
        }

        if (Role != ServeRole.Both && !EnableCache)
        {
            errors.Add($"--role {RoleName(Role)}: needs the cache (drop --no-cache) and a shared store (remote_url)");
        }

        if (PrefillStoreTimeout < TimeSpan.FromMilliseconds(100) || PrefillStoreTimeout > TimeSpan.FromMinutes(10))
        {
            errors.Add($"prefill store timeout: must be 0.1..600 seconds, got {PrefillStoreTimeout.TotalSeconds}");
        }

        if (ModelPath is not null && !File.Exists(ModelPath))
        {
            errors.Add($"--model: file not found: {ModelPath}");
        }

        return errors;
    }

    /// <summary>The role's name on the command line and in <c>GET /load</c>: both, prefill or decode.</summary>
    public static string RoleName(ServeRole role) => role switch
    {
        ServeRole.Prefill => "prefill",
        ServeRole.Decode => "decode",
        _ => "both",
    };

    /// <summary>Throws <see cref="ArgumentException"/> listing every problem.</summary>
    public void Validate()
    {
        var errors = GetErrors();
        if (errors.Count > 0)
        {
            throw new ArgumentException("Invalid serving options:" + Environment.NewLine + string.Join(Environment.NewLine, errors.Select(e => "  " + e)));
        }
    }
}
