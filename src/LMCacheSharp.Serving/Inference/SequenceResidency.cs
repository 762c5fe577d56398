using LLama.Native;
using LMCacheSharp.Core.Keys;

namespace LMCacheSharp.Serving.Inference;

/// <summary>What <see cref="SequenceResidency{TJob}"/> needs to know of the request a sequence runs.</summary>
/// <typeparam name="TJob">The running request's type (<see cref="RunningJob"/>; a fake in tests).</typeparam>
internal interface IResidentJob<TJob> where TJob : class, IResidentJob<TJob>
{
    /// <summary>Its key namespace (model, salt, tags): a finished sequence keeps it, so only the same namespace shares its cells.</summary>
    CacheNamespace Namespace { get; }

    /// <summary>Cells it may grow to (prompt + max_tokens; another choice of an n &gt; 1 request shares the prompt's cells).</summary>
    int ReservedCells { get; }

    /// <summary>The sequence whose prefix it waits to share, or null: that sequence is never freed, evicted or reused meanwhile.</summary>
    ResidentSequence<TJob>? AwaitedDonor { get; }
}

/// <summary>The few llama.cpp calls the residency makes on the context's KV memory (a fake in tests).</summary>
internal interface ISequenceMemory
{
    /// <summary>Removes every cell of <paramref name="sequence"/> (<c>llama_memory_seq_rm(seq, -1, -1)</c>).</summary>
    void Remove(LLamaSeqId sequence);

    /// <summary>Makes <paramref name="to"/> share the cells of positions 0..count-1 of <paramref name="from"/> (<c>llama_memory_seq_cp</c>: no data copy).</summary>
    void Copy(LLamaSeqId from, LLamaSeqId to, int count);

    /// <summary>The highest position <paramref name="sequence"/> holds, -1 when it holds none (<c>llama_memory_seq_pos_max</c>).</summary>
    int MaxPosition(LLamaSeqId sequence);
}

/// <summary>
/// <see cref="ISequenceMemory"/> on a llama.cpp context. With per-sequence KV streams a copy is of a whole stream
/// (llama.cpp copies the buffer at the next decode and aborts on a partial range), so <see cref="Copy"/> then takes only a
/// sequence that holds exactly the positions to copy (an n &gt; 1 request's leader right after its prompt).
/// </summary>
internal sealed class ContextSequenceMemory(SafeLLamaContextHandle context, bool perSequenceStreams = false) : ISequenceMemory
{
    public void Remove(LLamaSeqId sequence) => context.MemorySequenceRemove(sequence, -1, -1);

    public void Copy(LLamaSeqId from, LLamaSeqId to, int count)
    {
        if (!perSequenceStreams)
        {
            context.MemorySequenceCopy(from, to, 0, count);
            return;
        }

        if (context.MemorySequenceMinPosition(from).Value != 0 || context.MemorySequenceMaxPosition(from).Value != count - 1)
        {
            throw new InvalidOperationException($"per-sequence KV streams copy whole sequences only: sequence {from.Value} does not hold exactly positions 0..{count - 1}");
        }

        context.MemorySequenceRemove(to, -1, -1);
        context.MemorySequenceCopy(from, to, -1, -1);
    }

    public int MaxPosition(LLamaSeqId sequence) => (int)context.MemorySequenceMaxPosition(sequence);
}

/// <summary>
/// One sequence of the context: the request it runs, if any, and the tokens whose KV it holds. A sequence with no request
/// that still holds tokens is resident (a finished request's KV, kept for the next request's prefix). Its state changes
/// through <see cref="SequenceResidency{TJob}"/>, except <see cref="Materialized"/>, which grows as batches are decoded.
/// </summary>
internal sealed class ResidentSequence<TJob>(LLamaSeqId id, int index) where TJob : class, IResidentJob<TJob>
{
    /// <summary>The llama.cpp sequence id.</summary>
    public LLamaSeqId Id { get; } = id;

    /// <summary>Its position in <see cref="SequenceResidency{TJob}.Sequences"/> (the planner's index).</summary>
    public int Index { get; } = index;

