using System.Net.Sockets;

namespace LMCacheSharp.Cli.Tests;

/// <summary>
/// The CLI's publish output (artifacts/publish, what docker/serve.Dockerfile and docker/server.Dockerfile copy into their
/// images) run the way the images run it: <c>dotnet lmcache.dll serve|server</c> from that folder alone.
/// </summary>
public sealed class PublishOutputTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(120);

    [Fact]
    public async Task Serve_as_its_image_runs_it_answers_a_completion_with_the_bundled_llama_cpp()
    {
        var publish = Path.GetDirectoryName(Artifacts.RequirePublishedDll())!;
        var image = Dockerfile.Read("serve.Dockerfile");
        Assert.Equal("artifacts/publish/", image.CopySource); // the folder this test runs
        Assert.Equal("/data", image.Environment["LMCACHE_HOME"]);
        var (fileName, args) = image.CommandFor(publish, ("--host", "127.0.0.1"), ("--port", "0"));
        Assert.Equal(["dotnet", "serve"], new[] { fileName, args[1] });
        var model = await Artifacts.TinyModelAsync();
        await using var serve = await RunningLmcache.StartAsync(Bound, fileName, [.. args, "--model", model, "--threads", "1"]);
        RunningLmcache.AssertCompletion(await serve.CompleteAsync("Hello from the publish output", 3), 3);
        var llama = Assert.Single(serve.MappedLibraries("libllama.so"));
        Assert.StartsWith(Path.Combine(Path.GetFullPath(publish), "runtimes", "linux-x64", "native"), llama, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Two_serve_instances_from_the_publish_folder_share_kv_through_a_server_from_it_as_compose_sharing_runs_them()
    {
        var dll = Artifacts.RequirePublishedDll();
        var model = await Artifacts.TinyModelAsync();
        await using var server = await RunningLmcache.StartAsync(Bound, "dotnet", dll, "server", "--host", "127.0.0.1", "--port", "0",
            "--capacity", "256MB");
        // The settings compose.sharing.yaml gives both instances, through the same LMCACHE_* variables.
        var environment = new Dictionary<string, string> { ["LMCACHE_REMOTE_URL"] = server.Address };
        await using var one = await RunningLmcache.StartAsync(Bound, environment, "dotnet", dll, "serve", "--host", "127.0.0.1", "--port", "0",
            "--model", model, "--threads", "1");
        await using var two = await RunningLmcache.StartAsync(Bound, environment, "dotnet", dll, "serve", "--host", "127.0.0.1", "--port", "0",
            "--model", model, "--threads", "1");
        var prompt = string.Concat(Enumerable.Repeat("A KV cache stores keys and values. ", 40)); // several 256-token chunks
        var first = await one.CompleteAsync(prompt, 2);
        Assert.Equal(0, CachedTokens(first));
        // The remote tier writes in the background: wait (bounded) until the server holds the prompt's whole chunks and its
        // partial last chunk (token-exact reuse: the server keeps it with its tokens), so that the second instance's hit can
        // only come from the server, not from its own memory tier.
        var promptTokens = first.GetProperty("usage").GetProperty("prompt_tokens").GetInt32();
        var chunks = promptTokens / 256;
        Assert.True(chunks >= 2 && promptTokens % 256 > 0, $"prompt of {promptTokens} tokens");
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (await ServerItemsAsync(new Uri(server.Address)) < chunks + 1 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(50);
        }

        var second = await two.CompleteAsync(prompt, 2);
        RunningLmcache.AssertCompletion(second, 2);
        Assert.Equal(promptTokens - 1, CachedTokens(second)); // to the token: all but the last, whose logits are computed
        Assert.Equal(first.GetProperty("choices")[0].GetProperty("text").GetString(), second.GetProperty("choices")[0].GetProperty("text").GetString());
    }

    private static int CachedTokens(System.Text.Json.JsonElement answer) =>
        answer.GetProperty("usage").GetProperty("prompt_tokens_details").GetProperty("cached_tokens").GetInt32();

    // STATS (docs/protocol.md): u16 count, then per counter u8 name length, the ASCII name, i64 value; returns "items".
    private static async Task<long> ServerItemsAsync(Uri address)
    {
        using var client = new TcpClient();
        await client.ConnectAsync(address.Host, address.Port);
        var stream = client.GetStream();
        await stream.WriteAsync(new byte[] { (byte)'L', (byte)'M', (byte)'C', (byte)'P', 1, 9, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0 });
        var header = new byte[16];
        await stream.ReadExactlyAsync(header);
        var body = new byte[BitConverter.ToInt32(header, 12)];
        await stream.ReadExactlyAsync(body);
        var count = BitConverter.ToUInt16(body, 0);
        for (int i = 0, at = 2; i < count; i++)
        {
            var name = System.Text.Encoding.ASCII.GetString(body, at + 1, body[at]);
            at += 1 + body[at];
            if (name == "items")
            {
                return BitConverter.ToInt64(body, at);
            }

            at += 8;
        }

        return 0;
    }

    [Fact]
    public async Task The_publish_output_runs_the_bench_harness_and_renders_its_charts()
    {
        var dll = Artifacts.RequirePublishedDll();
        var publish = Path.GetDirectoryName(dll)!;
        Assert.True(File.Exists(Path.Combine(publish, "LMCacheSharp.Bench.dll")));
        Assert.True(File.Exists(Path.Combine(publish, "runtimes", "linux-x64", "native", "libSkiaSharp.so")));
        // bench fleet renders a PNG with ScottPlot and Skia from this folder alone: a one-request fleet of one instance.
        var model = await Artifacts.TinyModelAsync();
        var output = Directory.CreateTempSubdirectory("lmcache-publish-bench-").FullName;
        try
        {
            var (code, stdout, stderr) = await LmcacheProcess.RunFileAsync(Bound, "dotnet", new Dictionary<string, string>(), dll, "bench", "fleet",
                "--model", model, "--instances", "1", "--policies", "round-robin", "--shared-cache", "off", "--documents", "1", "--users", "1",
                "--questions", "1", "--doc-words", "20", "--max-tokens", "1", "--ctx-size", "1024", "-o", output);
            Assert.True(code == 0, stdout + stderr);
            var png = await File.ReadAllBytesAsync(Path.Combine(output, "fleet-ttft.png"));
            Assert.Equal([0x89, (byte)'P', (byte)'N', (byte)'G'], png[..4]);
        }
        finally
        {
            Directory.Delete(output, recursive: true);
        }
    }

    [Fact]
    public async Task Server_as_its_image_runs_it_answers_a_ping()
    {
        var publish = Path.GetDirectoryName(Artifacts.RequirePublishedDll())!;
        var image = Dockerfile.Read("server.Dockerfile");
        Assert.Equal("artifacts/publish/", image.CopySource);
        Assert.Equal("0.0.0.0", image.Environment["LMCACHE_SERVER_HOST"]);
        Assert.Equal("65432", image.Environment["LMCACHE_SERVER_PORT"]);
        var (fileName, args) = image.CommandFor(publish);
        Assert.Equal(["dotnet", "server"], new[] { fileName, args[1] });
        // The image's variables, with the test's address and port (flags win over them, as a `docker run` argument would).
        await using var server = await RunningLmcache.StartAsync(Bound, new Dictionary<string, string>(image.Environment), fileName,
            [.. args, "--host", "127.0.0.1", "--port", "0", "--capacity", "64MB"]);
        var address = new Uri(server.Address);
        Assert.Equal("lm", address.Scheme);
        using var client = new TcpClient();
        await client.ConnectAsync(address.Host, address.Port);
        var stream = client.GetStream();
        // PING (docs/protocol.md): magic LMCP, version 1, opcode 1, status 0, flags 0, request id 7, body length 0.
        byte[] ping = [(byte)'L', (byte)'M', (byte)'C', (byte)'P', 1, 1, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0];
        await stream.WriteAsync(ping);
        var reply = new byte[16];
        await stream.ReadExactlyAsync(reply).AsTask().WaitAsync(Bound);
        Assert.Equal(ping, reply); // the same header back: opcode PING, status Ok, id 7, no body
    }
}
