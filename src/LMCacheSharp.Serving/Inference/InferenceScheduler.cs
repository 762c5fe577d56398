using System.Diagnostics;
using System.Text;
using System.Threading.Channels;
using LLama;
using LLama.Native;
using LMCacheSharp.LlamaCpp;
using Microsoft.Extensions.Logging;

namespace LMCacheSharp.Serving.Inference;

/// <summary>
/// Runs every request of one llama.cpp context on one dedicated thread. Each running request owns a sequence; each step
/// builds one batch with the next token of every decoding sequence and as many prompt tokens of prefilling sequences as
/// fit (n_batch), decodes it once, and samples where logits were asked for.
/// A new request first reuses KV: the longest prefix it shares with a sequence in the context (running or finished, same
/// model, salt and tags) is shared with <c>llama_memory_seq_cp</c> (no data copy); a longer chunk-aligned prefix found in
/// the cache tiers is restored instead. A request whose prefix another sequence is still prefilling waits for it rather
/// than computing the same tokens twice. After a request's first token, its new chunks are stored in the cache.
/// A finished sequence stays resident until the next request is admitted: it serves that request's prefix if they share
/// one, and is freed otherwise (resident cells slow every decode; the cache tiers keep the KV).
/// </summary>
internal sealed class InferenceScheduler : IDisposable
{
    private readonly LLamaWeights _weights;
    private readonly LLamaContext _context;
    private readonly LlamaKvCache? _cache;
    private readonly ServingMetrics _metrics;
    private readonly ILogger _logger;
    private readonly bool _inContextSharing;
    private readonly bool _prefillRole;
    private readonly TimeSpan _prefillStoreTimeout;
    private readonly Channel<GenerationJob> _queue;
    private readonly Slot[] _slots;
    private readonly Thread _thread;
    private readonly CancellationTokenSource _stop = new();
    private readonly LLamaBatch _batch = new();
    private readonly int[] _endOfGeneration;
    private long _clock;

    /// <summary>
    /// Shorter common prefixes (a chat template's first tokens) are not shared: keeping the other sequence's cells for them
    /// costs more attention than the few tokens save.
    /// </summary>
    internal const int MinSharedTokens = 32;

    private int _residentSequences;
    private long _lastProgress = Stopwatch.GetTimestamp();
    private int _running;
    private int _queued;
    private volatile bool _loopDead;
    private GenerationJob? _waitingForRoom;

    /// <summary>Finished sequences whose cells are still in the context (as of the last step).</summary>
    public int ResidentSequences => Volatile.Read(ref _residentSequences);

    public InferenceScheduler(LLamaWeights weights, LLamaContext context, LlamaKvCache? cache, ServingOptions options,
        ServingMetrics metrics, ILogger logger)
    {
        _weights = weights;
        _context = context;
        _cache = cache;
        _metrics = metrics;
        _logger = logger;
        _inContextSharing = options.EnableInContextSharing;
        _prefillRole = options.Role == ServeRole.Prefill && cache is not null;
        _prefillStoreTimeout = options.PrefillStoreTimeout;
        BatchSize = (int)context.BatchSize;
        _queue = Channel.CreateBounded<GenerationJob>(new BoundedChannelOptions(Math.Max(1, options.MaxQueuedRequests)) { SingleReader = true });
        _slots = Enumerable.Range(0, options.MaxConcurrentRequests).Select(i => new Slot((LLamaSeqId)i)).ToArray();
        _endOfGeneration = Enumerable.Range(0, weights.Vocab.Count).Where(t => ((LLamaToken)t).IsEndOfGeneration(weights.Vocab)).ToArray();
        _thread = new Thread(Run) { IsBackground = true, Name = "lmcache-inference" };
        _thread.Start();
    }

    public int BatchSize { get; }

    /// <summary>When the loop last finished a step or went idle (a <see cref="Stopwatch"/> timestamp).</summary>
    public long LastProgressTimestamp => Interlocked.Read(ref _lastProgress);

