using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Threading.Channels;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Serving.OpenAi;

namespace LMCacheSharp.Serving.Inference;

/// <summary>Why generation ended (OpenAI's finish_reason).</summary>
public enum FinishReason
{
    /// <summary>End of generation token or a stop string.</summary>
    Stop,
    /// <summary>max_tokens reached.</summary>
    Length,
    /// <summary>The server failed the request (reported as an error).</summary>
    Error,
    /// <summary>The client went away.</summary>
    Cancelled,
}

/// <summary>Token counts of a finished request.</summary>
/// <param name="PromptTokens">Tokens in the prompt.</param>
/// <param name="CompletionTokens">Tokens generated.</param>
/// <param name="CachedTokens">Prompt tokens not prefilled: restored from the KV cache or shared from a sequence in the context.</param>
/// <param name="CacheRestoredTokens">Of those, tokens restored from the cache tiers.</param>
/// <param name="SharedTokens">Of those, tokens shared with another sequence of the same context.</param>
public readonly record struct GenerationUsage(int PromptTokens, int CompletionTokens, int CachedTokens, int CacheRestoredTokens, int SharedTokens);

/// <summary>
/// Where a request's time went, in llama-server's terms (its <c>timings</c> object) plus the cache's part.
/// </summary>
/// <param name="CacheN">Prompt tokens not prefilled (restored from the cache tiers or shared in the context).</param>
/// <param name="PromptN">Prompt tokens prefilled.</param>
/// <param name="QueueMs">From arrival to admission (lookup and waiting for a sequence).</param>
/// <param name="RestoreMs">Writing the cached KV into the sequence.</param>
/// <param name="PromptMs">From the end of the restore to the first token: the prefill of <paramref name="PromptN"/> tokens (in batches shared with other requests).</param>
/// <param name="PredictedN">Tokens generated.</param>
/// <param name="PredictedMs">From the first token to the end.</param>
public readonly record struct GenerationTimings(int CacheN, int PromptN, double QueueMs, double RestoreMs, double PromptMs, int PredictedN, double PredictedMs)
{
    /// <summary>
    /// Of <see cref="CacheN"/>, tokens restored from chunks this request fetched from a tier below memory (disk or remote);
    /// the rest came from this instance's memory tier or a sequence of its context. 0 when nothing was restored.
    /// </summary>
    public int CacheLowerTierN { get; init; }
}

/// <summary>One event of a generation stream: a piece of text, or the end.</summary>
/// <param name="Text">Text produced since the previous event (may be empty).</param>
/// <param name="Finish">Set on the last event.</param>
/// <param name="Usage">Set on the last event.</param>
/// <param name="Error">Set when the request failed.</param>
public readonly record struct GenerationEvent(string Text, FinishReason? Finish = null, GenerationUsage? Usage = null, string? Error = null)
{
    /// <summary>Set on the last event of a request that ran.</summary>
    public GenerationTimings? Timings { get; init; }

    /// <summary>The choice (0..n-1) this event belongs to.</summary>
    public int Index { get; init; }

    /// <summary>When logprobs were asked for: those of the tokens whose text this event releases (null when none).</summary>
    public IReadOnlyList<TokenLogprob>? Logprobs { get; init; }
}

/// <summary>
/// One choice of a request as the scheduler sees it. Created by <see cref="InferenceService.SubmitAsync"/>, which returns
/// choice 0; a request with n choices has n jobs (<see cref="Choices"/>) that share one event stream (<see cref="Events"/>,
/// each event tagged with its <see cref="GenerationEvent.Index"/>), completed after the last choice's final event.
/// </summary>
public sealed class GenerationJob
{
    private readonly Channel<GenerationEvent> _events;
    private readonly StrongBox<int> _running;

    internal GenerationJob(int[] promptTokens, GenerationParameters parameters, int maxTokens, CacheNamespace ns, CancellationToken cancellation)
        : this(promptTokens, parameters, maxTokens, ns, 0, null, null, cancellation)
    {
        var choices = new GenerationJob[parameters.N];
        choices[0] = this;
        for (var i = 1; i < choices.Length; i++)
        {
            choices[i] = new GenerationJob(promptTokens, parameters, maxTokens, ns, i, _events, _running, cancellation);
        }

        Choices = choices;
        _running.Value = choices.Length;
    }

    private GenerationJob(int[] promptTokens, GenerationParameters parameters, int maxTokens, CacheNamespace ns, int index,
        Channel<GenerationEvent>? events, StrongBox<int>? running, CancellationToken cancellation)
    {
        PromptTokens = promptTokens;
        Parameters = parameters;
        MaxTokens = maxTokens;
        Namespace = ns;
        Cancellation = cancellation;
        StartTimestamp = Stopwatch.GetTimestamp();
        Index = index;
        _events = events ?? Channel.CreateUnbounded<GenerationEvent>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        _running = running ?? new StrongBox<int>();
        Choices = [this];

        // Distinct, reproducible streams per choice: choice i samples with seed + i (choice 0 exactly as with n = 1).
        Seed = parameters.Seed is { } seed ? unchecked(seed + (uint)index) : null;
    }

    /// <summary>The choice index (0..n-1).</summary>
    public int Index { get; }

    /// <summary>All choices of the request, choice 0 first (only choice 0 knows them all; another choice lists itself).</summary>
    public IReadOnlyList<GenerationJob> Choices { get; }

    /// <summary>This choice's sampling seed, or null for a random one.</summary>
    public uint? Seed { get; }

    /// <summary>The prompt's tokens.</summary>
    public int[] PromptTokens { get; }

    /// <summary>Sampling and cache parameters.</summary>
    public GenerationParameters Parameters { get; }

    /// <summary>Tokens to generate at most.</summary>
    public int MaxTokens { get; }

    /// <summary>Key namespace (model, salt, tags).</summary>
    public CacheNamespace Namespace { get; }

    /// <summary>Fires when the client goes away.</summary>
    public CancellationToken Cancellation { get; }

    /// <summary>When the request arrived.</summary>
    public long StartTimestamp { get; }

    /// <summary>The events, in order; completes after the final event.</summary>
    public ChannelReader<GenerationEvent> Events => _events.Reader;

    /// <summary>The pinned cached prefix, restored on the inference thread without touching a tier; released when restored or when the request ends.</summary>
    internal LMCacheSharp.Core.Engine.CachedPrefix? Prefix { get; set; }

    internal void ReleasePrefix()
    {
        Prefix?.Dispose();
        Prefix = null;
    }

    /// <summary>Time from arrival to the first token, once known.</summary>
    public TimeSpan? TimeToFirstToken { get; internal set; }

    internal void Emit(GenerationEvent e) => _events.Writer.TryWrite(e with { Index = Index });

    /// <summary>The final event's usage and finish reason, once the request ended.</summary>
    public GenerationEvent? Final { get; private set; }

    internal void Complete(GenerationEvent last)
    {
        if (Final is not null)
        {
            return; // completed once: a second completion must not end the other choices' stream
        }

        Final = last with { Index = Index };
        ReleasePrefix();
        _events.Writer.TryWrite(Final.Value);
        if (Interlocked.Decrement(ref _running.Value) == 0)
        {
            _events.Writer.TryComplete();
        }
    }

    /// <summary>Completes every choice that has not ended with <paramref name="last"/> (a request that never ran).</summary>
    internal void CompleteAll(GenerationEvent last)
    {
        foreach (var choice in Choices)
        {
            choice.Complete(last);
        }
    }
}
