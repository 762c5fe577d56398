using System.Diagnostics;
using LLama;
using LLama.Native;
using LMCacheSharp.LlamaCpp;
using Microsoft.Extensions.Logging;
using Sequence = LMCacheSharp.Serving.Inference.ResidentSequence<LMCacheSharp.Serving.Inference.RunningJob>;

namespace LMCacheSharp.Serving.Inference;

/// <summary>
/// The llama.cpp side of the scheduler, on the inference thread: each <see cref="Step"/> builds one batch
/// (<see cref="SchedulerPlanner.ComposeBatch"/>: the next token of every decoding sequence, then as many prompt tokens of
/// prefilling ones as fit in n_batch), decodes it once, samples where logits were asked for, emits the text, forks the
/// other choices of an n &gt; 1 request from their leader's prompt, finishes requests and stores their KV in the cache. It
/// never admits or plans (<see cref="InferenceScheduler"/>) and changes sequences only through
/// <see cref="SequenceResidency{TJob}"/>.
/// </summary>
internal sealed class BatchExecutor
{
    private readonly LLamaWeights _weights;
    private readonly LLamaContext _context;
    private readonly LlamaKvCache? _cache;
    private readonly SequenceResidency<RunningJob> _residency;
    private readonly ServingMetrics _metrics;
    private readonly ILogger _logger;
    private readonly bool _inContextSharing;
    private readonly bool _prefillRole;
    private readonly TimeSpan _prefillStoreTimeout;
    private readonly LLamaBatch _batch = new();
    private readonly int[] _endOfGeneration;

    public BatchExecutor(LLamaWeights weights, LLamaContext context, LlamaKvCache? cache, SequenceResidency<RunningJob> residency,
        ServingOptions options, ServingMetrics metrics, ILogger logger)
    {
        _weights = weights;
        _context = context;
        _cache = cache;
        _residency = residency;
        _metrics = metrics;
        _logger = logger;
        _inContextSharing = options.EnableInContextSharing && options.KvUnified;
        _prefillRole = options.Role == ServeRole.Prefill && cache is not null;
        _prefillStoreTimeout = options.PrefillStoreTimeout;
        BatchSize = (int)context.BatchSize;
        _endOfGeneration = Enumerable.Range(0, weights.Vocab.Count).Where(t => ((LLamaToken)t).IsEndOfGeneration(weights.Vocab)).ToArray();
    }

    /// <summary>Tokens one decode takes at most (n_batch).</summary>
    public int BatchSize { get; }

    /// <summary>A new request's running state (its sampler chain among it), admitted now on the residency's clock.</summary>
    public RunningJob NewJob(GenerationJob request, long admittedTimestamp) =>
        new(request, _weights, _residency.Tick(), _endOfGeneration) { AdmittedTimestamp = admittedTimestamp };

