using System.Text;
using LLama;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Metrics;
using LMCacheSharp.Core.Storage;
using LMCacheSharp.LlamaCpp;
using LMCacheSharp.Remote;
using LMCacheSharp.Serving.OpenAi;
using Microsoft.Extensions.Logging;

namespace LMCacheSharp.Serving.Inference;

/// <summary>
/// One model, one llama.cpp context, its KV cache and the scheduler that runs requests on it. Thread-safe: any number of
/// callers submit; one thread computes.
/// </summary>
public sealed class InferenceService : IAsyncDisposable
{
    private readonly LLamaWeights _weights;
    private readonly LLamaContext _context;
    private readonly InferenceScheduler _scheduler;
    private readonly ServingOptions _options;
    private readonly ChatPromptFormatter _chat;
    private readonly ServingMetrics _metrics;

    private InferenceService(string modelPath, string modelName, LLamaWeights weights, LLamaContext context, LlamaKvCache? cache,
        ServingOptions options, ServingMetrics metrics, ILogger logger)
    {
        ModelPath = modelPath;
        ModelName = modelName;
        Logger = logger;
        _weights = weights;
        _context = context;
        Cache = cache;
        _options = options;
        _metrics = metrics;
        _chat = new ChatPromptFormatter(weights);
        _scheduler = new InferenceScheduler(weights, context, cache, options, metrics, logger);
        VocabularySize = weights.Vocab.Count;
        _pieces = TokenPieces(weights);
        MaxTokenBytes = Math.Max(1, _pieces.Max(p => p.Length));
    }

    private readonly byte[][] _pieces;

    /// <summary>The UTF-8 bytes of a token's piece, special tokens rendered (OpenAI's logprobs <c>bytes</c>).</summary>
    public ReadOnlySpan<byte> TokenBytes(int token) => _pieces[token];

    /// <summary>Tokens in the model's vocabulary; token-id prompts must lie in 0..VocabularySize-1.</summary>
    public int VocabularySize { get; }

    /// <summary>Bytes of the longest token piece (special tokens included): no token covers more text than this.</summary>
    public int MaxTokenBytes { get; }

    /// <summary>
    /// The most UTF-8 bytes a prompt can have and still fit the context: every token covers at most
    /// <see cref="MaxTokenBytes"/> bytes, so a longer text needs more tokens than the context holds. Longer prompts are
    /// rejected before they are tokenized.
    /// </summary>
    public long MaxPromptBytes => (long)ContextSize * MaxTokenBytes;

    /// <summary>
    /// The largest request body accepted, in bytes: room for a prompt of <see cref="MaxPromptBytes"/> written entirely in
    /// JSON escapes (\uXXXX: 6 bytes a character) plus 1 MiB for the rest, at most <see cref="OpenAiEndpoints.MaxBodyBytes"/>.
    /// </summary>
    public long MaxRequestBodyBytes => Math.Min(OpenAiEndpoints.MaxBodyBytes, MaxPromptBytes * 6 + (1L << 20));

    /// <summary>
    /// Whether the inference loop is healthy: not dead, and not stuck on a step for longer than
    /// <see cref="ServingOptions.StallTimeout"/> while work is pending; with the seconds since its last progress (0 when idle).
    /// </summary>
    public (bool Healthy, string Status, double ProgressAgeSeconds) GetLoopHealth()
    {
        var pending = _scheduler.Pending;
        var age = pending > 0 ? System.Diagnostics.Stopwatch.GetElapsedTime(_scheduler.LastProgressTimestamp) : TimeSpan.Zero;
        if (_scheduler.LoopDead)
        {
            return (false, "inference loop stopped", age.TotalSeconds);
        }

        return pending > 0 && age > _options.StallTimeout
            ? (false, $"inference loop made no progress for {age.TotalSeconds:F0} s with {pending} requests pending", age.TotalSeconds)
            : (true, "ok", age.TotalSeconds);
    }

