using System.Net;
using System.Net.Sockets;

namespace LMCacheSharp.Cli.Tests;

public sealed class ServeCommandTests
{
    [Fact]
    public async Task A_busy_port_is_one_line_and_exit_code_2_before_any_model_work()
    {
        using var taken = new TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        var port = ((IPEndPoint)taken.LocalEndpoint).Port.ToString(System.Globalization.CultureInfo.InvariantCulture);
        var (code, stdout, stderr) = await LmcacheProcess.RunAsync(TimeSpan.FromSeconds(60), "serve", "--port", port);
        Assert.Equal(2, code);
        Assert.Equal($"port {port} is in use; pass --port", stderr.Trim());
        Assert.DoesNotContain("Generating", stdout, StringComparison.Ordinal); // checked before the default model is made
    }

    [Fact]
    public async Task Kv_unified_off_serves_with_a_stream_per_sequence_and_says_the_per_request_context()
    {
        var model = await Artifacts.TinyModelAsync();
        await using var serve = await RunningLmcache.StartAsync(TimeSpan.FromSeconds(120), "dotnet", LmcacheProcess.DllPath, "serve", "--port", "0",
            "--model", model, "--threads", "1", "--ctx-size", "2048", "--max-concurrent", "2", "--kv-unified", "off");
        Assert.Contains("context 1024 tokens per request (2 KV streams)", serve.Output, StringComparison.Ordinal);
        RunningLmcache.AssertCompletion(await serve.CompleteAsync("Hello through per-sequence KV streams", 3), 3);
        var again = await serve.CompleteAsync("Hello through per-sequence KV streams", 3);
        RunningLmcache.AssertCompletion(again, 3);
        Assert.True(again.GetProperty("usage").GetProperty("prompt_tokens_details").GetProperty("cached_tokens").GetInt32() > 0);
    }

    [Fact]
    public async Task Every_configuration_problem_is_reported_at_once_with_its_source()
    {
        var (code, _, stderr) = await LmcacheProcess.RunAsync(TimeSpan.FromSeconds(60), "serve", "--port", "0",
            "--lmcache", "chunk_size=0", "--lmcache", "broken", "--ctx-size", "5", "--flash-attention", "maybe", "--log-level", "loud", "--stall-timeout", "0");
        Assert.Equal(2, code);
        Assert.Contains("chunk_size (command line)", stderr, StringComparison.Ordinal);
        Assert.Contains("--lmcache: takes KEY=VALUE, got 'broken'", stderr, StringComparison.Ordinal);
        Assert.Contains("--ctx-size", stderr, StringComparison.Ordinal);
        Assert.Contains("--flash-attention", stderr, StringComparison.Ordinal);
        Assert.Contains("--log-level", stderr, StringComparison.Ordinal);
        Assert.Contains("--stall-timeout", stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", stderr, StringComparison.Ordinal); // no stack trace
    }

    [Theory]
    [InlineData("--kv-events", "127.0.0.1:5557", "kv_events_endpoint (command line): must be tcp://HOST:PORT")]
    [InlineData("--kv-events", "tcp://example.com:5557", "is not *, an IP address or localhost")]
    [InlineData("--kv-events-replay", "tcp://127.0.0.1:5558", "kv_events_replay_endpoint (command line): is set but kv_events_endpoint is not")]
    public async Task A_bad_kv_events_endpoint_is_one_message_and_exit_code_2(string option, string value, string expected)
    {
        var (code, stdout, stderr) = await LmcacheProcess.RunAsync(TimeSpan.FromSeconds(60), "serve", "--port", "0", option, value);
        Assert.Equal(2, code);
        Assert.Contains(expected, stderr, StringComparison.Ordinal);
        Assert.Equal(2, stderr.Trim().Split('\n').Length); // the heading and the one problem
        Assert.DoesNotContain("Generating", stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_kv_events_port_in_use_is_one_line_and_exit_code_2_before_any_model_work()
    {
        using var taken = new TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        var endpoint = $"tcp://127.0.0.1:{((IPEndPoint)taken.LocalEndpoint).Port}";
        var (code, stdout, stderr) = await LmcacheProcess.RunAsync(TimeSpan.FromSeconds(60), "serve", "--port", "0", "--kv-events", endpoint);
        Assert.Equal(2, code);
        Assert.StartsWith($"lmcache serve: kv_events_endpoint: cannot bind {endpoint}", stderr.Trim(), StringComparison.Ordinal);
        Assert.Single(stderr.Trim().Split('\n'));
        Assert.DoesNotContain("Generating", stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_file_that_is_not_a_model_is_a_clear_error()
    {
        var path = Path.GetTempFileName();
        try
        {
            await File.WriteAllTextAsync(path, "not a gguf file");
            var (code, _, stderr) = await LmcacheProcess.RunAsync(TimeSpan.FromSeconds(120), "serve", "--port", "0", "--model", path);
            Assert.Equal(1, code);
            Assert.Contains("could not be loaded as a llama.cpp model", stderr, StringComparison.Ordinal);
            Assert.DoesNotContain("   at ", stderr, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public async Task Bench_serving_runs_the_clients_workload_on_per_sequence_streams_and_every_second_question_hits()
    {
        var model = await Artifacts.TinyModelAsync();
        var output = Directory.CreateTempSubdirectory("lmcache-bench-streams-");
        try
        {
            var (code, stdout, stderr) = await LmcacheProcess.RunAsync(TimeSpan.FromSeconds(240), "bench", "serving", "--model", model,
                "--workload", "clients", "--configs", "off-streams,streams", "--clients", "2", "--repeats", "1", "--client-doc-words", "40",
                "--ctx-size", "2048", "--max-tokens", "2", "--threads", "1", "--chunk-size", "16", "-o", output.FullName);
            Assert.True(code == 0, stdout + stderr);
            Assert.Matches(@"\| 2 x 2 \| streams \| 1 \| [0-9.]+ \| 2/2 \|", stdout);
            Assert.Matches(@"\| 2 x 2 \| off-streams \| 1 \| [0-9.]+ \| 0/2 \|", stdout);
            Assert.True(File.Exists(Path.Combine(output.FullName, "peer.json")));
        }
        finally
        {
            output.Delete(recursive: true);
        }
    }

    [Theory]
    [InlineData("--workload", "nonsense")]
    [InlineData("--configs", "fast")]
    public async Task Bench_serving_refuses_unknown_workloads_and_configurations(string option, string value)
    {
        string[] args = option == "--workload"
            ? ["bench", "serving", "--workload", value]
            : ["bench", "serving", "--workload", "doc-qa", "--documents", "1", "--rounds", "1", option, value];
        var (code, _, stderr) = await LmcacheProcess.RunAsync(TimeSpan.FromSeconds(120), args);
        Assert.Equal(2, code);
        Assert.Contains(value, stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", stderr, StringComparison.Ordinal);
    }
}
