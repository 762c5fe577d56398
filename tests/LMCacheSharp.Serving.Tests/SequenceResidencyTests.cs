using LLama.Native;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Serving.Inference;

namespace LMCacheSharp.Serving.Tests;

/// <summary>Which sequence holds which request and which tokens, without llama.cpp (a fake KV memory).</summary>
public class SequenceResidencyTests
{
    private static readonly CacheNamespace Model = new("residency-model", new KvFormat(1, 4, 4, KvDataType.F16, KvLayout.LayerKV));
    private static readonly CacheNamespace Salted = new("residency-model", new KvFormat(1, 4, 4, KvDataType.F16, KvLayout.LayerKV), salt: "tenant");

    private static int[] Tokens(int count, int from = 0) => [.. Enumerable.Range(from, count)];

    [Fact]
    public void A_new_request_takes_an_empty_sequence_first_then_the_least_recently_used_finished_one_and_never_a_donor()
    {
        var (residency, _) = Create(4);
        var s = residency.Sequences;
        Finish(residency, s[0], Tokens(50));
        Finish(residency, s[1], Tokens(60));
        Finish(residency, s[2], Tokens(70));
        Assert.Equal([3, 0, 1, 2], residency.FreeSequences().Select(q => q.Index));

        // A request waiting to share s[0]'s prefix: s[0] is not free any more, whatever its age.
        var waiter = new FakeJob(Model) { AwaitedDonor = s[0] };
        residency.Occupy(s[3], waiter);
        Assert.Equal([1, 2], residency.FreeSequences().Select(q => q.Index));
        Assert.True(residency.IsDonor(s[0]));
        Assert.False(residency.IsDonor(s[1]));

        waiter.AwaitedDonor = null; // it shared (or planned again): s[0] is free again
        Assert.Equal([0, 1, 2], residency.FreeSequences().Select(q => q.Index));
    }

    [Fact]
    public void A_finished_request_leaves_its_cells_and_namespace_resident_until_the_sequence_is_taken()
    {
        var (residency, memory) = Create(2);
        var sequence = residency.Sequences[0];
        var job = new FakeJob(Salted);
        residency.Occupy(sequence, job);
        Assert.Same(job, sequence.Job);
        Assert.Same(Salted, sequence.Namespace);
        Assert.Equal(1, residency.RunningCount);
        memory.Fill(sequence, 40);
        sequence.Materialized.AddRange(Tokens(40));
        Assert.Equal(0, residency.ResidentCount);

        residency.Vacate(sequence);
        Assert.Null(sequence.Job);
        Assert.True(sequence.IsResident);
        Assert.Same(Salted, sequence.Namespace); // only the same salt may share it
        Assert.Equal(1, residency.ResidentCount);
        Assert.Equal(0, residency.RunningCount);
        Assert.Equal(39, memory.MaxPosition(sequence.Id));

        // The next request frees what it held and brings its own namespace.
        residency.Occupy(sequence, new FakeJob(Model));
        Assert.Empty(sequence.Materialized);
        Assert.Same(Model, sequence.Namespace);
        Assert.Equal(-1, memory.MaxPosition(sequence.Id));
        Assert.Equal(0, residency.ResidentCount);
    }

    [Fact]
    public void The_clock_orders_admissions_and_departures_together()
    {
        var (residency, _) = Create(2);
        var admitted = residency.Tick();
        Finish(residency, residency.Sequences[1], Tokens(10));
        Assert.True(residency.Sequences[1].LastUsed > admitted);
        Assert.True(residency.Tick() > residency.Sequences[1].LastUsed);
    }

    [Fact]
    public void Freeing_residents_spares_the_request_its_donor_and_every_sequence_a_waiting_request_relies_on()
    {
        var (residency, memory) = Create(5);
        var s = residency.Sequences;
        Finish(residency, s[0], Tokens(50)); // the new request's donor
        Finish(residency, s[1], Tokens(50)); // another request waits for it
        Finish(residency, s[2], Tokens(50)); // unrelated: freed
        residency.Occupy(s[3], new FakeJob(Model) { AwaitedDonor = s[1] });
        residency.Occupy(s[4], new FakeJob(Model));

        residency.FreeResidentsExcept(s[4], donor: s[0]);
        Assert.Equal([50, 50, 0], s.Take(3).Select(q => q.Materialized.Count));
        Assert.Equal(-1, memory.MaxPosition(s[2].Id));
        Assert.Null(s[2].Namespace);

        residency.FreeResidentsExcept(s[4], donor: null);
        Assert.Equal([0, 50, 0], s.Take(3).Select(q => q.Materialized.Count));
    }

    [Fact]
    public void Making_room_evicts_the_least_recently_used_residents_until_the_tokens_fit_but_never_a_donor()
    {
        var (residency, _) = Create(4, contextSize: 100);
        var s = residency.Sequences;
        Finish(residency, s[0], Tokens(40)); // oldest
        Finish(residency, s[1], Tokens(30));
        residency.Occupy(s[2], new FakeJob(Model));
        s[2].Materialized.AddRange(Tokens(20));

        residency.MakeRoom(10); // 90 + 10 fits
        Assert.Equal(2, residency.ResidentCount);

        residency.MakeRoom(30); // 120: the oldest goes, then 80 fits
        Assert.Equal([0, 30, 20], s.Take(3).Select(q => q.Materialized.Count));

        residency.Occupy(s[3], new FakeJob(Model) { AwaitedDonor = s[1] });
        residency.MakeRoom(90); // would need s[1] gone, but a request waits for it
        Assert.Equal(30, s[1].Materialized.Count);
        Assert.False(residency.EvictOneResident());
        Assert.Equal(20, s[2].Materialized.Count); // a running request is never evicted
    }