    /// <summary>The request it runs, or null.</summary>
    public TJob? Job { get; private set; }

    /// <summary>Tokens whose KV the sequence holds, at positions 0..Count-1.</summary>
    public List<int> Materialized { get; } = [];

    /// <summary>The namespace of the request that filled it (kept after that request finished), or null when cleared.</summary>
    public CacheNamespace? Namespace { get; private set; }

    /// <summary>When its last request left, on the residency's clock (least recently used goes first).</summary>
    public long LastUsed { get; private set; }

    /// <summary>Set when a request finished with in-context sharing off: the cells go at the end of the step.</summary>
    public bool ClearWhenIdle { get; set; }

    /// <summary>No request, but cells: a finished request's KV.</summary>
    public bool IsResident => Job is null && Materialized.Count > 0;

    internal void Occupy(TJob job)
    {
        Job = job;
        Namespace = job.Namespace;
    }

    internal void Vacate(long now)
    {
        Job = null;
        LastUsed = now;
    }

    internal void Forget()
    {
        Materialized.Clear();
        Namespace = null;
    }
}

/// <summary>
/// Which sequence of the context holds which request, the tokens each one's KV holds, and the finished sequences kept
/// resident for prefix sharing: choosing a free sequence, sharing a prefix between sequences, freeing and evicting, and
/// the cells the running requests reserve. No decisions about requests and no decoding here: the scheduler admits and
/// plans (<see cref="SchedulerPlanner"/>), the executor decodes (<see cref="BatchExecutor"/>). Used on one thread.
/// </summary>
/// <typeparam name="TJob">The running request's type (<see cref="RunningJob"/>; a fake in tests).</typeparam>
internal sealed class SequenceResidency<TJob> where TJob : class, IResidentJob<TJob>
{
    private readonly ResidentSequence<TJob>[] _sequences;
    private readonly ISequenceMemory _memory;
    private long _clock;

    /// <param name="sequences">Sequences of the context (one per concurrent request), ids 0..sequences-1.</param>
    /// <param name="contextSize">Cells in the context (every sequence together), or in each sequence's stream with <paramref name="perSequence"/>.</param>
    /// <param name="memory">The context's KV memory.</param>
    /// <param name="perSequence">Each sequence has a KV stream of its own of <paramref name="contextSize"/> cells (no cells shared
    /// between sequences, no room to make for one another).</param>
    public SequenceResidency(int sequences, int contextSize, ISequenceMemory memory, bool perSequence = false)
    {
        PerSequence = perSequence;
        _sequences = Enumerable.Range(0, sequences).Select(i => new ResidentSequence<TJob>((LLamaSeqId)i, i)).ToArray();
        ContextSize = contextSize;
        _memory = memory;
    }

    public IReadOnlyList<ResidentSequence<TJob>> Sequences => _sequences;

    /// <summary>Cells of the context (all sequences together), or of each sequence's stream with <see cref="PerSequence"/>.</summary>
    public int ContextSize { get; }

    /// <summary>Each sequence has a KV stream of its own.</summary>
    public bool PerSequence { get; }

    /// <summary>Finished sequences whose cells are still in the context.</summary>
    public int ResidentCount => _sequences.Count(s => s.IsResident);

    /// <summary>Sequences running a request.</summary>
    public int RunningCount => _sequences.Count(s => s.Job is not null);

    /// <summary>The residency's clock: admission order and least-recently-used order share it.</summary>
    public long Tick() => ++_clock;

    /// <summary>
    /// Sequences a new request may take, in the order to take them: empty ones first, then finished ones, least recently
    /// used first; never one that a waiting request will share a prefix from.
    /// </summary>
    public IEnumerable<ResidentSequence<TJob>> FreeSequences() =>
        _sequences.Where(s => s.Job is null && !IsDonor(s)).OrderBy(s => s.Materialized.Count == 0 ? 0 : 1).ThenBy(s => s.LastUsed);

    /// <summary>Gives <paramref name="sequence"/> to <paramref name="job"/>, freeing whatever it held.</summary>
    public void Occupy(ResidentSequence<TJob> sequence, TJob job)
    {
        Clear(sequence);
        sequence.Occupy(job);
    }

