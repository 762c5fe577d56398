using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Threading.Channels;
using LLama;
using LMCacheSharp.LlamaCpp;
using Microsoft.Extensions.Logging;
using Sequence = LMCacheSharp.Serving.Inference.ResidentSequence<LMCacheSharp.Serving.Inference.RunningJob>;

namespace LMCacheSharp.Serving.Inference;

/// <summary>
/// Runs every request of one llama.cpp context on one dedicated thread, in three parts: this class queues requests,
/// admits them and plans where each one's prefix KV comes from, applying the pure decisions of
/// <see cref="SchedulerPlanner"/>; <see cref="SequenceResidency{TJob}"/> keeps which sequence holds which request and
/// which tokens, and the finished sequences kept resident; <see cref="BatchExecutor"/> builds, decodes and samples each
/// step's batch and finishes and stores requests.
/// A new request first reuses KV: the longest prefix it shares with a sequence in the context (running or finished, same
/// model, salt and tags) is shared with <c>llama_memory_seq_cp</c> (no data copy); a longer chunk-aligned prefix found in
/// the cache tiers is restored instead. A request whose prefix another sequence is still prefilling waits for it rather
/// than computing the same tokens twice. After a request's first token, its new chunks are stored in the cache.
/// A finished sequence stays resident until the next request is admitted: it serves that request's prefix if they share
/// one, and is freed otherwise (resident cells slow every decode; the cache tiers keep the KV).
/// </summary>
internal sealed class InferenceScheduler : IDisposable
{
    private readonly LlamaKvCache? _cache;
    private readonly ServingMetrics _metrics;
    private readonly ILogger _logger;
    private readonly bool _inContextSharing;
    private readonly Channel<GenerationJob> _queue;
    private readonly SequenceResidency<RunningJob> _residency;
    private readonly BatchExecutor _executor;
    private readonly Thread _thread;
    private readonly CancellationTokenSource _stop = new();

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
        _cache = cache;
        _metrics = metrics;
        _logger = logger;
        _inContextSharing = options.EnableInContextSharing && options.KvUnified; // cells are shared only within one stream
        _queue = Channel.CreateBounded<GenerationJob>(new BoundedChannelOptions(Math.Max(1, options.MaxQueuedRequests)) { SingleReader = true });
        _residency = options.KvUnified
            ? new SequenceResidency<RunningJob>(options.MaxConcurrentRequests, (int)context.ContextSize, new ContextSequenceMemory(context.NativeHandle))
            : new SequenceResidency<RunningJob>(options.MaxConcurrentRequests, InferenceService.CellsPerRequest(context.ContextSize, options),
                new ContextSequenceMemory(context.NativeHandle, perSequenceStreams: true), perSequence: true);
        _executor = new BatchExecutor(weights, context, cache, _residency, options, metrics, logger);
        _thread = new Thread(Run) { IsBackground = true, Name = "lmcache-inference" };
        _thread.Start();
    }

    public int BatchSize => _executor.BatchSize;

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
        foreach (var sequence in _residency.Sequences)
        {
            sequence.Job?.Fail("server shutting down");
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
                    if (_residency.RunningCount == 0 && _waitingForRoom is null)
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
                    Volatile.Write(ref _residentSequences, _residency.ResidentCount);
                    Volatile.Write(ref _running, _residency.RunningCount + (_waitingForRoom is null ? 0 : 1));
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
                    foreach (var sequence in _residency.Sequences)
                    {
                        _executor.Fail(sequence, "internal error during inference"); // frees residents too
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
        _executor.Step();
    }

    private void DropCancelled()
    {
        if (_waitingForRoom is { Cancellation.IsCancellationRequested: true } waiting)
        {
            _waitingForRoom = null;
            waiting.CompleteAll(new GenerationEvent("", FinishReason.Cancelled));
            FinishedUnrun("cancelled", waiting);
        }

        _executor.DropCancelled();
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
            var sequence = _residency.FreeSequences().FirstOrDefault();
            if (sequence is null)
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
            var free = _residency.FreeSequences().Take(choices.Count).ToList();
            if (!SchedulerPlanner.Fits(_residency.ReservedCells(), request.PromptTokens.Length, choices.Count, request.MaxTokens, _residency.ContextSize,
                    _residency.RunningCount > 0, free.Count))
            {
                _waitingForRoom = request;
                return;
            }

            var admitted = Stopwatch.GetTimestamp();
            var job = _executor.NewJob(request, admitted);
            _residency.Occupy(sequence, job);
            foreach (var (choiceSequence, choice) in free.Where(s => s != sequence).Zip(choices.Skip(1)))
            {
                var choiceJob = _executor.NewJob(choice, admitted);
                choiceJob.State = JobState.WaitingForLeader;
                choiceJob.Leader = sequence;
                choiceJob.LeaderJob = job;
                _residency.Occupy(choiceSequence, choiceJob);
            }

            Plan(sequence);
            job.PrefillStart = Stopwatch.GetTimestamp();
        }
    }

    /// <summary>Decides where the new job's prefix KV comes from: another sequence, the cache tiers, or nowhere.</summary>
    private void Plan(Sequence sequence)
    {
        var job = sequence.Job!;
        var prompt = job.Prompt;
        Sequence? donor = null;
        var shared = 0;
        if (_inContextSharing)
        {
            var views = _residency.Sequences.Select(other => new SequenceView(
                // A running donor will have its whole prompt; a finished one has what it materialized.
                other.Job is { } running ? running.Prompt : other.Materialized.ToArray(),
                other.Job?.Request.Namespace.Seed ?? other.Namespace?.Seed,
                other.Job is { State: JobState.WaitingForDonor or JobState.WaitingForLeader })).ToList();
            var (index, common) = SchedulerPlanner.ChooseDonor(prompt, job.Request.Namespace.Seed, sequence.Index, views, MinSharedTokens);
            donor = index < 0 ? null : _residency.Sequences[index];
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
            _residency.FreeResidentsExcept(sequence, null);
            _residency.MakeRoom(pinned.Tokens);
            // The chunks were pinned in memory before the request was queued: this touches no tier and never waits on I/O.
            var restoreStart = Stopwatch.GetTimestamp();
            fromLowerTiers = pinned.LowerTierTokens; // read before the restore releases the pins
            cached = _cache!.Restore(sequence.Id, pinned);
            job.RestoreMs = Stopwatch.GetElapsedTime(restoreStart).TotalMilliseconds;

            if (cached <= 0 || !_residency.EndsAt(sequence, cached))
            {
                _residency.DiscardCells(sequence);
                cached = 0;
            }
        }

        var source = SchedulerPlanner.Resolve(cached, shared, donor is not null);
        if (cached > 0 && source != KvSource.Restore)
        {
            // The context holds more of the prefix than the tiers gave: drop the restore and share instead.
            _residency.DiscardCells(sequence);
        }

        if (source == KvSource.Restore)
        {
            job.Request.ReleasePrefix(); // restored: the pins go now
            job.CacheRestored = cached;
            job.CacheFromLowerTiers = Math.Min(fromLowerTiers, cached);
            sequence.Materialized.AddRange(prompt.AsSpan(0, cached));
            job.State = JobState.Prefilling;
            return;
        }

        _residency.FreeResidentsExcept(sequence, donor); // a donor always shares at least MinSharedTokens
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
    /// Moves on the requests that wait: another choice whose leader went away plans its own prompt; a request whose donor
    /// now holds the shared prefix takes its cells, and one whose donor went away or changed plans again.
    /// </summary>
    private void WakeWaiters()
    {
        foreach (var sequence in _residency.Sequences)
        {
            if (sequence.Job is { State: JobState.WaitingForLeader } choice && choice.Leader!.Job != choice.LeaderJob)
            {
                // The leader failed or went away before its first token: this choice computes its own prompt.
                choice.Leader = null;
                choice.LeaderJob = null;
                Plan(sequence);
                choice.PrefillStart = Stopwatch.GetTimestamp();
            }

            if (sequence.Job is not { State: JobState.WaitingForDonor } job)
            {
                continue;
            }

            var donor = job.Donor!;
            var stillRunning = donor.Job is not null && donor.Job == job.DonorJob;
            switch (SchedulerPlanner.AwaitDonor(CollectionsMarshal.AsSpan(donor.Materialized), stillRunning, job.Prompt, job.DonorTokens))
            {
                case DonorWait.PlanAgain:
                    // The donor went away or changed: plan again (cache or full prefill).
                    job.Donor = null;
                    Plan(sequence);
                    break;
                case DonorWait.Share:
                    _residency.Share(donor, sequence, job.Prompt.AsSpan(0, job.DonorTokens));
                    job.Shared = job.DonorTokens;
                    job.Donor = null;
                    job.State = JobState.Prefilling;
                    if (donor.Job is null && !_residency.IsDonor(donor))
                    {
                        // A finished donor has served: its cells past the shared prefix would only widen attention for everyone.
                        _residency.Clear(donor);
                    }

                    break;
                case DonorWait.Wait:
                    break;
            }
        }
    }
}