    [Fact]
    public void Sharing_gives_the_first_cells_of_one_sequence_to_another_with_their_tokens()
    {
        var (residency, memory) = Create(2);
        var (from, to) = (residency.Sequences[0], residency.Sequences[1]);
        var prompt = Tokens(64);
        residency.Occupy(from, new FakeJob(Model));
        memory.Fill(from, 64);
        from.Materialized.AddRange(prompt);
        residency.Occupy(to, new FakeJob(Model));

        residency.Share(from, to, prompt.AsSpan(0, 48));
        Assert.Equal((0, 1, 48), memory.Copies.Single());
        Assert.Equal(prompt.Take(48), to.Materialized);
        Assert.True(residency.EndsAt(to, 48));
        Assert.False(residency.EndsAt(to, 64));

        residency.DiscardCells(to); // cells only: the request keeps the sequence
        Assert.Equal(-1, memory.MaxPosition(to.Id));
        Assert.NotNull(to.Job);
    }

    [Fact]
    public void Cells_marked_to_clear_when_idle_go_at_the_end_of_the_step_unless_a_request_took_the_sequence()
    {
        var (residency, _) = Create(3);
        var s = residency.Sequences;
        Finish(residency, s[0], Tokens(20));
        Finish(residency, s[1], Tokens(20));
        s[0].ClearWhenIdle = true;
        s[1].ClearWhenIdle = true;
        residency.Occupy(s[1], new FakeJob(Model)); // taken in the same step
        s[1].Materialized.AddRange(Tokens(5));

        residency.ClearIdle();
        Assert.Equal([0, 5], s.Take(2).Select(q => q.Materialized.Count));
        Assert.All(s, q => Assert.False(q.ClearWhenIdle));
    }

    [Fact]
    public void Reserved_cells_are_the_sum_of_what_the_running_requests_may_grow_to()
    {
        var (residency, _) = Create(3);
        residency.Occupy(residency.Sequences[0], new FakeJob(Model) { ReservedCells = 300 });
        residency.Occupy(residency.Sequences[2], new FakeJob(Model) { ReservedCells = 64 });
        Finish(residency, residency.Sequences[1], Tokens(500)); // resident cells reserve nothing: they can be evicted
        Assert.Equal(364, residency.ReservedCells());
    }

    [Fact]
    public void With_a_stream_per_sequence_running_requests_reserve_nothing_of_a_new_ones_cells_and_no_room_is_made()
    {
        var memory = new FakeMemory();
        var residency = new SequenceResidency<FakeJob>(3, 1024, memory, perSequence: true);
        residency.Occupy(residency.Sequences[0], new FakeJob(Model) { ReservedCells = 1000 });
        Finish(residency, residency.Sequences[1], Tokens(900));
        Assert.Equal(0, residency.ReservedCells());
        residency.MakeRoom(1000); // the resident's cells are in a stream of their own: nothing to evict for another
        Assert.Equal(900, residency.Sequences[1].Materialized.Count);
        Assert.True(residency.Sequences[1].IsResident);
    }

    private static (SequenceResidency<FakeJob> Residency, FakeMemory Memory) Create(int sequences, int contextSize = 4096)
    {
        var memory = new FakeMemory();
        return (new SequenceResidency<FakeJob>(sequences, contextSize, memory), memory);
    }

    // Runs a request on the sequence that materializes tokens, then finishes it.
    private static void Finish(SequenceResidency<FakeJob> residency, ResidentSequence<FakeJob> sequence, int[] tokens)
    {
        residency.Occupy(sequence, new FakeJob(Model));
        sequence.Materialized.AddRange(tokens);
        residency.Vacate(sequence);
    }

    private sealed class FakeJob(CacheNamespace ns) : IResidentJob<FakeJob>
    {
        public CacheNamespace Namespace { get; } = ns;

        public int ReservedCells { get; init; }

        public ResidentSequence<FakeJob>? AwaitedDonor { get; set; }
    }

    // Cells as a count of positions per sequence (what the residency's checks read), and the copies asked for.
    private sealed class FakeMemory : ISequenceMemory
    {
        private readonly Dictionary<int, int> _cells = [];

        public List<(int From, int To, int Count)> Copies { get; } = [];

        public void Fill(ResidentSequence<FakeJob> sequence, int count) => _cells[(int)sequence.Id] = count;

        public void Remove(LLamaSeqId sequence) => _cells.Remove((int)sequence);

        public void Copy(LLamaSeqId from, LLamaSeqId to, int count)
        {
            Copies.Add(((int)from, (int)to, count));
            _cells[(int)to] = Math.Max(_cells.GetValueOrDefault((int)to), Math.Min(count, _cells.GetValueOrDefault((int)from)));
        }

        public int MaxPosition(LLamaSeqId sequence) => _cells.GetValueOrDefault((int)sequence) - 1;
    }
}