    /// <summary>Its request left (finished, failed or cancelled); the cells stay until cleared.</summary>
    public void Vacate(ResidentSequence<TJob> sequence) => sequence.Vacate(Tick());

    /// <summary>Frees the sequence's cells and forgets what it held (not the request it runs).</summary>
    public void Clear(ResidentSequence<TJob> sequence)
    {
        _memory.Remove(sequence.Id);
        sequence.Forget();
    }

    /// <summary>Drops cells written outside the residency's account (a restore that did not take or is not used).</summary>
    public void DiscardCells(ResidentSequence<TJob> sequence) => _memory.Remove(sequence.Id);

    /// <summary>Whether the sequence's cells end at position <paramref name="tokens"/> - 1 (a restore of that many took).</summary>
    public bool EndsAt(ResidentSequence<TJob> sequence, int tokens) => _memory.MaxPosition(sequence.Id) == tokens - 1;

    /// <summary>Gives <paramref name="to"/> the cells of <paramref name="from"/> for <paramref name="tokens"/>, its first tokens (no data copy).</summary>
    public void Share(ResidentSequence<TJob> from, ResidentSequence<TJob> to, ReadOnlySpan<int> tokens)
    {
        _memory.Copy(from.Id, to.Id, tokens.Length);
        to.Materialized.AddRange(tokens);
    }

    /// <summary>Whether a waiting request will share a prefix from <paramref name="sequence"/>.</summary>
    public bool IsDonor(ResidentSequence<TJob> sequence) => _sequences.Any(s => s.Job?.AwaitedDonor == sequence);

    /// <summary>
    /// Frees the finished sequences that the request in <paramref name="sequence"/> does not build on. Every resident cell
    /// widens the attention window of every later decode in the unified KV (measured: four residents of ~1,500 tokens made
    /// prefills of unrelated prompts 3-4x slower on CPU), and the cache tiers keep their chunks anyway. So a finished
    /// sequence serves the next request admitted, if that one shares its prefix, and nothing after it.
    /// </summary>
    public void FreeResidentsExcept(ResidentSequence<TJob> sequence, ResidentSequence<TJob>? donor)
    {
        foreach (var other in _sequences)
        {
            if (other != sequence && other != donor && other.IsResident && !IsDonor(other))
            {
                Clear(other);
            }
        }
    }

    /// <summary>
    /// Evicts finished sequences, least recently used first, until <paramref name="tokens"/> more cells fit. The sum
    /// over-counts cells that sequences share, so this errs towards evicting; NoKvSlot on decode is the backstop. Fewer
    /// resident cells also make every decode cheaper: attention runs over the used range of the unified cache.
    /// </summary>
    public void MakeRoom(int tokens)
    {
        while (!PerSequence && _sequences.Sum(s => s.Materialized.Count) + tokens > ContextSize && EvictOneResident())
        {
        }
    }

    /// <summary>Frees the least recently used finished sequence that no waiting request relies on; false when there is none.</summary>
    public bool EvictOneResident()
    {
        var victim = _sequences.Where(s => s.IsResident && !IsDonor(s)).MinBy(s => s.LastUsed);
        if (victim is null)
        {
            return false;
        }

        Clear(victim);
        return true;
    }

    /// <summary>
    /// Cells the running requests may grow to (<see cref="IResidentJob{TJob}.ReservedCells"/>) in the cells a new request
    /// would take from: all of them on a unified cache, none with <see cref="PerSequence"/> (each sequence has its own).
    /// </summary>
    public int ReservedCells() => PerSequence ? 0 : _sequences.Sum(s => s.Job?.ReservedCells ?? 0);

    /// <summary>Frees the sequences marked <see cref="ResidentSequence{TJob}.ClearWhenIdle"/> that no request took since; unmarks all.</summary>
    public void ClearIdle()
    {
        foreach (var sequence in _sequences)
        {
            if (sequence.ClearWhenIdle && sequence.Job is null)
            {
                Clear(sequence);
            }

            sequence.ClearWhenIdle = false;
        }
    }
}