    /// <summary>Test hook: runs at the start of every scheduler step, on the inference thread.</summary>
    internal Action? BeforeSchedulerStep
    {
        get => _scheduler.BeforeStep;
        set => _scheduler.BeforeStep = value;
    }

    /// <summary>Where the service logs.</summary>
    internal ILogger Logger { get; }

    /// <summary>The GGUF file served.</summary>
    public string ModelPath { get; }

    /// <summary>The name the model is served under.</summary>
    public string ModelName { get; }

    /// <summary>KV cells one request may use: the whole context, or with <see cref="ServingOptions.KvUnified"/> off its sequence's stream.</summary>
    public int ContextSize => CellsPerRequest(_context.ContextSize, _options);

    /// <summary>Cells of one request in a context of <paramref name="contextCells"/> (llama.cpp splits them evenly between per-sequence streams).</summary>
    internal static int CellsPerRequest(uint contextCells, ServingOptions options) =>
        options.KvUnified ? (int)contextCells : (int)(contextCells / (uint)options.MaxConcurrentRequests);

    /// <summary>The KV cache, or null when disabled.</summary>
    public LlamaKvCache? Cache { get; }

    /// <summary>Whether chat uses the model's own template (else the documented default).</summary>
    public bool UsesModelChatTemplate => _chat.UsesModelTemplate;

    /// <summary>Request metrics.</summary>
    public ServingMetrics Metrics => _metrics;

    /// <summary>Finished sequences whose KV cells are still in the context, kept for in-context prefix sharing.</summary>
    internal int ResidentSequences => _scheduler.ResidentSequences;

    /// <summary>Requests queued or running (the load a fleet controller is told about).</summary>
    internal int PendingRequests => _scheduler.Pending;

    /// <summary>Requests decoded at once (<see cref="ServingOptions.MaxConcurrentRequests"/>).</summary>
    internal int MaxConcurrentRequests => _options.MaxConcurrentRequests;

    /// <summary>The instance's role in a prefill/decode-disaggregated fleet (<c>--role</c>).</summary>
    public ServeRole Role => _options.Role;

