using System.Text;
using LLama;
using LLama.Native;
using LMCacheSharp.Core.Keys;

namespace LMCacheSharp.Serving.Inference;

/// <summary>Where a running request is: waiting for another sequence's KV, prefilling its prompt, or decoding.</summary>
internal enum JobState
{
    /// <summary>Waits for a sequence that is prefilling the prefix it shares (<see cref="RunningJob.Donor"/>).</summary>
    WaitingForDonor,

    /// <summary>Another choice of an n &gt; 1 request: waits for its leader's prompt (<see cref="RunningJob.Leader"/>).</summary>
    WaitingForLeader,

    /// <summary>Its prompt goes into the next batches.</summary>
    Prefilling,

    /// <summary>Its pending token goes into the next batch.</summary>
    Decoding,
}

/// <summary>
/// One choice of a request while it holds a sequence: its state, its llama.cpp sampler chain, the text decoder, the
/// stop-string filter and logprobs, and the counts its usage and timings report. Owned by the inference thread.
/// </summary>
internal sealed class RunningJob : IResidentJob<RunningJob>, IDisposable
{
    public RunningJob(GenerationJob request, LLamaWeights weights, long admittedAt, int[] endOfGeneration)
    {
        Request = request;
        AdmittedAt = admittedAt;
        Sampler = CreateSampler(request, weights, endOfGeneration);
        Decoder = new StreamingTokenDecoder(Encoding.UTF8, weights);
        Stops = new StopStringFilter(request.Parameters.Stop);
        Logprobs = request.Parameters.Logprobs ? new LogprobRecorder(request.Parameters.TopLogprobs) : null;
    }

    /// <summary>Records the logprobs of generated tokens, or null when the request did not ask for them.</summary>
    public LogprobRecorder? Logprobs { get; }

    /// <summary>Characters of text decoded so far (before the stop-string filter).</summary>
    public int DecodedChars { get; set; }

    /// <summary>Characters of text released so far.</summary>
    public int EmittedChars { get; set; }

    /// <summary>For another choice of an n &gt; 1 request: the sequence prefilling the shared prompt, until it forks.</summary>
    public ResidentSequence<RunningJob>? Leader { get; set; }

    public RunningJob? LeaderJob { get; set; }

    public GenerationJob Request { get; }

    public int[] Prompt => Request.PromptTokens;

    /// <summary>Admission order, on the residency's clock.</summary>
    public long AdmittedAt { get; }

    public JobState State { get; set; }

    public SafeLLamaSamplerChainHandle Sampler { get; }

    public StreamingTokenDecoder Decoder { get; }

    public StopStringFilter Stops { get; }

    public int PendingToken { get; set; }

    public int Generated { get; set; }

    public int Prefilled { get; set; }

    public int CacheRestored { get; set; }

    /// <summary>Of <see cref="CacheRestored"/>, tokens whose chunks the prefetch brought from a tier below memory.</summary>
    public int CacheFromLowerTiers { get; set; }

    public int Shared { get; set; }

    public long FirstTokenAt { get; set; }

    public long AdmittedTimestamp { get; init; }

    public long PrefillStart { get; set; }

    public double RestoreMs { get; set; }

    /// <summary>While <see cref="JobState.WaitingForDonor"/>: the sequence whose prefix it will share.</summary>
    public ResidentSequence<RunningJob>? Donor { get; set; }

    public RunningJob? DonorJob { get; set; }

    public int DonorTokens { get; set; }

    CacheNamespace IResidentJob<RunningJob>.Namespace => Request.Namespace;

    // The other choices of a request share the leader's prompt cells: each reserves only its own tokens.
    int IResidentJob<RunningJob>.ReservedCells => (Request.Index == 0 ? Prompt.Length : 0) + Request.MaxTokens;

    ResidentSequence<RunningJob>? IResidentJob<RunningJob>.AwaitedDonor => State == JobState.WaitingForDonor ? Donor : null;

    public void Fail(string message) =>
        Request.Complete(new GenerationEvent("", FinishReason.Error, null, message));

    public void Dispose() => Sampler.Dispose();

    /// <summary>
    /// The request's llama.cpp sampler chain, in llama.cpp's own order (common_sampler): logit_bias (with ignore_eos as
    /// -inf on end-of-generation tokens), penalties over the tokens generated so far, the grammar, then top-k, top-p,
    /// min-p, temperature and the seeded draw; greedy at temperature 0 (after bias, penalties and grammar).
    /// </summary>
    private static SafeLLamaSamplerChainHandle CreateSampler(GenerationJob request, LLamaWeights weights, int[] endOfGeneration)
    {
        var p = request.Parameters;
        var chain = SafeLLamaSamplerChainHandle.Create(LLamaSamplerChainParams.Default());
        var eog = p.IgnoreEos ? endOfGeneration : [];
        if (eog.Length > 0 || p.LogitBias.Count > 0)
        {
            var biases = p.LogitBias.Where(b => !eog.Contains(b.Key)).Select(b => new LLamaLogitBias { Token = (LLamaToken)b.Key, Bias = b.Value })
                .Concat(eog.Select(t => new LLamaLogitBias { Token = (LLamaToken)t, Bias = float.NegativeInfinity })).ToArray();
            chain.AddLogitBias(weights.Vocab.Count, biases);
        }

        if (p.RepetitionPenalty != 1 || p.FrequencyPenalty != 0 || p.PresencePenalty != 0)
        {
            // The window covers every generated token; the prompt is not fed to the chain (vLLM's presence and
            // frequency penalties count output tokens only; its repetition_penalty counts the prompt too).
            chain.AddPenalties(request.MaxTokens, p.RepetitionPenalty, p.FrequencyPenalty, p.PresencePenalty);
        }

        if (p.Grammar is not null)
        {
            chain.AddGrammar(weights.NativeHandle, p.Grammar, "root");
        }

        if (p.Temperature <= 0)
        {
            chain.AddGreedySampler();
            return chain;
        }

        if (p.TopK > 0)
        {
            chain.AddTopK(p.TopK);
        }

        if (p.TopP < 1)
        {
            chain.AddTopP(p.TopP, 1);
        }

        if (p.MinP > 0)
        {
            chain.AddMinP(p.MinP, 1);
        }

        chain.AddTemperature(p.Temperature);
        chain.AddDistributionSampler(request.Seed ?? (uint)Random.Shared.Next());
        return chain;
    }
}