    /// <summary>Requests running or queued (as of the last step, plus those queued since).</summary>
    public int Pending => Volatile.Read(ref _running) + Volatile.Read(ref _queued);

    /// <summary>Requests holding a sequence (as of the last step).</summary>
    public int Running => Volatile.Read(ref _running);

    /// <summary>Requests waiting for a sequence (as of the last step, plus those queued since).</summary>
    public int Queued => Volatile.Read(ref _queued);

    /// <summary>True when the inference thread ended while the scheduler was not disposed.</summary>
    public bool LoopDead => _loopDead;

    /// <summary>Test hook: runs at the start of every step on the inference thread.</summary>
    internal Action? BeforeStep { get; set; }

    /// <summary>Queues a job; false when the queue is full.</summary>
    public bool TryEnqueue(GenerationJob job)
    {
        if (!_queue.Writer.TryWrite(job))
        {
            return false;
        }

        Interlocked.Increment(ref _queued);
        return true;
    }

    public void Dispose()
    {
        _stop.Cancel();
        _queue.Writer.TryComplete();
        _thread.Join(TimeSpan.FromSeconds(30));
        foreach (var slot in _slots)
        {
            slot.Job?.Fail("server shutting down");
        }

        _waitingForRoom?.CompleteAll(new GenerationEvent("", FinishReason.Error, null, "server shutting down"));
        while (_queue.Reader.TryRead(out var job))
        {
            job.CompleteAll(new GenerationEvent("", FinishReason.Error, null, "server shutting down"));
        }

        _stop.Dispose();
    }

    private void Run()
    {
        try
        {
            while (!_stop.IsCancellationRequested)
            {
                try
                {
                    if (!_slots.Any(s => s.Job is not null) && _waitingForRoom is null)
                    {
                        // Idle: block until a request arrives (idle counts as progress: nothing is stuck).
                        Interlocked.Exchange(ref _lastProgress, Stopwatch.GetTimestamp());
                        if (!_queue.Reader.WaitToReadAsync(_stop.Token).AsTask().GetAwaiter().GetResult())
                        {
                            return;
                        }
                    }

                    BeforeStep?.Invoke();
                    Step();
                    Volatile.Write(ref _residentSequences, _slots.Count(s => s.Job is null && s.Materialized.Count > 0));
                    Volatile.Write(ref _running, _slots.Count(s => s.Job is not null) + (_waitingForRoom is null ? 0 : 1));
                    Interlocked.Exchange(ref _lastProgress, Stopwatch.GetTimestamp());
                }
                catch (OperationCanceledException) when (_stop.IsCancellationRequested)
                {
                    return;
                }
                catch (Exception e)
                {
                    // Never let one bad step kill the server: fail what was running and go on with a clean context.
                    _logger.LogError(e, "inference step failed; failing the running requests");
                    foreach (var slot in _slots)
                    {
                        FailSlot(slot, "internal error during inference"); // frees residents too
                    }
                }
            }
        }
        finally
        {
            _loopDead = !_stop.IsCancellationRequested;
        }
    }