    /// <summary>Loads the model and creates the context, the cache and the scheduler.</summary>
    /// <param name="modelPath">The GGUF to serve.</param>
    /// <param name="options">Serving options (validated here).</param>
    /// <param name="cacheOptions">Cache options (LMCache keys).</param>
    /// <param name="metrics">Request metrics.</param>
    /// <param name="cacheMetrics">Cache metrics.</param>
    /// <param name="lowerTiers">Extra tiers to add under the memory, disk and remote tiers that <paramref name="cacheOptions"/>
    /// configures, or null.</param>
    /// <param name="logger">Where problems are logged.</param>
    /// <param name="kvEvents">Where the cache reports its KV events (a publisher), or null.</param>
    public static InferenceService Create(string modelPath, ServingOptions options, LMCacheOptions cacheOptions, ServingMetrics metrics,
        CacheMetrics cacheMetrics, Func<KvBufferPool, CacheMetrics, IEnumerable<IStorageTier>>? lowerTiers, ILogger logger,
        LMCacheSharp.Core.Events.IKvEventSink? kvEvents = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(cacheOptions);
        options.Validate();
        cacheOptions.Validate();
        if (!File.Exists(modelPath))
        {
            throw new FileNotFoundException($"model file not found: {modelPath}", modelPath);
        }

        RouteNativeLogs(logger);
        ArgumentNullException.ThrowIfNull(cacheMetrics);
        cacheMetrics.Faults ??= new FaultLog(logger); // cache faults become log lines (rate-limited), not only counters
        var parameters = LlamaContextSettings.Create(modelPath, (uint)(options.ContextSize ?? ServingOptions.DefaultContextSize), options.FlashAttention ?? false,
            options.MaxConcurrentRequests, options.Threads, (uint)options.BatchSize, options.GpuLayers, options.KvUnified);
        LLamaWeights weights;
        try
        {
            weights = options.Progress is not { } progress ? LLamaWeights.LoadFromFile(parameters)
                : LLamaWeights.LoadFromFileAsync(parameters, CancellationToken.None, new LoadProgress(progress)).GetAwaiter().GetResult();
        }
        catch (Exception e) when (e is LLama.Exceptions.LoadWeightsFailedException or LLama.Exceptions.RuntimeError)
        {
            throw new InvalidDataException($"'{modelPath}' could not be loaded as a llama.cpp model (is it a GGUF file?): {e.Message}", e);
        }

        LLamaContext? context = null;
        LlamaKvCache? cache = null;
        try
        {
            parameters.FlashAttention = options.FlashAttention ?? DefaultFlashAttention(weights);
            if (options.ContextSize is null && TrainedContext(weights) is { } trained && trained < ServingOptions.DefaultContextSize)
            {
                parameters.ContextSize = (uint)Math.Max(64, trained); // more cells than the model was trained on only produce noise
            }

            context = weights.CreateContext(parameters);
            if (options.EnableCache)
            {
                var fingerprint = GgufFingerprint.Get(modelPath);
                cache = LlamaKvCache.CreateWithEngine(context.NativeHandle, fingerprint, cacheOptions, new LlamaKvCacheOptions
                {
                    Logger = logger,
                    KvEvents = kvEvents,
                    PerSequenceKv = !options.KvUnified,
                    DiskScanProgress = options.Progress is { } scanTarget ? new ScanProgress(scanTarget) : null,
                },
                    cacheMetrics, WithRemote(cacheOptions, lowerTiers));
            }

            var name = options.ModelName ?? Path.GetFileNameWithoutExtension(modelPath);
            return new InferenceService(modelPath, name, weights, context, cache, options, metrics, logger);
        }
        catch
        {
            cache?.DisposeAsync().AsTask().GetAwaiter().GetResult();
            context?.Dispose();
            weights.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Tokenizes a completion prompt (BOS added when the model wants one; special-token text is not parsed). A text too long
    /// to fit the context is rejected (<see cref="OpenAiRequestException"/>, context_length_exceeded) without tokenizing it.
    /// </summary>
    public int[] TokenizeCompletion(string prompt)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        CheckPromptBytes(prompt, "prompt");
        return TokenizeText(prompt, special: false);
    }

    /// <summary>Formats and tokenizes chat messages (special tokens of the template are parsed); too long: as <see cref="TokenizeCompletion"/>.</summary>
    public int[] TokenizeChat(IReadOnlyList<ChatMessageInput> messages)
    {
        ArgumentNullException.ThrowIfNull(messages);
        long bytes = 0;
        foreach (var m in messages)
        {
            bytes += Encoding.UTF8.GetByteCount(m.Content);
        }

        if (bytes > MaxPromptBytes)
        {
            throw TooLong(bytes, "messages");
        }

        var text = _chat.Format(messages);
        CheckPromptBytes(text, "messages");
        return TokenizeText(text, special: true);
    }

    /// <summary>Checks a prompt given as token ids: every id in the vocabulary. Returns a copy.</summary>
    public int[] CheckTokenIds(IReadOnlyList<int> tokens)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        var result = new int[tokens.Count];
        for (var i = 0; i < result.Length; i++)
        {
            var t = tokens[i];
            if (t < 0 || t >= VocabularySize)
            {
                throw new OpenAiRequestException($"'prompt[{i}]' is token id {t}, outside this model's vocabulary 0..{VocabularySize - 1}", "prompt");
            }

            result[i] = t;
        }

        return result;
    }

    /// <summary>The text of <paramref name="tokens"/> (for echo of token-id prompts).</summary>
    public string Detokenize(IReadOnlyList<int> tokens)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        var decoder = new StreamingTokenDecoder(Encoding.UTF8, _weights);
        foreach (var t in tokens)
        {
            decoder.Add((LLama.Native.LLamaToken)t);
        }

