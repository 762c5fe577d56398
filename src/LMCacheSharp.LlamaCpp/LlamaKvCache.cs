using LLama.Native;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Engine;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Metrics;
using LMCacheSharp.Core.Storage;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace LMCacheSharp.LlamaCpp;

/// <summary>Options of <see cref="LlamaKvCache"/>.</summary>
public sealed class LlamaKvCacheOptions
{
    /// <summary>How chunk payloads are laid out. Default <see cref="LlamaChunkLayout.StateBlob"/> (no copy on restore).</summary>
    public LlamaChunkLayout Layout { get; set; } = LlamaChunkLayout.StateBlob;

    /// <summary>
    /// The sequence id the cache uses as scratch space; the caller must never decode into it. Default: the context's
    /// last sequence id (<c>n_seq_max - 1</c>), so create the context with one sequence more than it serves.
    /// </summary>
    public LLamaSeqId? ScratchSequence { get; set; }

    /// <summary>
    /// The context has per-sequence KV streams (created with <c>KVUnified = false</c>): no scratch sequence is used (and
    /// <see cref="ScratchSequence"/> is ignored), chunks move with whole-sequence state calls (see <see cref="LlamaKvConnector"/>).
    /// Every sequence id of the context may then be decoded. Default false: a unified KV cache with a scratch sequence.
    /// </summary>
    public bool PerSequenceKv { get; set; }

    /// <summary>Where cache problems are logged (they never fail a request). Default: nowhere.</summary>
    public ILogger? Logger { get; set; }

    /// <summary>
    /// Where the engine created by <see cref="LlamaKvCache.CreateWithEngine"/> reports KV events (stores, evictions, clears
    /// of every tier), e.g. a <see cref="LMCacheSharp.Core.Events.KvEventQueue"/> read by a publisher. Default: none.
    /// </summary>
    public LMCacheSharp.Core.Events.IKvEventSink? KvEvents { get; set; }

    /// <summary>
    /// Where the disk tier of the engine created by <see cref="LlamaKvCache.CreateWithEngine"/> reports the progress of its
    /// start-up scan (<see cref="DiskTierOptions.ScanProgress"/>), e.g. a host's progress line.
    /// Default: none.
    /// </summary>
    public IProgress<DiskTierScanProgress>? DiskScanProgress { get; set; }
}

/// <summary>
/// The cache side of one llama.cpp context: looks up, restores and stores the KV of any of its sequences through a
/// <see cref="CacheEngine"/>, so several requests decoded together in one context (one sequence each) share one cache.
/// <list type="bullet">
/// <item><see cref="PrefetchAsync"/> (any thread) brings a prompt's hit chunks into the memory tier and pins them;
/// <see cref="Restore"/> (inference thread) writes them into a sequence without touching any tier;</item>
/// <item><see cref="RestoreAsync"/> (inference thread, between decodes) writes the leading hit chunks into an empty
/// sequence, never the whole prompt (the last token is always left to decode, for its logits);</item>
/// <item><see cref="StoreAsync"/> (inference thread, between decodes; call it after the first token is sampled) reads
/// the sequence's new complete chunks and stores them.</item>
/// </list>
/// A cache problem of any kind (missing or corrupt chunk, unexpected state format, full tier) is a miss: these methods
/// return 0 and leave the sequence consistent, they never throw for it (cancellation still throws).
/// The context needs a unified KV cache (<c>KVUnified = true</c>, or one sequence) and a spare sequence id for scratch, or
/// per-sequence KV streams with <see cref="LlamaKvCacheOptions.PerSequenceKv"/>.
/// Restore and store must not run concurrently with a decode on the same context, nor with each other.
/// </summary>
public sealed class LlamaKvCache : IAsyncDisposable
{
    private readonly SafeLLamaContextHandle _context;
    private readonly LlamaKvConnector? _connector;
    private readonly ILogger _logger;
    private readonly bool _ownsEngine;