    private void Step()
    {
        DropCancelled();
        Admit();
        WakeWaiters();

        _batch.Clear();
        var candidates = new BatchCandidate?[_slots.Length];
        for (var i = 0; i < _slots.Length; i++)
        {
            candidates[i] = _slots[i].Job switch
            {
                { State: JobState.Decoding } => new BatchCandidate(true, _slots[i].Materialized.Count, 0, 0),
                { State: JobState.Prefilling } job => new BatchCandidate(false, _slots[i].Materialized.Count, job.Prompt.Length, job.AdmittedAt),
                _ => null,
            };
        }

        var inBatch = new List<(Slot Slot, int Count, int LogitIndex)>();
        foreach (var part in SchedulerPlanner.ComposeBatch(candidates, BatchSize))
        {
            var slot = _slots[part.Sequence];
            var job = slot.Job!;
            if (job.State == JobState.Decoding)
            {
                inBatch.Add((slot, 1, _batch.TokenCount));
                _batch.Add((LLamaToken)job.PendingToken, part.Start, slot.Sequence, true);
                continue;
            }

            var logitIndex = part.WantsLogits ? _batch.TokenCount + part.Count - 1 : -1;
            for (var i = 0; i < part.Count; i++)
            {
                _batch.Add((LLamaToken)job.Prompt[part.Start + i], part.Start + i, slot.Sequence, part.WantsLogits && i == part.Count - 1);
            }

            inBatch.Add((slot, part.Count, logitIndex));
        }

        MakeRoom(_batch.TokenCount);

        if (_batch.TokenCount == 0)
        {
            if (_slots.Any(s => s.Job is { State: JobState.WaitingForDonor }))
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
            if (!EvictOneResident())
            {
                // No finished sequence left to drop: fail the newest request to make room for the others.
                // (Admission reserves prompt + max_tokens for every request, so this is a backstop, not a policy.)
                var victim = _slots.Where(s => s.Job is not null).MaxBy(s => s.Job!.AdmittedAt)!;
                _logger.LogWarning("llama_decode found no KV slot with {Running} requests running; failing the newest", _slots.Count(s => s.Job is not null));
                FailSlot(victim, "the context is full (too many tokens in flight); retry later");
            }

            return; // nothing was decoded; the next step rebuilds the batch
        }

        if (result != DecodeResult.Ok)
        {
            // The batch's sequences may hold part of it: fail exactly those requests and free their cells; the others go on.
            _logger.LogError("llama_decode failed ({Result}) for a batch of {Tokens} tokens; failing its {Requests} requests", result, _batch.TokenCount, inBatch.Count);
            foreach (var (slot, _, _) in inBatch)
            {
                FailSlot(slot, $"inference failed (llama_decode: {result})");
            }

            return;
        }

        foreach (var (slot, count, logitIndex) in inBatch)
        {
            var job = slot.Job!;
            if (job.State == JobState.Decoding)
            {
                slot.Materialized.Add(job.PendingToken);
                SampleAndEmit(slot, logitIndex);
                continue;
            }

            // Prefilling.
            slot.Materialized.AddRange(job.Prompt.AsSpan(slot.Materialized.Count, count));
            job.Prefilled += count;
            _metrics.Prefilled(count);
            if (logitIndex >= 0)
            {
                job.State = JobState.Decoding;
                ForkChoices(slot, job, logitIndex); // before the leader samples: its first token may finish it
                SampleAndEmit(slot, logitIndex); // may finish the request (max_tokens 1, end of generation): Finish stores then
                if (slot.Job == job)
                {
                    // After the first token went out: storing never delays it.
                    Store(slot, job, job.Prompt);
                }
            }
        }

        ClearIdleSlots();
    }

    /// <summary>
    /// Stores the KV of <paramref name="tokens"/> (held by the slot's sequence at positions 0..): new whole chunks to every
    /// tier, the partial last chunk to memory (token-exact reuse). Memory-tier work completes synchronously; lower tiers
    /// are written in the background. A failure is logged and the request goes on.
    /// </summary>
    private void Store(Slot slot, RunningJob job, ReadOnlyMemory<int> tokens)
    {
        if (job.Request.Parameters.SkipSave || _cache is null || tokens.Length < 2)
        {
            return;
        }

        try
        {
            _cache.StoreAsync(slot.Sequence, tokens, job.CacheRestored, job.Request.Namespace).AsTask().GetAwaiter().GetResult();
        }
        catch (Exception e)
        {
            _logger.LogWarning(e, "storing KV failed; the request goes on");
        }
    }

    private void ClearIdleSlots()
    {
        foreach (var slot in _slots)
        {
            if (slot.ClearWhenIdle && slot.Job is null)
            {
                ClearSlot(slot);
            }

            slot.ClearWhenIdle = false;
        }
    }