        return decoder.Read();
    }

    private void CheckPromptBytes(string text, string param)
    {
        // A UTF-16 character is at most 3 UTF-8 bytes: count exactly only when the text could be too long.
        if ((long)text.Length * 3 > MaxPromptBytes)
        {
            var bytes = (long)Encoding.UTF8.GetByteCount(text);
            if (bytes > MaxPromptBytes)
            {
                throw TooLong(bytes, param);
            }
        }
    }

    private OpenAiRequestException TooLong(long bytes, string param) => new(
        $"This model's context holds {ContextSize} tokens; the prompt has {bytes} bytes of text, more than {ContextSize} tokens can cover. Shorten the prompt.",
        param, "context_length_exceeded");

    /// <summary>Stop strings the chat layout implies (the default layout's end-of-turn marker).</summary>
    public IReadOnlyList<string> ChatStopStrings => _chat.UsesModelTemplate ? [] : ["<|im_end|>"];

    /// <summary>
    /// Validates, prefetches the prompt's cached prefix into memory, and queues the request. Throws
    /// <see cref="OpenAiRequestException"/> (400) for a prompt that cannot fit, (429) when the queue is full.
    /// </summary>
    /// <param name="promptTokens">The prompt's tokens.</param>
    /// <param name="parameters">Sampling and cache parameters.</param>
    /// <param name="cancellationToken">Fires when the client goes away: the request is dropped wherever it is.</param>
    /// <param name="promptParam">The request field errors about the prompt name ("prompt" or "messages").</param>
    public async Task<GenerationJob> SubmitAsync(int[] promptTokens, GenerationParameters parameters, CancellationToken cancellationToken,
        string promptParam = "prompt")
    {
        ArgumentNullException.ThrowIfNull(promptTokens);
        ArgumentNullException.ThrowIfNull(parameters);
        if (promptTokens.Length == 0)
        {
            throw new OpenAiRequestException("the prompt is empty", promptParam);
        }

        // The prompt needs its cells plus at least one for the first generated token (vLLM: prompt + max_tokens <= context).
        if (promptTokens.Length >= ContextSize)
        {
            throw new OpenAiRequestException(
                $"This model's context holds {ContextSize} tokens; the prompt has {promptTokens.Length}, which leaves no room to generate. Shorten the prompt.",
                promptParam, "context_length_exceeded");
        }

        // n choices run side by side, one sequence each, sharing the prompt's cells: n sequences, prompt + n x max_tokens cells.
        var n = parameters.N;
        if (n > _options.MaxConcurrentRequests)
        {
            throw new OpenAiRequestException($"'n' is {n}; this server runs at most {_options.MaxConcurrentRequests} sequences at once (--max-concurrent)", "n");
        }

        var maxTokens = parameters.MaxTokens ?? Math.Max(1, Math.Min(_options.DefaultMaxTokens, (ContextSize - promptTokens.Length) / n));
        if (_options.Role == ServeRole.Prefill)
        {
            maxTokens = 1; // a prefill instance never decodes beyond the first token: the decode instance generates the rest
        }

        if (promptTokens.Length + ((long)n * maxTokens) > ContextSize)
        {
            var asked = n == 1 ? $"max_tokens asks for {maxTokens}" : $"{n} choices of max_tokens {maxTokens} ask for {(long)n * maxTokens}";
            throw new OpenAiRequestException(
                $"This model's context holds {ContextSize} tokens; the prompt has {promptTokens.Length} and {asked}. Shorten the prompt or lower max_tokens.",
                parameters.MaxTokensParam, "context_length_exceeded");
        }

        foreach (var token in parameters.LogitBias.Keys)
        {
            if (token >= VocabularySize)
            {
                throw new OpenAiRequestException($"'logit_bias' names token id {token}, outside this model's vocabulary 0..{VocabularySize - 1}", "logit_bias");
            }
        }

        var ns = NamespaceOf(parameters);
        var job = new GenerationJob(promptTokens, parameters, maxTokens, ns, cancellationToken);
        if (Cache is not null)
        {
            job.Prefix = await Cache.PrefetchAsync(promptTokens, ns, cancellationToken).ConfigureAwait(false);
        }

        for (var i = 0; i < n; i++)
        {
            _metrics.Started(); // every choice is a sequence in flight
        }

        if (!_scheduler.TryEnqueue(job))
        {
            job.ReleasePrefix();
            for (var i = 0; i < n; i++)
            {
                _metrics.Finished("rejected", promptTokens.Length, 0, 0, 0);
            }

            throw new OpenAiRequestException($"the server is busy: {_options.MaxConcurrentRequests} requests running and {_options.MaxQueuedRequests} waiting; retry later",
                null, "rate_limit_exceeded", 429);
        }

        return job;
    }

    /// <summary>The cache namespace of a request: the cache's, with the request's <c>cache_salt</c> and <c>lmcache.tag.*</c>.</summary>
    internal CacheNamespace NamespaceOf(GenerationParameters parameters)
    {
        var ns = Cache?.Namespace ?? new CacheNamespace("nocache", new KvFormat(1, 1, 1, KvDataType.F16, KvLayout.LayerKV));
        if (parameters.CacheSalt is not null)
        {
            ns = ns.WithSalt(parameters.CacheSalt);
        }

        if (parameters.Tags.Count > 0)
        {
            ns = ns.WithTags(parameters.Tags);
        }

        return ns;
    }

    /// <summary>Requests holding a sequence and requests waiting for one (as of the scheduler's last step, plus those queued since).</summary>
    public (int Running, int Queued) Load => (_scheduler.Running, _scheduler.Queued);

    /// <summary>Runs a request to the end and returns its text and usage.</summary>
    public async Task<(string Text, FinishReason Finish, GenerationUsage Usage)> GenerateAsync(int[] promptTokens, GenerationParameters parameters,
        CancellationToken cancellationToken)
    {
        var job = await SubmitAsync(promptTokens, parameters, cancellationToken).ConfigureAwait(false);
        var text = new StringBuilder();
        await foreach (var e in job.Events.ReadAllAsync(CancellationToken.None).ConfigureAwait(false))
        {
            text.Append(e.Text);
            if (e.Error is not null)
            {
                throw new InvalidOperationException(e.Error);
            }

            if (e.Finish is { } finish)
            {
                return (text.ToString(), finish, e.Usage ?? default);
            }
        }

        throw new InvalidOperationException("generation ended without a final event");
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        _scheduler.Dispose();
        if (Cache is not null)
        {
            await Cache.DisposeAsync().ConfigureAwait(false);
        }

        _context.Dispose();
        _weights.Dispose();
    }

    /// <summary>
    /// Tokenizes <paramref name="text"/> as llama-server's /tokenize does: BOS only when <paramref name="addSpecial"/> (and
    /// the model wants one), special-token text parsed when <paramref name="parseSpecial"/>. A text too long for the context
    /// is rejected like a prompt (param <c>content</c>).
    /// </summary>
    public int[] Tokenize(string text, bool addSpecial, bool parseSpecial)
    {
        ArgumentNullException.ThrowIfNull(text);
        CheckPromptBytes(text, "content");
        return TokenizeText(text, parseSpecial, addSpecial && _weights.Vocab.ShouldAddBOS);
    }

    /// <summary>The text piece of one token (llama-server's <c>with_pieces</c>).</summary>
    public string TokenPiece(int token) => Encoding.UTF8.GetString(_pieces[token]);

    private int[] TokenizeText(string text, bool special, bool? addBos = null)
    {
        var tokens = _weights.Tokenize(text, addBos ?? _weights.Vocab.ShouldAddBOS, special, Encoding.UTF8);
        var result = new int[tokens.Length];
        for (var i = 0; i < tokens.Length; i++)
        {
            result[i] = (int)tokens[i];
        }

        return result;
    }

    /// <summary>The remote tier that <c>remote_url</c> names (validated now, connected lazily), then <paramref name="extra"/>.</summary>
    private static Func<KvBufferPool, CacheMetrics, IEnumerable<IStorageTier>>? WithRemote(LMCacheOptions cacheOptions,
        Func<KvBufferPool, CacheMetrics, IEnumerable<IStorageTier>>? extra)
    {
        var remote = RemoteTierFactory.LowerTiers(cacheOptions);
        return (remote, extra) switch
        {
            (null, _) => extra,
            (_, null) => remote,
            _ => (pool, metrics) => [.. remote(pool, metrics), .. extra(pool, metrics)],
        };
    }

    // llama.cpp's load progress (0..1) as a start-up stage.
    private sealed class LoadProgress(IProgress<StartupProgress> target) : IProgress<float>
    {
        public void Report(float value) => target.Report(new StartupProgress("loading the model", value));
    }

    // The disk tier's start-up scan as a start-up stage. Reported synchronously on the opening thread (Progress<T> would
    // post to the thread pool and could report after the stage ended).
    private sealed class ScanProgress(IProgress<StartupProgress> target) : IProgress<DiskTierScanProgress>
    {
        public void Report(DiskTierScanProgress value) =>
            target.Report(new StartupProgress("scanning the disk cache", value.Fraction));
    }

    // llama.cpp logs every load, state restore and context at info level to stderr: route it to the logger (info as debug).
    private static void RouteNativeLogs(ILogger logger)
    {
        LLama.Native.NativeLogConfig.llama_log_set((level, message) =>
        {
            if (level is not (LLama.Native.LLamaLogLevel.Error or LLama.Native.LLamaLogLevel.Warning) && !logger.IsEnabled(LogLevel.Debug))
            {
                return;
            }

            var text = message.TrimEnd();
            if (text.Length == 0)
            {
                return;
            }

            switch (level)
            {
                case LLama.Native.LLamaLogLevel.Error:
                    logger.LogError("llama.cpp: {Message}", text);
                    break;
                case LLama.Native.LLamaLogLevel.Warning:
                    logger.LogWarning("llama.cpp: {Message}", text);
                    break;
                default:
                    logger.LogDebug("llama.cpp: {Message}", text);
                    break;
            }
        });
    }

    /// <summary>Every token's piece (special tokens rendered), read once at start: logprobs and the prompt limit use them.</summary>
    private static byte[][] TokenPieces(LLamaWeights weights)
    {
        var pieces = new byte[weights.Vocab.Count][];
        var buffer = new byte[256];
        for (var t = 0; t < pieces.Length; t++)
        {
            var n = (int)weights.NativeHandle.TokenToSpan((LLama.Native.LLamaToken)t, buffer, 0, true);
            if (n > buffer.Length)
            {
                buffer = new byte[n]; // a piece longer than the buffer reports its full length and writes nothing
                n = (int)weights.NativeHandle.TokenToSpan((LLama.Native.LLamaToken)t, buffer, 0, true);
            }

            pieces[t] = buffer.AsSpan(0, n).ToArray();
        }

        return pieces;
    }

    private static int? TrainedContext(LLamaWeights weights)
    {
        var arch = weights.Metadata.GetValueOrDefault("general.architecture", "llama");
        return int.TryParse(weights.Metadata.GetValueOrDefault(arch + ".context_length"), out var n) && n > 0 ? n : null;
    }

    // Flash attention on CPU pays off for usual head sizes but is 4-5x slower for tiny heads (DESIGN section 6).
    private static bool DefaultFlashAttention(LLamaWeights weights)
    {
        var arch = weights.Metadata.GetValueOrDefault("general.architecture", "llama");
        return int.TryParse(weights.Metadata.GetValueOrDefault(arch + ".embedding_length"), out var embd) &&
            int.TryParse(weights.Metadata.GetValueOrDefault(arch + ".attention.head_count"), out var heads) && heads > 0 && embd / heads >= 64;
    }
}
