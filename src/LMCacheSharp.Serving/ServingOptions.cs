namespace LMCacheSharp.Serving;

/// <summary>Options of <c>lmcache serve</c>. Every value is validated by <see cref="Validate"/>.</summary>
public sealed class ServingOptions
{
    /// <summary>GGUF model path. Null: the built-in default model (random weights), generated on first use.</summary>
    public string? ModelPath { get; set; }

    /// <summary>Name the model is served under (/v1/models). Default: the file name without extension.</summary>
    public string? ModelName { get; set; }

    /// <summary>KV cells of the context, shared by all sequences. Default 4096; range 64..1048576.</summary>
    public int ContextSize { get; set; } = 4096;

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

    /// <summary>Reuse KV of other sequences in the same context that share a prefix. Default true.</summary>
    public bool EnableInContextSharing { get; set; } = true;

    /// <summary>Every problem, each naming its option and range.</summary>
    public IReadOnlyList<string> GetErrors()
    {
        var errors = new List<string>();
        if (ContextSize is < 64 or > 1_048_576)
        {
            errors.Add($"--ctx-size: must be 64..1048576 tokens, got {ContextSize}");
        }

        if (MaxConcurrentRequests is < 1 or > 64)
        {
            errors.Add($"--max-concurrent: must be 1..64, got {MaxConcurrentRequests}");
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

        if (ModelPath is not null && !File.Exists(ModelPath))
        {
            errors.Add($"--model: file not found: {ModelPath}");
        }

        return errors;
    }

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
