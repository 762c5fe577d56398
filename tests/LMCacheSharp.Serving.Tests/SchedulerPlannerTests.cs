using LMCacheSharp.Core.Keys;
using LMCacheSharp.Serving.Inference;

namespace LMCacheSharp.Serving.Tests;

/// <summary>The scheduler's decisions, without llama.cpp.</summary>
public class SchedulerPlannerTests
{
    private static readonly ChunkHash Seed = new(Enumerable.Repeat((byte)1, 32).ToArray());
    private static readonly ChunkHash OtherSeed = new(Enumerable.Repeat((byte)2, 32).ToArray());

    private static int[] Tokens(int count, int from = 0) => [.. Enumerable.Range(from, count)];

    [Fact]
    public void The_donor_is_the_longest_common_prefix_in_the_same_namespace_that_is_not_waiting()
    {
        var prompt = Tokens(100);
        var sequences = new List<SequenceView>
        {
            new(Tokens(60), Seed, Waiting: false),                          // 60 in common
            new(Tokens(90), Seed, Waiting: true),                           // more, but waiting: never a donor
            new(Tokens(95), OtherSeed, Waiting: false),                     // another model or salt
            new(prompt, Seed, Waiting: false),                              // the request itself
            new(Tokens(80).Append(999).ToArray(), Seed, Waiting: false),                // 80 in common: the best
        };
        Assert.Equal((4, 80), SchedulerPlanner.ChooseDonor(prompt, Seed, self: 3, sequences, minShared: 32));
    }

    [Fact]
    public void A_donor_never_covers_the_last_prompt_token_and_short_prefixes_are_not_shared()
    {
        var prompt = Tokens(50);
        Assert.Equal((0, 49), SchedulerPlanner.ChooseDonor(prompt, Seed, self: 1, [new(Tokens(50), Seed, false), new(Array.Empty<int>(), null, false)], 32));
        Assert.Equal((-1, 0), SchedulerPlanner.ChooseDonor(prompt, Seed, self: 1, [new(Tokens(31), Seed, false), new(Array.Empty<int>(), null, false)], 32));
    }

    [Theory]
    [InlineData(0, 0, false, "Prefill")]
    [InlineData(64, 0, false, "Restore")]
    [InlineData(64, 80, true, "Share")]      // the context holds more than the tiers gave
    [InlineData(80, 80, true, "Share")]      // equal: sharing copies nothing
    [InlineData(96, 80, true, "Restore")]
    public void The_tiers_win_only_with_more_tokens_than_a_donor(int restored, int shared, bool donor, string expected)
    {
        Assert.Equal(restored > shared, SchedulerPlanner.ShouldRestore(restored, shared));
        Assert.Equal(expected, SchedulerPlanner.Resolve(restored, shared, donor).ToString());
    }

    [Theory]
    [InlineData(10, 256, 1810, 10, false)]    // the chat template's first tokens before a long prefill: 246 empty cells x 1,800 tokens
    [InlineData(10, 256, 200, 10, true)]      // the 190 tokens left fill the hole
    [InlineData(7, 16, 529, 519, true)]       // a short hole before a short question
    [InlineData(150, 256, 700, 662, true)]    // a document's end before a question: 106 cells left empty, 150 saved
    [InlineData(128, 256, 5000, 128, true)]   // 128 x 4,872 <= 128 x 5,000
    [InlineData(100, 100, 5000, 612, true)]   // a whole partial chunk: no hole
    public void A_tail_is_kept_unless_its_hole_costs_more_attention_than_recomputing_it(int tail, int chunk, int prompt, int cached, bool keep) =>
        Assert.Equal(keep, SchedulerPlanner.KeepTail(tail, chunk, prompt, cached));

    [Theory]
    [InlineData(0, 1000, 1, 100, false, 1, true)]     // nothing runs: always admitted (the context check is the 400's job)
    [InlineData(3000, 1000, 1, 100, false, 1, true)]
    [InlineData(3000, 1000, 1, 100, true, 1, false)]  // 3000 + 1000 + 100 > 4096 beside a running request: waits
    [InlineData(2996, 1000, 1, 100, true, 1, true)]   // exactly 4096
    [InlineData(0, 100, 4, 999, true, 4, true)]       // n = 4: the prompt once, max_tokens per choice: 100 + 3996
    [InlineData(0, 100, 4, 1000, true, 4, false)]     // 100 + 4000 > 4096
    [InlineData(0, 100, 4, 999, true, 3, false)]      // a sequence short
    public void Admission_reserves_prompt_and_every_choices_growth(int reserved, int prompt, int choices, int maxTokens, bool anyRunning, int free, bool fits) =>
        Assert.Equal(fits, SchedulerPlanner.Fits(reserved, prompt, choices, maxTokens, 4096, anyRunning, free));

    [Theory]
    [InlineData(40, true, "Wait")]        // still prefilling the 64 shared tokens
    [InlineData(64, true, "Share")]       // holds them (and goes on running)
    [InlineData(100, false, "Share")]     // finished, resident with them
    [InlineData(40, false, "PlanAgain")]  // went away (cancelled, failed) before it held them
    public void A_waiting_request_shares_once_its_donor_holds_the_prefix_and_plans_again_when_the_donor_went_away(int donorHolds, bool stillRunning, string expected)
    {
        var prompt = Tokens(80);
        Assert.Equal(expected, SchedulerPlanner.AwaitDonor(Tokens(donorHolds), stillRunning, prompt, sharedTokens: 64).ToString());
    }

    [Fact]
    public void A_donor_whose_cells_now_hold_other_tokens_is_not_shared()
    {
        // The sequence was freed and taken by another request: as many tokens, but not the prefix.
        var other = Tokens(70, from: 1000);
        Assert.Equal(DonorWait.PlanAgain, SchedulerPlanner.AwaitDonor(other, donorStillRunning: false, Tokens(80), 64));
        Assert.Equal(DonorWait.Wait, SchedulerPlanner.AwaitDonor(Tokens(63).Append(5).ToArray(), true, Tokens(80), 64));
    }

    [Fact]
    public void A_batch_takes_every_decode_token_then_the_oldest_prefills_up_to_the_batch_size()
    {
        BatchCandidate?[] sequences =
        [
            new(Decoding: false, Materialized: 0, PromptLength: 300, AdmittedAt: 5), // newer prefill
            new(Decoding: true, Materialized: 40, PromptLength: 0, AdmittedAt: 1),
            null,                                                                     // free
            new(Decoding: false, Materialized: 100, PromptLength: 400, AdmittedAt: 2), // older prefill, 100 restored
            new(Decoding: true, Materialized: 7, PromptLength: 0, AdmittedAt: 3),
        ];
        var parts = SchedulerPlanner.ComposeBatch(sequences, batchSize: 512);
        Assert.Equal(
            [new(1, 40, 1, true), new(4, 7, 1, true), new(3, 100, 300, true), new(0, 0, 210, false)],
            parts);
        Assert.Equal(512, parts.Sum(p => p.Count));

        // The next step: the older prompt is done; the newer one finishes and gets its logits.
        sequences[3] = new(Decoding: true, Materialized: 400, PromptLength: 0, AdmittedAt: 2);
        sequences[0] = new(Decoding: false, Materialized: 210, PromptLength: 300, AdmittedAt: 5);
        Assert.Equal(new BatchPart(0, 210, 90, true), SchedulerPlanner.ComposeBatch(sequences, 512)[^1]);
    }
}
