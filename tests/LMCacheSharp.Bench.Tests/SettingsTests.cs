using LMCacheSharp.LlamaCpp;

namespace LMCacheSharp.Bench.Tests;

/// <summary>The bench settings' checks: the defaults are valid, and every bad value is named with its flag at once.</summary>
public sealed class SettingsTests
{
    [Fact]
    public void The_defaults_are_valid()
    {
        Assert.Empty(new EngineBenchSettings().GetErrors(256));
        Assert.Empty(new TtftBenchSettings().GetErrors());
        Assert.Empty(new ServingBenchSettings().GetErrors());
        Assert.Empty(new FleetBenchSettings().GetErrors());
        Assert.Empty(new PdBenchSettings().GetErrors());
    }

    [Fact]
    public void Pd_names_every_bad_flag_at_once()
    {
        var errors = new PdBenchSettings
        {
            Streams = 0,
            StreamTokens = 1,
            IntervalSeconds = -1,
            Repeats = 101,
            Modes = FleetBenchSettings.ParseList("colocated,split"),
            Model = "/nonexistent/model.gguf",
        }.GetErrors();
        Assert.Equal(
        [
            "--streams: must be 1..64, got 0",
            "--stream-tokens: must be 2..4096, got 1",
            "--repeats: must be 1..100, got 101",
            "--interval: must be 0..3600 s, got -1",
            "--modes: takes a comma list of colocated, disaggregated; got 'colocated,split'",
            "--model: file not found: '/nonexistent/model.gguf'",
        ], errors);
    }

    [Fact]
    public void Fleet_names_every_bad_flag_at_once()
    {
        var errors = new FleetBenchSettings
        {
            Instances = 0,
            Users = 5,
            Documents = 2,
            Concurrency = 2000,
            Policies = FleetBenchSettings.ParseList("kv-aware,Random"),
            SharedCache = FleetBenchSettings.ParseList("maybe"),
            Model = "/nonexistent/model.gguf",
        }.GetErrors();
        Assert.Equal(
        [
            "--instances: must be 1..16, got 0",
            "--users: must be 1..2, got 5",
            "--concurrency: must be 1..1024, got 2000",
            "--policies: takes a comma list of round-robin, kv-aware, least-loaded, session; got 'kv-aware,random'",
            "--shared-cache: takes off, on or off,on; got 'maybe'",
            "--model: file not found: '/nonexistent/model.gguf'",
        ], errors);
    }

    [Fact]
    public void Serving_expands_all_and_peer_and_names_unknown_workloads_and_configurations()
    {
        Assert.Equal(["leval", "sharegpt"], ServingBenchSettings.ParseWorkloads("all"));
        Assert.Equal(["doc-qa", "chat", "clients", "leval"], ServingBenchSettings.ParseWorkloads("PEER, leval,chat"));
        var errors = new ServingBenchSettings { Workloads = ServingBenchSettings.ParseWorkloads("doc-qa,nonsense"), Configs = ["off", "fast"], Clients = 0 }.GetErrors();
        Assert.Equal(3, errors.Count);
        Assert.Contains("got 'doc-qa,nonsense'", errors[0], StringComparison.Ordinal);
        Assert.Equal("--configs: takes a comma list of off, context, tiers, on, off-streams, streams; got 'off,fast'", errors[1]);
        Assert.Equal("--clients: must be 1..1024, got 0", errors[2]);
        // Against URLs the configurations are the URLs: --configs is not read.
        Assert.Empty(new ServingBenchSettings { Urls = ["http://127.0.0.1:8000"], Configs = ["fast"] }.GetErrors());
        Assert.Single(new ServingBenchSettings { Urls = ["ftp://host"] }.GetErrors());
    }

    [Fact]
    public void Ttft_parses_its_lists_and_checks_lengths_against_the_chunk()
    {
        var problems = new List<string>();
        Assert.Equal([512, 1024], TtftBenchSettings.ParseLengths(" 512, 1024 ", problems)!);
        Assert.Equal([LlamaChunkLayout.Portable], TtftBenchSettings.ParseLayouts("Portable", problems)!);
        Assert.Empty(problems);
        Assert.Null(TtftBenchSettings.ParseLengths("512,many", problems));
        Assert.Null(TtftBenchSettings.ParseLayouts("odd", problems));
        Assert.Equal(2, problems.Count);

        var errors = new TtftBenchSettings { Lengths = [128], ChunkSize = 256, Rounds = 0, FlashAttention = "maybe" }.GetErrors();
        Assert.Equal(
        [
            "--tokens: every length must be --chunk-size (256)..1048576, got '128'",
            "--rounds: must be 1..1000, got 0",
            "--flash-attention: must be on, off or auto, got 'maybe'",
        ], errors);
    }

    [Fact]
    public void Engine_needs_a_prompt_of_a_chunk_at_least()
    {
        Assert.Equal(
        [
            "--prompt-tokens: must be chunk_size (256)..16777216, got 100",
            "--kv-bytes-per-token: must be 2..16777216, got 1",
            "--rounds: must be 1..10000, got 0",
        ], new EngineBenchSettings(100, 1, 0).GetErrors(256));
    }
}