    private LlamaKvCache(SafeLLamaContextHandle context, CacheEngine engine, string modelFingerprint, LlamaKvCacheOptions options,
        bool ownsEngine)
    {
        _context = context;
        Engine = engine;
        ModelFingerprint = modelFingerprint;
        _logger = options.Logger ?? NullLogger.Instance;
        _ownsEngine = ownsEngine;
        Layout = options.Layout;
        ScratchSequence = ScratchFor(context, options);
        if (TryProbe(context, ScratchSequence, out var shape, out var streams, out var reason))
        {
            Shape = shape;
            Format = shape.ToFormat(Layout);
            // The engine's variant says which lossy codecs its tiers use: KV that went through them is keyed apart.
            Namespace = CreateNamespace(modelFingerprint, shape, Layout).WithVariant(engine.Namespace.Variant);
            _connector = new LlamaKvConnector(context, shape, Layout, ScratchSequence, streams);
        }
        else
        {
            DisabledReason = reason;
            Namespace = new CacheNamespace(modelFingerprint + "|disabled", new KvFormat(1, 1, 1, KvDataType.F16, KvLayout.LayerKV));
            Format = Namespace.Format;
            _logger.LogWarning("KV cache disabled for this context: {Reason}", reason);
        }
    }

    /// <summary>The cache engine.</summary>
    public CacheEngine Engine { get; }

    /// <summary>The model fingerprint this cache was created with.</summary>
    public string ModelFingerprint { get; }

    /// <summary>The default namespace: model fingerprint, engine settings (flash attention, KV types) and chunk format.</summary>
    public CacheNamespace Namespace { get; }

    /// <summary>The chunk format.</summary>
    public KvFormat Format { get; }

    /// <summary>The context's KV shape (default when disabled).</summary>
    public LlamaKvShape Shape { get; }

    /// <summary>The chunk layout.</summary>
    public LlamaChunkLayout Layout { get; }

    /// <summary>The scratch sequence id (never decode into it), or null with <see cref="LlamaKvCacheOptions.PerSequenceKv"/>.</summary>
    public LLamaSeqId? ScratchSequence { get; }

    /// <summary>Whether the context's KV could be understood; when false every call is a miss.</summary>
    public bool IsEnabled => _connector is not null;

    /// <summary>Why the cache is disabled, or null.</summary>
    public string? DisabledReason { get; }

    /// <summary>Tokens per chunk.</summary>
    public int ChunkSize => Engine.ChunkSize;

    /// <summary>Creates the cache side of <paramref name="context"/> over a shared <paramref name="engine"/>.</summary>
    /// <param name="context">The context; it must have a spare sequence id for scratch (see <see cref="LlamaKvCacheOptions.ScratchSequence"/>).</param>
    /// <param name="engine">The cache engine (its default namespace is not used: this cache's <see cref="Namespace"/> is, with
    /// the engine namespace's <see cref="CacheNamespace.Variant"/>, which names the lossy codecs of its tiers).</param>
    /// <param name="modelFingerprint">The model fingerprint, e.g. from <see cref="GgufFingerprint.Get"/>.</param>
    /// <param name="options">Options, or null for the defaults.</param>
    public static LlamaKvCache Create(SafeLLamaContextHandle context, CacheEngine engine, string modelFingerprint, LlamaKvCacheOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(engine);
        ArgumentException.ThrowIfNullOrEmpty(modelFingerprint);
        return new LlamaKvCache(context, engine, modelFingerprint, options ?? new LlamaKvCacheOptions(), ownsEngine: false);
    }

