using LMCacheSharp.Core.Keys;

namespace LMCacheSharp.Serving.Inference;

/// <summary>A sequence of the context as the planner sees it: what it holds (or will hold) and whether it may donate.</summary>
/// <param name="Tokens">A running request's whole prompt (it will hold it), or what a finished sequence materialized.</param>
/// <param name="Namespace">The namespace seed of its request (model, salt, tags), or null for an empty sequence.</param>
/// <param name="Waiting">Whether its request waits for a donor or its leader (then it never donates: waits form no cycle).</param>
internal readonly record struct SequenceView(ReadOnlyMemory<int> Tokens, ChunkHash? Namespace, bool Waiting);

/// <summary>A sequence's part of the next decode batch.</summary>
/// <param name="Sequence">Index of the sequence in the scheduler's list.</param>
/// <param name="Start">Position of its first token in the batch.</param>
/// <param name="Count">Tokens it puts in (1 for a decoding sequence).</param>
/// <param name="WantsLogits">Whether its last token in the batch is sampled (a decode step, or the last prompt token).</param>
internal readonly record struct BatchPart(int Sequence, int Start, int Count, bool WantsLogits);

/// <summary>A sequence as the batch composer sees it.</summary>
/// <param name="Decoding">Decoding (one pending token) rather than prefilling.</param>
/// <param name="Materialized">Tokens whose KV it holds.</param>
/// <param name="PromptLength">Its request's prompt length (prefilling sequences).</param>
/// <param name="AdmittedAt">Admission order (older prefills go first).</param>
internal readonly record struct BatchCandidate(bool Decoding, int Materialized, int PromptLength, long AdmittedAt);

/// <summary>Where a new request's prefix KV comes from.</summary>
internal enum KvSource
{
    /// <summary>Nothing reusable: prefill the whole prompt.</summary>
    Prefill,

    /// <summary>Restored from the cache tiers (the memory tier's pinned chunks).</summary>
    Restore,

    /// <summary>Shared from another sequence of the context (<c>llama_memory_seq_cp</c>, no copy).</summary>
    Share,
}

/// <summary>What a request waiting for its donor does this step.</summary>
internal enum DonorWait
{
    /// <summary>The donor is still prefilling the shared prefix: wait.</summary>
    Wait,

    /// <summary>The donor holds the shared prefix: take its cells.</summary>
    Share,

    /// <summary>The donor went away or changed before it held the prefix: plan again (the cache tiers or a full prefill).</summary>
    PlanAgain,
}

/// <summary>
/// The scheduler's decisions as pure functions of the request and of the resident and cached state: which sequence a new
/// request shares its prefix with, whether the cache tiers serve more, whether it fits beside the running requests, and
/// what goes into the next decode batch. No llama.cpp here: <see cref="InferenceScheduler"/> applies the decisions to the
/// <see cref="SequenceResidency{TJob}"/>, and <see cref="BatchExecutor"/> decodes the batches.
/// </summary>
internal static class SchedulerPlanner
{
    /// <summary>
    /// The sequence sharing the longest prefix with <paramref name="prompt"/> (same namespace, not waiting, not
    /// <paramref name="self"/>), and how many tokens it shares: at most the prompt minus its last token (whose logits are
    /// computed), and nothing under <paramref name="minShared"/>. (-1, 0) when none does.
    /// </summary>
    public static (int Donor, int Shared) ChooseDonor(ReadOnlySpan<int> prompt, ChunkHash seed, int self, IReadOnlyList<SequenceView> sequences, int minShared)
    {
        var donor = -1;
        var shared = 0;
        for (var i = 0; i < sequences.Count; i++)
        {
            var other = sequences[i];
            if (i == self || other.Waiting || other.Namespace != seed)
            {
                continue;
            }

            var common = Math.Min(other.Tokens.Span.CommonPrefixLength(prompt), prompt.Length - 1);
            if (common > shared && common >= minShared)
            {
                shared = common;
                donor = i;
            }
        }

        return (donor, shared);
    }