    /// <summary>One batch: compose, decode, then sample, emit, finish and store for every sequence in it.</summary>
    public void Step()
    {
        var sequences = _residency.Sequences;
        _batch.Clear();
        var candidates = new BatchCandidate?[sequences.Count];
        for (var i = 0; i < sequences.Count; i++)
        {
            candidates[i] = sequences[i].Job switch
            {
                { State: JobState.Decoding } => new BatchCandidate(true, sequences[i].Materialized.Count, 0, 0),
                { State: JobState.Prefilling } job => new BatchCandidate(false, sequences[i].Materialized.Count, job.Prompt.Length, job.AdmittedAt),
                _ => null,
            };
        }

        var inBatch = new List<(Sequence Sequence, int Count, int LogitIndex)>();
        foreach (var part in SchedulerPlanner.ComposeBatch(candidates, BatchSize))
        {
            var sequence = sequences[part.Sequence];
            var job = sequence.Job!;
            if (job.State == JobState.Decoding)
            {
                inBatch.Add((sequence, 1, _batch.TokenCount));
                _batch.Add((LLamaToken)job.PendingToken, part.Start, sequence.Id, true);
                continue;
            }

            var logitIndex = part.WantsLogits ? _batch.TokenCount + part.Count - 1 : -1;
            for (var i = 0; i < part.Count; i++)
            {
                _batch.Add((LLamaToken)job.Prompt[part.Start + i], part.Start + i, sequence.Id, part.WantsLogits && i == part.Count - 1);
            }

            inBatch.Add((sequence, part.Count, logitIndex));
        }

        _residency.MakeRoom(_batch.TokenCount);

        if (_batch.TokenCount == 0)
        {
            if (sequences.Any(s => s.Job is { State: JobState.WaitingForDonor }))
            {
                Thread.Sleep(1); // donors are all blocked? should not happen; avoid a hot spin
            }

            return;
        }

        var decodeStart = Stopwatch.GetTimestamp();
        var result = _context.NativeHandle.Decode(_batch);
        var decodeTime = Stopwatch.GetElapsedTime(decodeStart);
        _metrics.Decoded(_batch.TokenCount, decodeTime);
        if (_logger.IsEnabled(LogLevel.Trace))
        {
            _logger.LogTrace("decode: {Tokens} tokens of {Sequences} sequences in {Ms:F1} ms", _batch.TokenCount, inBatch.Count, decodeTime.TotalMilliseconds);
        }
        if (result == DecodeResult.NoKvSlot)
        {
            if (!_residency.EvictOneResident())
            {
                // No finished sequence left to drop: fail the newest request to make room for the others.
                // (Admission reserves prompt + max_tokens for every request, so this is a backstop, not a policy.)
                var victim = sequences.Where(s => s.Job is not null).MaxBy(s => s.Job!.AdmittedAt)!;
                _logger.LogWarning("llama_decode found no KV slot with {Running} requests running; failing the newest", _residency.RunningCount);
                Fail(victim, "the context is full (too many tokens in flight); retry later");
            }

            return; // nothing was decoded; the next step rebuilds the batch
        }

        if (result != DecodeResult.Ok)
        {
            // The batch's sequences may hold part of it: fail exactly those requests and free their cells; the others go on.
            _logger.LogError("llama_decode failed ({Result}) for a batch of {Tokens} tokens; failing its {Requests} requests", result, _batch.TokenCount, inBatch.Count);
            foreach (var (sequence, _, _) in inBatch)
            {
                Fail(sequence, $"inference failed (llama_decode: {result})");
            }

            return;
        }

        foreach (var (sequence, count, logitIndex) in inBatch)
        {
            var job = sequence.Job!;
            if (job.State == JobState.Decoding)
            {
                sequence.Materialized.Add(job.PendingToken);
                SampleAndEmit(sequence, logitIndex);
                continue;
            }

            // Prefilling.
            sequence.Materialized.AddRange(job.Prompt.AsSpan(sequence.Materialized.Count, count));
            job.Prefilled += count;
            _metrics.Prefilled(count);
            if (logitIndex >= 0)
            {
                job.State = JobState.Decoding;
                ForkChoices(sequence, job, logitIndex); // before the leader samples: its first token may finish it
                SampleAndEmit(sequence, logitIndex); // may finish the request (max_tokens 1, end of generation): Finish stores then
                if (sequence.Job == job)
                {
                    // After the first token went out: storing never delays it.
                    Store(sequence, job, job.Prompt);
                }
            }
        }

        _residency.ClearIdle();
    }

    /// <summary>Fails the sequence's request (if any), frees its cells and makes it free: nothing stays half-admitted.</summary>
    public void Fail(Sequence sequence, string message)
    {
        if (sequence.Job is { } job)
        {
            job.Fail(message);
            _metrics.Finished("error", job.Prompt.Length, job.CacheRestored + job.Shared, job.Generated, 0);
            job.Dispose();
            _residency.Vacate(sequence);
        }

        _residency.Clear(sequence); // a request waiting on this sequence as its donor is planned again by the scheduler
    }