    /// <summary>
    /// Creates the cache side of <paramref name="context"/> with its own engine (tiers from <paramref name="cacheOptions"/>
    /// plus <paramref name="lowerTiers"/>), whose default namespace is this cache's <see cref="Namespace"/>. The engine is
    /// disposed with the cache.
    /// </summary>
    public static LlamaKvCache CreateWithEngine(SafeLLamaContextHandle context, string modelFingerprint, LMCacheOptions cacheOptions,
        LlamaKvCacheOptions? options = null, CacheMetrics? metrics = null,
        Func<KvBufferPool, CacheMetrics, IEnumerable<IStorageTier>>? lowerTiers = null)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentException.ThrowIfNullOrEmpty(modelFingerprint);
        options ??= new LlamaKvCacheOptions();
        var scratch = ScratchFor(context, options); // a bad scratch id fails before the engine is made
        var ns = TryProbe(context, scratch, out var shape, out _, out _)
            ? CreateNamespace(modelFingerprint, shape, options.Layout)
            : new CacheNamespace(modelFingerprint + "|disabled", new KvFormat(1, 1, 1, KvDataType.F16, KvLayout.LayerKV));
        var engine = CacheEngine.Create(cacheOptions, ns, metrics, lowerTiers, options.KvEvents, options.DiskScanProgress);
        return new LlamaKvCache(context, engine, modelFingerprint, options, ownsEngine: true);
    }

    /// <summary>
    /// The namespace for a model and context shape: the fingerprint extended with the engine settings that change the KV
    /// bits or layout (<see cref="LlamaKvShape.Describe"/>), and the chunk format.
    /// </summary>
    public static CacheNamespace CreateNamespace(string modelFingerprint, LlamaKvShape shape, LlamaChunkLayout layout) =>
        new(modelFingerprint + "|" + shape.Describe(), shape.ToFormat(layout));

    /// <summary>
    /// Reads the KV shape of <paramref name="context"/> by decoding one token into <paramref name="scratch"/> and parsing
    /// its state blob (the scratch sequence is cleared again). Call it before the context is used for inference, or between
    /// decodes. Returns false with a reason when the state format is not one this connector understands.
    /// </summary>
    public static bool TryProbeShape(SafeLLamaContextHandle context, LLamaSeqId scratch, out LlamaKvShape shape, out string reason)
    {
        if (!TryProbeShape(context, scratch, out shape, out var streams, out reason))
        {
            return false;
        }

        if (streams != 1)
        {
            shape = default;
            reason = "the context has several KV streams: create it with a unified KV cache (KVUnified = true), or set PerSequenceKv";
            return false;
        }

        return true;
    }

    private static LLamaSeqId? ScratchFor(SafeLLamaContextHandle context, LlamaKvCacheOptions options)
    {
        if (options.PerSequenceKv)
        {
            return null;
        }

        var scratch = options.ScratchSequence ?? (LLamaSeqId)(int)(context.MaxSeq - 1);
        if (scratch.Value < 0 || scratch.Value >= context.MaxSeq)
        {
            throw new ArgumentException($"scratch sequence {scratch.Value} is outside the context's 0..{context.MaxSeq - 1}");
        }

        return scratch;
    }

    // The shape, probed in the scratch sequence (a unified cache: one stream), or without one (per-sequence streams) in
    // sequence 0 of the fresh context; and the stream count.
    private static bool TryProbe(SafeLLamaContextHandle context, LLamaSeqId? scratch, out LlamaKvShape shape, out int streams, out string reason)
    {
        if (scratch is null)
        {
            return TryProbeShape(context, LLamaSeqId.Zero, out shape, out streams, out reason);
        }

        streams = 1;
        return TryProbeShape(context, scratch.Value, out shape, out reason);
    }

    /// <summary>
    /// <see cref="TryProbeShape(SafeLLamaContextHandle, LLamaSeqId, out LlamaKvShape, out string)"/> that also accepts a context
    /// with per-sequence KV streams (<c>KVUnified = false</c>) and tells how many streams it has (1 for a unified KV cache).
    /// </summary>
    public static bool TryProbeShape(SafeLLamaContextHandle context, LLamaSeqId scratch, out LlamaKvShape shape, out int streams, out string reason)
    {
        ArgumentNullException.ThrowIfNull(context);
        shape = default;
        streams = 0;
        context.MemorySequenceRemove(scratch, -1, -1);
        var pristine = true;
        for (var s = 0; s < context.MaxSeq && pristine; s++)
        {
            pristine = context.MemorySequenceMaxPosition((LLamaSeqId)s).Value < 0;
        }

        try
        {
            var batch = new LLamaBatch();
            var token = context.ModelHandle.Vocab.BOS ?? (LLamaToken)0;
            batch.Add(token, 0, scratch, false);
            var result = context.Decode(batch);
            if (result != DecodeResult.Ok)
            {
                reason = $"probe decode failed ({result})";
                return false;
            }

            var size = context.GetStateSize(scratch);
            var blob = new byte[(int)size];
            unsafe
            {
                fixed (byte* p = blob)
                {
                    if (context.GetState(p, size, scratch) != size)
                    {
                        reason = "llama_state_seq_get_data failed";
                        return false;
                    }
                }
            }

            if (!LlamaStateBlob.TryParse(blob, out var info, default, anyStreams: true) || info.Cells != 1 || info.Length != blob.Length)
            {
                reason = "unrecognized llama.cpp sequence state format (recurrent or sliding-window model, or a llama.cpp version this build does not know)";
                return false;
            }

            shape = info.Shape;
            streams = info.Streams;
            reason = "";
            return true;
        }
        finally
        {
            context.MemorySequenceRemove(scratch, -1, -1);
            if (pristine)
            {
                // Leave a fresh context as it was (allocation head at cell 0): where cells sit changes the order of
                // llama.cpp's attention sums, so a probed context must compute exactly like an unprobed one.
                context.MemoryClear(true);
            }
        }
    }

    /// <summary>
    /// How many leading tokens of <paramref name="promptTokens"/> <see cref="RestoreAsync"/> could restore now (whole
    /// chunks, always fewer than the prompt). Any thread.
    /// </summary>
    public async ValueTask<int> LookupAsync(ReadOnlyMemory<int> promptTokens, CacheNamespace? ns = null, CancellationToken cancellationToken = default)
    {
        if (!Usable(ns, promptTokens.Length - 1, out ns))
        {
            return 0;
        }

        try
        {
            return await Engine.LookupAsync(promptTokens[..^1], ns, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            _logger.LogWarning(e, "KV cache lookup failed; treated as a miss");
            return 0;
        }
    }

    /// <summary>
    /// How many leading tokens of <paramref name="promptTokens"/> each tier holds (never the last token, which is always
    /// computed), pinning and fetching nothing: <see cref="CacheEngine.CountByTierAsync"/>. Any thread. A cache problem is
    /// nothing cached, never an exception (cancellation still throws).
    /// </summary>
    public async ValueTask<TierTokenCounts> CountByTierAsync(ReadOnlyMemory<int> promptTokens, CacheNamespace? ns = null, LookupTiers tiers = LookupTiers.All,
        CancellationToken cancellationToken = default)
    {
        if (!Usable(ns, promptTokens.Length - 1, out ns))
        {
            return TierTokenCounts.None(tiers);
        }

        try
        {
            return await Engine.CountByTierAsync(promptTokens[..^1], ns, tiers, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            _logger.LogWarning(e, "KV cache lookup by tier failed; treated as a miss");
            return TierTokenCounts.None(tiers);
        }
    }

    /// <summary>
    /// Finds the leading cached chunks of <paramref name="promptTokens"/> in any tier (never the last token), brings them
    /// into memory and pins them, so that <see cref="Restore"/> on the inference thread touches no tier and never waits.
    /// Any thread; the caller disposes the result. A cache problem is an empty prefix, never an exception (cancellation
    /// still throws).
    /// </summary>
    public async ValueTask<CachedPrefix> PrefetchAsync(ReadOnlyMemory<int> promptTokens, CacheNamespace? ns = null, CancellationToken cancellationToken = default)
    {
        if (!Usable(ns, promptTokens.Length - 1, out ns))
        {
            return CachedPrefix.Empty(ns);
        }

        try
        {
            return await Engine.PinAsync(promptTokens[..^1], ns, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            _logger.LogWarning(e, "KV cache prefetch failed; treated as a miss");
            return CachedPrefix.Empty(ns);
        }
    }

    /// <summary>
    /// Pins the chunks after <paramref name="prefix"/>'s run that the memory tier holds now (stored since the prefetch).
    /// Memory only, never a wait. Returns the tokens <see cref="Restore"/> would restore.
    /// </summary>
    public int ExtendInMemory(CachedPrefix prefix)
    {
        ArgumentNullException.ThrowIfNull(prefix);
        return _connector is null || prefix.Namespace.Format != Format ? 0 : Engine.ExtendInMemory(prefix);
    }

    /// <summary>
    /// Clears <paramref name="sequence"/> and restores into it the pinned chunks of <paramref name="prefix"/> (from
    /// <see cref="PrefetchAsync"/>). Touches no tier. Returns the tokens restored (decode the prompt from there); 0 on any
    /// problem, with the sequence left empty. Call on the inference thread, between decodes.
    /// </summary>
    public int Restore(LLamaSeqId sequence, CachedPrefix prefix)
    {
        ArgumentNullException.ThrowIfNull(prefix);
        CheckSequence(sequence);
        if (_connector is null || prefix.Namespace.Format != Format || Engine.ExtendInMemory(prefix) == 0)
        {
            return 0;
        }

        _context.MemorySequenceRemove(sequence, -1, -1);
        _connector.Sequence = sequence;
        try
        {
            return CheckRestored(sequence, Engine.Restore(prefix, _connector));
        }
        catch (Exception e)
        {
            _logger.LogWarning(e, "KV restore failed; treated as a miss");
            _context.MemorySequenceRemove(sequence, -1, -1);
            RemoveScratch();
            return 0;
        }
    }

    private int CheckRestored(LLamaSeqId sequence, int restored)
    {
        if (restored > 0 && _context.MemorySequenceMaxPosition(sequence).Value >= restored)
        {
            // A token-exact tail: the whole child chunk went in, only its first tokens match this prompt.
            _context.MemorySequenceRemove(sequence, restored, -1);
        }

        if (restored > 0 && (_context.MemorySequenceMinPosition(sequence) != 0 || _context.MemorySequenceMaxPosition(sequence) != restored - 1))
        {
            _logger.LogWarning("KV restore left positions {Min}..{Max} for {Restored} tokens; dropped", _context.MemorySequenceMinPosition(sequence).Value,
                _context.MemorySequenceMaxPosition(sequence).Value, restored);
            _context.MemorySequenceRemove(sequence, -1, -1);
            return 0;
        }

        return restored;
    }

    /// <summary>
    /// Clears <paramref name="sequence"/> and restores into it the KV of the leading cached chunks of
    /// <paramref name="promptTokens"/> (never the last token: decode tokens [result, prompt length) next, at those
    /// positions). Returns the tokens restored; 0 on a miss or any cache problem, with the sequence left empty.
    /// Call on the inference thread, between decodes.
    /// </summary>
    public async ValueTask<int> RestoreAsync(LLamaSeqId sequence, ReadOnlyMemory<int> promptTokens, CacheNamespace? ns = null,
        CancellationToken cancellationToken = default)
    {
        CheckSequence(sequence);
        if (!Usable(ns, promptTokens.Length - 1, out ns))
        {
            return 0;
        }

        _context.MemorySequenceRemove(sequence, -1, -1);
        try
        {
            // Lookup (any tier), then the same memory-only restore the scheduler uses: token-exact tails included.
            using var prefix = await PrefetchAsync(promptTokens, ns, cancellationToken).ConfigureAwait(false);
            return Restore(sequence, prefix);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            _context.MemorySequenceRemove(sequence, -1, -1);
            throw;
        }
        catch (Exception e)
        {
            _logger.LogWarning(e, "KV restore failed; treated as a miss");
            _context.MemorySequenceRemove(sequence, -1, -1);
            RemoveScratch();
            return 0;
        }
    }

    /// <summary>
    /// Stores the KV of the complete chunks of <paramref name="tokens"/> (the tokens at positions 0.. of
    /// <paramref name="sequence"/>) that are not cached yet; chunks wholly inside the first
    /// <paramref name="alreadyCachedTokens"/> are skipped without reading. Returns the tokens newly stored (0 on any cache
    /// problem). Call on the inference thread between decodes, after the first token was sampled.
    /// </summary>
    public async ValueTask<int> StoreAsync(LLamaSeqId sequence, ReadOnlyMemory<int> tokens, int alreadyCachedTokens = 0, CacheNamespace? ns = null,
        CancellationToken cancellationToken = default)
    {
        CheckSequence(sequence);
        var present = Math.Min(tokens.Length, _context.MemorySequenceMaxPosition(sequence).Value + 1);
        if (!Usable(ns, present, out ns) || _context.MemorySequenceMinPosition(sequence).Value != 0)
        {
            return 0;
        }

        _connector!.Sequence = sequence;
        try
        {
            return await Engine.StoreAsync(tokens[..present], _connector, Math.Max(0, alreadyCachedTokens), ns, cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            throw;
        }
        catch (Exception e)
        {
            _logger.LogWarning(e, "KV store failed; nothing stored");
            RemoveScratch();
            return 0;
        }
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        _connector?.Dispose();
        if (_ownsEngine)
        {
            await Engine.DisposeAsync().ConfigureAwait(false);
        }
    }

    private bool Usable(CacheNamespace? requested, int usableTokens, out CacheNamespace ns)
    {
        ns = requested ?? Namespace;
        return _connector is not null && ns.Format == Format && usableTokens >= (Engine.SaveUnfullChunk || Engine.TokenExact ? 1 : Engine.ChunkSize);
    }

    private void RemoveScratch()
    {
        if (ScratchSequence is { } scratch)
        {
            _context.MemorySequenceRemove(scratch, -1, -1);
        }
    }

    private void CheckSequence(LLamaSeqId sequence)
    {
        if (sequence == ScratchSequence || sequence.Value < 0 || sequence.Value >= _context.MaxSeq)
        {
            throw new ArgumentOutOfRangeException(nameof(sequence), sequence.Value, ScratchSequence is { } scratch
                ? $"sequence must be in 0..{_context.MaxSeq - 1} and not the scratch sequence {scratch.Value}"
                : $"sequence must be in 0..{_context.MaxSeq - 1}");
        }
    }
}