    /// <summary>Fails the slot's request (if any), frees its sequence and makes the slot free: nothing stays half-admitted.</summary>
    private void FailSlot(Slot slot, string message)
    {
        if (slot.Job is { } job)
        {
            job.Fail(message);
            _metrics.Finished("error", job.Prompt.Length, job.CacheRestored + job.Shared, job.Generated, 0);
            job.Dispose();
            slot.Job = null;
            slot.LastUsed = ++_clock;
        }

        ClearSlot(slot); // a request waiting on this slot as its donor is planned again by WakeWaiters
    }

    /// <summary>
    /// The other choices of a request (n &gt; 1) whose leader has just decoded the last prompt token: each gets the prompt's
    /// cells by <c>llama_memory_seq_cp</c> (shared cells, no copy, no second prefill) and samples its first token from the
    /// same logits with its own sampler.
    /// </summary>
    private void ForkChoices(Slot leader, RunningJob job, int logitIndex)
    {
        foreach (var slot in _slots)
        {
            if (slot.Job is not { State: JobState.WaitingForLeader } choice || choice.LeaderJob != job)
            {
                continue;
            }

            _context.NativeHandle.MemorySequenceCopy(leader.Sequence, slot.Sequence, 0, job.Prompt.Length);
            slot.Materialized.AddRange(job.Prompt);
            choice.Leader = null;
            choice.LeaderJob = null;
            choice.PrefillStart = job.PrefillStart;
            choice.State = JobState.Decoding;
            SampleAndEmit(slot, logitIndex);
        }
    }