    /// <summary>Ends the requests whose client went away; a half-prefilled sequence is freed, a prompt's KV stays resident.</summary>
    public void DropCancelled()
    {
        foreach (var sequence in _residency.Sequences)
        {
            if (sequence.Job is { } job && job.Request.Cancellation.IsCancellationRequested)
            {
                job.Request.Complete(new GenerationEvent("", FinishReason.Cancelled));
                _metrics.Finished("cancelled", job.Prompt.Length, job.CacheRestored + job.Shared, job.Generated, 0);
                job.Dispose();
                _residency.Vacate(sequence);
                if (sequence.Materialized.Count < job.Prompt.Length && job.State != JobState.Decoding)
                {
                    _residency.Clear(sequence); // a half-prefilled sequence is of little use; free its cells
                }
            }
        }
    }

    /// <summary>
    /// Stores the KV of <paramref name="tokens"/> (held by the sequence at positions 0..): new whole chunks to every
    /// tier, the partial last chunk to memory (token-exact reuse). Memory-tier work completes synchronously; lower tiers
    /// are written in the background. A failure is logged and the request goes on.
    /// </summary>
    private void Store(Sequence sequence, RunningJob job, ReadOnlyMemory<int> tokens)
    {
        if (job.Request.Parameters.SkipSave || _cache is null || tokens.Length < 2)
        {
            return;
        }

        try
        {
            _cache.StoreAsync(sequence.Id, tokens, job.CacheRestored, job.Request.Namespace).AsTask().GetAwaiter().GetResult();
        }
        catch (Exception e)
        {
            _logger.LogWarning(e, "storing KV failed; the request goes on");
        }
    }

    /// <summary>
    /// The other choices of a request (n &gt; 1) whose leader has just decoded the last prompt token: each gets the prompt's
    /// cells by <c>llama_memory_seq_cp</c> (shared cells, no copy, no second prefill) and samples its first token from the
    /// same logits with its own sampler.
    /// </summary>
    private void ForkChoices(Sequence leader, RunningJob job, int logitIndex)
    {
        foreach (var sequence in _residency.Sequences)
        {
            if (sequence.Job is not { State: JobState.WaitingForLeader } choice || choice.LeaderJob != job)
            {
                continue;
            }

            _residency.Share(leader, sequence, job.Prompt);
            choice.Leader = null;
            choice.LeaderJob = null;
            choice.PrefillStart = job.PrefillStart;
            choice.State = JobState.Decoding;
            SampleAndEmit(sequence, logitIndex);
        }
    }

    private void SampleAndEmit(Sequence sequence, int logitIndex)
    {
        var job = sequence.Job!;
        var logits = job.Logprobs is null ? default : _context.NativeHandle.GetLogitsIth(logitIndex);
        job.Logprobs?.Prepare(logits); // the raw distribution: read before the chain samples
        var token = job.Sampler.Sample(_context.NativeHandle, logitIndex);
        if (job.Generated == 0)
        {
            job.Request.TimeToFirstToken = Stopwatch.GetElapsedTime(job.Request.StartTimestamp);
            job.FirstTokenAt = Stopwatch.GetTimestamp();
            _metrics.FirstToken(job.Request.TimeToFirstToken.Value);
        }

        job.Generated++;
        if (token.IsEndOfGeneration(_weights.Vocab))
        {
            Finish(sequence, FinishReason.Stop);
            return;
        }

        var offset = job.DecodedChars;
        job.Decoder.Add(token);
        var decoded = job.Decoder.Read();
        job.DecodedChars += decoded.Length;
        job.Logprobs?.Record((int)token, logits, offset);
        var text = job.Stops.Push(decoded);
        job.EmittedChars += text.Length;
        if (text.Length > 0)
        {
            job.Request.Emit(new GenerationEvent(text) { Logprobs = job.Logprobs?.Take(job.EmittedChars) });
        }

        if (job.Stops.Stopped)
        {
            Finish(sequence, FinishReason.Stop);
        }
        else if (job.Generated >= job.Request.MaxTokens || sequence.Materialized.Count + 1 >= _residency.ContextSize)
        {
            Finish(sequence, FinishReason.Length);
        }
        else
        {
            job.PendingToken = (int)token;
        }
    }

