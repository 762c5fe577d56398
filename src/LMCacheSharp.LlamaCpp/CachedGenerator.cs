using System.Diagnostics;
using LLama.Native;
using LMCacheSharp.Core.Keys;

namespace LMCacheSharp.LlamaCpp;

/// <summary>What a prompt's prefill did.</summary>
/// <param name="PromptTokens">Tokens in the prompt.</param>
/// <param name="CachedTokens">Prompt tokens whose KV came from the cache (not computed).</param>
/// <param name="FirstToken">The greedy first token.</param>
/// <param name="Logits">The next-token logits after the prompt (copied only when asked for).</param>
/// <param name="RestoreTime">Time spent restoring cached KV.</param>
/// <param name="TimeToFirstToken">From the call to the first token sampled (restore, prefill of the rest, sampling).</param>
/// <param name="StoredTokens">Tokens newly stored after the first token.</param>
/// <param name="StoreTime">Time spent storing (after the first token, so not part of <paramref name="TimeToFirstToken"/>).</param>
public sealed record PromptResult(int PromptTokens, int CachedTokens, int FirstToken, float[]? Logits, TimeSpan RestoreTime,
    TimeSpan TimeToFirstToken, int StoredTokens, TimeSpan StoreTime);

/// <summary>
/// Single-sequence cached generation over a llama.cpp context: restore the prompt's cached prefix, prefill only the
/// rest, sample the first token, then store the prompt's new chunks, then continue greedily. Used by tests, the TTFT
/// benchmark and as the reference for how a server drives <see cref="LlamaKvCache"/>. Not thread-safe.
/// </summary>
public sealed class CachedGenerator
{
    private readonly SafeLLamaContextHandle _context;
    private readonly LlamaKvCache? _cache;
    private readonly LLamaBatch _batch = new();
    private int _position;
    private int _lastToken = -1;

    /// <summary>Creates a generator on <paramref name="sequence"/> of <paramref name="context"/>.</summary>
    /// <param name="context">The context.</param>
    /// <param name="cache">The cache, or null for plain (uncached) generation.</param>
    /// <param name="sequence">The sequence to use.</param>
    public CachedGenerator(SafeLLamaContextHandle context, LlamaKvCache? cache, LLamaSeqId sequence = default)
    {
        ArgumentNullException.ThrowIfNull(context);
        _context = context;
        _cache = cache;
        Sequence = sequence;
    }

    /// <summary>The sequence used.</summary>
    public LLamaSeqId Sequence { get; }

    /// <summary>Whether the prompt's new chunks are stored after the first token. Default true.</summary>
    public bool StoreAfterFirstToken { get; set; } = true;

    /// <summary>
    /// Starts a new generation: clears the sequence, restores the cached prefix of <paramref name="prompt"/>, decodes the
    /// rest and samples the first token greedily; then stores the prompt's new chunks (when enabled).
    /// </summary>
    public async Task<PromptResult> PrefillAsync(ReadOnlyMemory<int> prompt, CacheNamespace? ns = null, bool captureLogits = false,
        CancellationToken cancellationToken = default)
    {
        if (prompt.Length == 0)
        {
            throw new ArgumentException("the prompt is empty", nameof(prompt));
        }

        if (prompt.Length > _context.ContextSize)
        {
            throw new ArgumentException($"the prompt has {prompt.Length} tokens, the context holds {_context.ContextSize}", nameof(prompt));
        }

        var start = Stopwatch.GetTimestamp();
        _context.MemorySequenceRemove(Sequence, -1, -1);
        var cached = _cache is null ? 0 : await _cache.RestoreAsync(Sequence, prompt, ns, cancellationToken).ConfigureAwait(false);
        var restoreTime = Stopwatch.GetElapsedTime(start);
        var logitsIndex = DecodeRange(prompt.Span, cached);
        var logits = _context.GetLogitsIth(logitsIndex);
        var first = ArgMax(logits);
        var captured = captureLogits ? logits.ToArray() : null;
        var ttft = Stopwatch.GetElapsedTime(start);
        _position = prompt.Length;
        _lastToken = first;

        var stored = 0;
        var storeTime = TimeSpan.Zero;
        if (_cache is not null && StoreAfterFirstToken)
        {
            var storeStart = Stopwatch.GetTimestamp();
            stored = await _cache.StoreAsync(Sequence, prompt, cached, ns, cancellationToken).ConfigureAwait(false);
            storeTime = Stopwatch.GetElapsedTime(storeStart);
        }

        return new PromptResult(prompt.Length, cached, first, captured, restoreTime, ttft, stored, storeTime);
    }

    /// <summary>
    /// Continues greedily after <see cref="PrefillAsync"/>: returns up to <paramref name="count"/> tokens, the first
    /// token of the prefill included, stopping after an end-of-generation token.
    /// </summary>
    public IReadOnlyList<int> ContinueGreedy(int count)
    {
        if (_lastToken < 0)
        {
            throw new InvalidOperationException("call PrefillAsync first");
        }

        var tokens = new List<int>(count) { _lastToken };
        var vocab = _context.ModelHandle.Vocab;
        while (tokens.Count < count && !((LLamaToken)_lastToken).IsEndOfGeneration(vocab) && _position < _context.ContextSize)
        {
            _batch.Clear();
            _batch.Add(_lastToken, _position, Sequence, true);
            Decode();
            _position++;
            _lastToken = ArgMax(_context.GetLogitsIth(0));
            tokens.Add(_lastToken);
        }

        return tokens;
    }

    /// <summary><see cref="PrefillAsync"/> then <see cref="ContinueGreedy"/>.</summary>
    public async Task<(PromptResult Prompt, IReadOnlyList<int> Tokens)> GenerateAsync(ReadOnlyMemory<int> prompt, int maxTokens,
        CacheNamespace? ns = null, CancellationToken cancellationToken = default)
    {
        var result = await PrefillAsync(prompt, ns, false, cancellationToken).ConfigureAwait(false);
        return (result, ContinueGreedy(maxTokens));
    }

    /// <summary>Index of the largest value (the lowest index among equals).</summary>
    public static int ArgMax(ReadOnlySpan<float> values)
    {
        var best = 0;
        for (var i = 1; i < values.Length; i++)
        {
            if (values[i] > values[best])
            {
                best = i;
            }
        }

        return best;
    }

    /// <summary>Decodes prompt[from..] in batches of at most n_batch; returns the batch index of the last token's logits.</summary>
    private int DecodeRange(ReadOnlySpan<int> prompt, int from)
    {
        var batchSize = (int)_context.BatchSize;
        var last = 0;
        for (var i = from; i < prompt.Length; i += batchSize)
        {
            _batch.Clear();
            var end = Math.Min(prompt.Length, i + batchSize);
            for (var j = i; j < end; j++)
            {
                _batch.Add(prompt[j], j, Sequence, j == prompt.Length - 1);
            }

            Decode();
            last = _batch.TokenCount - 1;
        }

        return last;
    }

    private void Decode()
    {
        var result = _context.Decode(_batch);
        if (result != DecodeResult.Ok)
        {
            throw new InvalidOperationException($"llama_decode failed: {result}");
        }
    }
}