    private void SampleAndEmit(Slot slot, int logitIndex)
    {
        var job = slot.Job!;
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
            Finish(slot, FinishReason.Stop);
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
            Finish(slot, FinishReason.Stop);
        }
        else if (job.Generated >= job.Request.MaxTokens || slot.Materialized.Count + 1 >= _context.ContextSize)
        {
            Finish(slot, FinishReason.Length);
        }
        else
        {
            job.PendingToken = (int)token;
        }
    }

    private void Finish(Slot slot, FinishReason reason)
    {
        var job = slot.Job!;
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
        if (_prefillRole)
        {
            // A prefill instance answers once the prompt's KV is in the shared store: the decode instance restores it next.
            Store(slot, job, slot.Materialized.ToArray());
            _ = CompleteAfterFlushAsync(job.Request, final);
        }
        else
        {
            job.Request.Complete(final);
        }

        _metrics.Timings(timings);

        // The completion's KV too (LMCache's save_decode_cache): the next chat turn restores the whole exchange.
        if (!_prefillRole && _cache?.Engine.SaveDecodeCache == true)
        {
            Store(slot, job, slot.Materialized.ToArray()); // the list changes as the slot is reused: the store reads a copy
        }
        _metrics.Finished(reason.ToString().ToLowerInvariant(), job.Prompt.Length, usage.CachedTokens, job.Generated,
            job.FirstTokenAt == 0 ? 0 : Stopwatch.GetElapsedTime(job.FirstTokenAt).TotalSeconds);
        job.Dispose();
        slot.Job = null;
        slot.LastUsed = ++_clock;
        if (!_inContextSharing)
        {
            slot.ClearWhenIdle = true; // nobody can reuse it: free the cells at the end of this step (after the store)
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

    private void DropCancelled()
    {
        if (_waitingForRoom is { Cancellation.IsCancellationRequested: true } waiting)
        {
            _waitingForRoom = null;
            waiting.CompleteAll(new GenerationEvent("", FinishReason.Cancelled));
            FinishedUnrun("cancelled", waiting);
        }

        foreach (var slot in _slots)
        {
            if (slot.Job is { } job && job.Request.Cancellation.IsCancellationRequested)
            {
                job.Request.Complete(new GenerationEvent("", FinishReason.Cancelled));
                _metrics.Finished("cancelled", job.Prompt.Length, job.CacheRestored + job.Shared, job.Generated, 0);
                job.Dispose();
                slot.Job = null;
                slot.LastUsed = ++_clock;
                if (slot.Materialized.Count < job.Prompt.Length && job.State != JobState.Decoding)
                {
                    ClearSlot(slot); // a half-prefilled sequence is of little use; free its cells
                }
            }
        }
    }

    /// <summary>Counts a request that never ran: each of its choices was counted as started.</summary>
    private void FinishedUnrun(string reason, GenerationJob request)
    {
        foreach (var _ in request.Choices)
        {
            _metrics.Finished(reason, request.PromptTokens.Length, 0, 0, 0);
        }
    }

    private void Admit()
    {
        while (true)
        {
            // A free sequence: an empty one first, else the least recently used finished one that no waiting request relies on.
            var slot = _slots.Where(s => s.Job is null && !IsDonor(s)).OrderBy(s => s.Materialized.Count == 0 ? 0 : 1).ThenBy(s => s.LastUsed).FirstOrDefault();
            if (slot is null)
            {
                return;
            }

            var request = _waitingForRoom;
            if (request is null)
            {
                if (!_queue.Reader.TryRead(out request))
                {
                    return;
                }

                Interlocked.Decrement(ref _queued);
            }

            _waitingForRoom = null;
            if (request.Cancellation.IsCancellationRequested)
            {
                request.CompleteAll(new GenerationEvent("", FinishReason.Cancelled));
                FinishedUnrun("cancelled", request);
                continue;
            }

            // Every running request may grow to prompt + max_tokens cells (n choices share the prompt's): admit only what
            // fits beside them, so a request never fails because of the others (it waits, first in line, until one
            // finishes). A request with n choices waits for n free sequences (SubmitAsync caps n at their number).
            var choices = request.Choices;
            var free = _slots.Where(s => s.Job is null && !IsDonor(s)).OrderBy(s => s.Materialized.Count == 0 ? 0 : 1).ThenBy(s => s.LastUsed)
                .Take(choices.Count).ToList();
            if (!SchedulerPlanner.Fits(ReservedCells(), request.PromptTokens.Length, choices.Count, request.MaxTokens, (int)_context.ContextSize,
                    _slots.Any(s => s.Job is not null), free.Count))
            {
                _waitingForRoom = request;
                return;
            }

            var admitted = Stopwatch.GetTimestamp();
            ClearSlot(slot);
            var job = new RunningJob(request, _weights, ++_clock, _endOfGeneration) { AdmittedTimestamp = admitted };
            slot.Job = job;
            foreach (var (choiceSlot, choice) in free.Where(s => s != slot).Zip(choices.Skip(1)))
            {
                ClearSlot(choiceSlot);
                choiceSlot.Job = new RunningJob(choice, _weights, ++_clock, _endOfGeneration)
                {
                    AdmittedTimestamp = admitted,
                    State = JobState.WaitingForLeader,
                    Leader = slot,
                    LeaderJob = job,
                };
            }

            Plan(slot);
            job.PrefillStart = Stopwatch.GetTimestamp();
        }
    }

    /// <summary>Decides where the new job's prefix KV comes from: another sequence, the cache tiers, or nowhere.</summary>
    private void Plan(Slot slot)
    {
        var job = slot.Job!;
        var prompt = job.Prompt;
        Slot? donor = null;
        var shared = 0;
        if (_inContextSharing)
        {
            var views = _slots.Select(other => new SequenceView(
                // A running donor will have its whole prompt; a finished one has what it materialized.
                other.Job is { } running ? running.Prompt : other.Materialized.ToArray(),
                other.Job?.Request.Namespace.Seed ?? other.Namespace?.Seed,
                other.Job is { State: JobState.WaitingForDonor or JobState.WaitingForLeader })).ToList();
            var (index, common) = SchedulerPlanner.ChooseDonor(prompt, job.Request.Namespace.Seed, Array.IndexOf(_slots, slot), views, MinSharedTokens);
            donor = index < 0 ? null : _slots[index];
            shared = common;
        }

        var cached = 0;
        var fromLowerTiers = 0;
        // (Chunks stored since the prefetch, e.g. by the request just before, are pinned now: memory only, no wait.)
        var pinned = _cache is null ? null : job.Request.Prefix;
        if (pinned is not null && _cache!.ExtendInMemory(pinned) > 0 && pinned.TailTokens > 0 &&
            !SchedulerPlanner.KeepTail(pinned.TailTokens, pinned.TailChunkTokens, prompt.Length, pinned.Tokens))
        {
            pinned.DropTail(); // a short tail before a long prefill costs more attention than it saves
        }

        if (pinned is not null && SchedulerPlanner.ShouldRestore(pinned.Tokens, shared))
        {
            // The tiers hold more of the prefix than any sequence here: free the residents first, so that the restored
            // cells and the prefill after them land low in the KV (a narrow attention window).
            FreeResidentsExcept(slot, null);
            MakeRoom(pinned.Tokens);
            // The chunks were pinned in memory before the request was queued: this touches no tier and never waits on I/O.
            var restoreStart = Stopwatch.GetTimestamp();
            fromLowerTiers = pinned.LowerTierTokens; // read before the restore releases the pins
            cached = _cache!.Restore(slot.Sequence, pinned);
            job.RestoreMs = Stopwatch.GetElapsedTime(restoreStart).TotalMilliseconds;

            if (cached <= 0 || _context.NativeHandle.MemorySequenceMaxPosition(slot.Sequence) != cached - 1)
            {
                _context.NativeHandle.MemorySequenceRemove(slot.Sequence, -1, -1);
                cached = 0;
            }
        }

        var source = SchedulerPlanner.Resolve(cached, shared, donor is not null);
        if (cached > 0 && source != KvSource.Restore)
        {
            // The context holds more of the prefix than the tiers gave: drop the restore and share instead.
            _context.NativeHandle.MemorySequenceRemove(slot.Sequence, -1, -1);
        }

        if (source == KvSource.Restore)
        {
            job.Request.ReleasePrefix(); // restored: the pins go now
            job.CacheRestored = cached;
            job.CacheFromLowerTiers = Math.Min(fromLowerTiers, cached);
            slot.Materialized.AddRange(prompt.AsSpan(0, cached));
            job.State = JobState.Prefilling;
            return;
        }

        FreeResidentsExcept(slot, donor); // a donor always shares at least MinSharedTokens
        if (donor is not null)
        {
            // The pins stay while it waits: if the donor goes away, the next plan restores from them.
            job.Donor = donor;
            job.DonorTokens = shared;
            job.DonorJob = donor.Job;
            job.State = JobState.WaitingForDonor;
            return;
        }

        job.Request.ReleasePrefix();
        job.State = JobState.Prefilling;
    }

    /// <summary>
    /// Frees the finished sequences that the request in <paramref name="slot"/> does not build on. Every resident cell widens
    /// the attention window of every later decode in the unified KV (measured: four residents of ~1,500 tokens made prefills
    /// of unrelated prompts 3-4x slower on CPU), and the cache tiers keep their chunks anyway. So a finished sequence serves
    /// the next request admitted, if that one shares its prefix, and nothing after it.
    /// </summary>
    private void FreeResidentsExcept(Slot slot, Slot? donor)
    {
        foreach (var other in _slots)
        {
            if (other != slot && other != donor && other.Job is null && other.Materialized.Count > 0 && !IsDonor(other))
            {
                ClearSlot(other);
            }
        }
    }

    private void WakeWaiters()
    {
        foreach (var slot in _slots)
        {
            if (slot.Job is { State: JobState.WaitingForLeader } choice && choice.Leader!.Job != choice.LeaderJob)
            {
                // The leader failed or went away before its first token: this choice computes its own prompt.
                choice.Leader = null;
                choice.LeaderJob = null;
                Plan(slot);
                choice.PrefillStart = Stopwatch.GetTimestamp();
            }

            if (slot.Job is not { State: JobState.WaitingForDonor } job)
            {
                continue;
            }

            var donor = job.Donor!;
            var stillRunning = donor.Job is not null && donor.Job == job.DonorJob;
            var holdsPrefix = donor.Materialized.Count >= job.DonorTokens &&
                CommonPrefix(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(donor.Materialized), job.Prompt) >= job.DonorTokens;
            if (!stillRunning && !holdsPrefix)
            {
                // The donor went away or changed: plan again (cache or full prefill).
                job.Donor = null;
                Plan(slot);
                continue;
            }

            if (holdsPrefix)
            {
                _context.NativeHandle.MemorySequenceCopy(donor.Sequence, slot.Sequence, 0, job.DonorTokens);
                slot.Materialized.AddRange(job.Prompt.AsSpan(0, job.DonorTokens));
                job.Shared = job.DonorTokens;
                job.Donor = null;
                job.State = JobState.Prefilling;
                if (donor.Job is null && !IsDonor(donor))
                {
                    // A finished donor has served: its cells past the shared prefix would only widen attention for everyone.
                    ClearSlot(donor);
                }
            }
        }
    }

    /// <summary>
    /// Evicts finished sequences, least recently used first, until <paramref name="tokens"/> more cells fit. The sum
    /// over-counts cells that sequences share, so this errs towards evicting; NoKvSlot on decode is the backstop. Fewer
    /// resident cells also make every decode cheaper: attention runs over the used range of the unified cache.
    /// </summary>
    private void MakeRoom(int tokens)
    {
        while (_slots.Sum(s => s.Materialized.Count) + tokens > _context.ContextSize && EvictOneResident())
        {
        }
    }

    private bool EvictOneResident()
    {
        var victim = _slots.Where(s => s.Job is null && s.Materialized.Count > 0 && !IsDonor(s)).MinBy(s => s.LastUsed);
        if (victim is null)
        {
            return false;
        }

        ClearSlot(victim);
        return true;
    }

    // The other choices of a request share the leader's prompt cells: each reserves only its own tokens.
    private int ReservedCells() => _slots.Sum(s => s.Job is { } j ? (j.Request.Index == 0 ? j.Prompt.Length : 0) + j.Request.MaxTokens : 0);

    private bool IsDonor(Slot slot) => _slots.Any(s => s.Job is { State: JobState.WaitingForDonor } j && j.Donor == slot);

    private void ClearSlot(Slot slot)
    {
        _context.NativeHandle.MemorySequenceRemove(slot.Sequence, -1, -1);
        slot.Materialized.Clear();
        slot.Namespace = null;
    }

    private static int CommonPrefix(ReadOnlySpan<int> a, ReadOnlySpan<int> b) => a.CommonPrefixLength(b);

    private enum JobState
    {
        WaitingForDonor,
        WaitingForLeader,
        Prefilling,
        Decoding,
    }

    private sealed class Slot(LLamaSeqId sequence)
    {
        public LLamaSeqId Sequence { get; } = sequence;

        public RunningJob? Job
        {
            get;
            set
            {
                field = value;
                if (value is not null)
                {
                    Namespace = value.Request.Namespace;
                }
            }
        }

        /// <summary>Tokens whose KV the sequence holds, at positions 0..Count-1.</summary>
        public List<int> Materialized { get; } = [];

        public LMCacheSharp.Core.Keys.CacheNamespace? Namespace { get; set; }

        public long LastUsed { get; set; }

        public bool ClearWhenIdle { get; set; }
    }

    private sealed class RunningJob : IDisposable
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
        public Slot? Leader { get; set; }

        public RunningJob? LeaderJob { get; set; }

        public GenerationJob Request { get; }

        public int[] Prompt => Request.PromptTokens;

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

        public Slot? Donor { get; set; }

        public RunningJob? DonorJob { get; set; }

        public int DonorTokens { get; set; }

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
}