    private void Finish(Sequence sequence, FinishReason reason)
    {
        var job = sequence.Job!;
        var tail = job.Stops.Flush();
        job.EmittedChars += tail.Length;

        // After a stop string, the tokens that made it are not reported; otherwise every token is (its text is all out).
        var logprobs = job.Logprobs?.Take(job.Stops.Stopped ? job.EmittedChars : null);
        var usage = new GenerationUsage(job.Prompt.Length, job.Generated, job.CacheRestored + job.Shared, job.CacheRestored, job.Shared);
        var now = Stopwatch.GetTimestamp();
        var timings = new GenerationTimings(
            CacheN: usage.CachedTokens,
            PromptN: job.Prefilled,
            QueueMs: Stopwatch.GetElapsedTime(job.Request.StartTimestamp, job.AdmittedTimestamp).TotalMilliseconds,
            RestoreMs: job.RestoreMs,
            PromptMs: job.FirstTokenAt == 0 ? 0 : Stopwatch.GetElapsedTime(job.PrefillStart, job.FirstTokenAt).TotalMilliseconds,
            PredictedN: job.Generated,
            PredictedMs: job.FirstTokenAt == 0 ? 0 : Stopwatch.GetElapsedTime(job.FirstTokenAt, now).TotalMilliseconds)
        {
            CacheLowerTierN = job.CacheFromLowerTiers,
        };
        var final = new GenerationEvent(tail, reason, usage) { Timings = timings, Logprobs = logprobs };
        _metrics.Timings(timings);
        if (_prefillRole)
        {
            // A prefill instance answers once the prompt's KV is in the shared store: the decode instance restores it next.
            Store(sequence, job, sequence.Materialized.ToArray());
            _ = CompleteAfterFlushAsync(job.Request, final);
        }
        else
        {
            job.Request.Complete(final);

            // The completion's KV too (LMCache's save_decode_cache): the next chat turn restores the whole exchange.
            if (_cache?.Engine.SaveDecodeCache == true)
            {
                Store(sequence, job, sequence.Materialized.ToArray()); // the list changes as the sequence is reused: the store reads a copy
            }
        }

        _metrics.Finished(reason.ToString().ToLowerInvariant(), job.Prompt.Length, usage.CachedTokens, job.Generated,
            job.FirstTokenAt == 0 ? 0 : Stopwatch.GetElapsedTime(job.FirstTokenAt).TotalSeconds);
        job.Dispose();
        _residency.Vacate(sequence);
        if (!_inContextSharing)
        {
            sequence.ClearWhenIdle = true; // nobody can reuse it: free the cells at the end of this step (after the store)
        }

        // Otherwise it stays resident: its cells serve later requests with the same prefix.
    }

    /// <summary>
    /// Completes a prefill-role request once every write queued so far (its chunks among them) reached the lower tiers, or
    /// after <see cref="ServingOptions.PrefillStoreTimeout"/>: a slow or dead shared store delays the answer, never fails it
    /// (the decode instance then prefills what it cannot restore). Runs off the inference thread.
    /// </summary>
    private async Task CompleteAfterFlushAsync(GenerationJob request, GenerationEvent final)
    {
        try
        {
            await _cache!.Engine.FlushAsync().WaitAsync(_prefillStoreTimeout).ConfigureAwait(false);
        }
        catch (Exception e) when (e is TimeoutException or ObjectDisposedException or InvalidOperationException)
        {
            _logger.LogWarning("prefill: the prompt's KV did not reach the shared store within {Timeout} s ({Reason}); answering anyway",
                _prefillStoreTimeout.TotalSeconds, e.Message);
        }

        request.Complete(final);
    }
}