    /// <summary>
    /// For a request waiting to share <paramref name="sharedTokens"/> of its prompt with a donor: share once the donor's
    /// cells hold that prefix (<paramref name="donorTokens"/>, what it materialized so far), wait while the donor still runs
    /// the request it had when chosen, and plan again when that request went away (finished, failed, cancelled) without the
    /// donor holding the prefix.
    /// </summary>
    public static DonorWait AwaitDonor(ReadOnlySpan<int> donorTokens, bool donorStillRunning, ReadOnlySpan<int> prompt, int sharedTokens)
    {
        var holdsPrefix = donorTokens.Length >= sharedTokens && donorTokens.CommonPrefixLength(prompt) >= sharedTokens;
        return holdsPrefix ? DonorWait.Share : donorStillRunning ? DonorWait.Wait : DonorWait.PlanAgain;
    }

    /// <summary>
    /// Whether a token-exact tail is worth restoring. The tail chunk goes in whole and the cells past its
    /// <paramref name="tailTokens"/> are removed, which leaves a hole of the rest in the unified KV cells. A prefill that
    /// fits in the hole fills it; a longer one lands past it, and the hole widens the attention window of every token
    /// computed after it (measured on stories260K: a 10-token tail before a 1,800-token prefill made the prefill 18%
    /// slower). In attention work: keeping costs hole x the tokens left to compute, dropping costs the tail's tokens x the
    /// prompt's length; the tail is kept unless the first is larger (or when what is left fits in the hole).
    /// </summary>
    public static bool KeepTail(int tailTokens, int tailChunkTokens, int promptTokens, int cachedTokens)
    {
        long hole = tailChunkTokens - tailTokens;
        long remaining = promptTokens - cachedTokens;
        return remaining <= hole || hole * remaining <= (long)tailTokens * promptTokens;
    }

    /// <summary>Whether to restore from the tiers: only when they hold more of the prefix than the best donor shares.</summary>
    public static bool ShouldRestore(int cachedTokens, int sharedTokens) => cachedTokens > sharedTokens;

    /// <summary>The source once the restore (if any) is done: the tiers win only when they gave more than a donor shares.</summary>
    public static KvSource Resolve(int restoredTokens, int sharedTokens, bool hasDonor) =>
        restoredTokens > sharedTokens ? KvSource.Restore : hasDonor ? KvSource.Share : KvSource.Prefill;

    /// <summary>
    /// Whether a request of <paramref name="promptTokens"/> tokens with <paramref name="choices"/> choices of up to
    /// <paramref name="maxTokens"/> each may start beside the running requests, which reserve <paramref name="reservedCells"/>:
    /// it needs a free sequence per choice and, unless nothing runs, room for its whole growth in the context (so that no
    /// request ever fails because of the others; it waits, first in line, instead).
    /// </summary>
    public static bool Fits(int reservedCells, int promptTokens, int choices, int maxTokens, int contextSize, bool anyRunning, int freeSequences) =>
        freeSequences >= choices && (!anyRunning || (long)reservedCells + promptTokens + ((long)choices * maxTokens) <= contextSize);

    /// <summary>
    /// The next decode batch: the pending token of every decoding sequence first (in order), then prompt tokens of the
    /// prefilling ones, oldest admission first, as many as fit in <paramref name="batchSize"/>; logits on each decode token
    /// and on a prompt's last token.
    /// </summary>
    public static List<BatchPart> ComposeBatch(IReadOnlyList<BatchCandidate?> sequences, int batchSize)
    {
        var parts = new List<BatchPart>();
        var used = 0;
        for (var i = 0; i < sequences.Count; i++)
        {
            if (sequences[i] is { Decoding: true } && used < batchSize)
            {
                parts.Add(new BatchPart(i, sequences[i]!.Value.Materialized, 1, WantsLogits: true));
                used++;
            }
        }

        var prefilling = Enumerable.Range(0, sequences.Count).Where(i => sequences[i] is { Decoding: false }).OrderBy(i => sequences[i]!.Value.AdmittedAt);
        foreach (var i in prefilling)
        {
            var room = batchSize - used;
            if (room <= 0)
            {
                break;
            }

            var s = sequences[i]!.Value;
            var count = Math.Min(room, s.PromptLength - s.Materialized);
            if (count <= 0)
            {
                continue;
            }

            parts.Add(new BatchPart(i, s.Materialized, count, WantsLogits: s.Materialized + count == s.PromptLength));
            used += count;
        }

        return parts;
    }
}
