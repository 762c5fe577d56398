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
    public async Task Serve_from_the_publish_folder_answers_a_completion_with_the_bundled_llama_cpp()
    {
        var dll = Artifacts.RequirePublishedDll();
        var model = await Artifacts.TinyModelAsync();
        await using var serve = await RunningLmcache.StartAsync(Bound, "dotnet", dll, "serve", "--host", "127.0.0.1", "--port", "0",
            "--model", model, "--threads", "1");
        RunningLmcache.AssertCompletion(await serve.CompleteAsync("Hello from the publish output", 3), 3);
        var llama = Assert.Single(serve.MappedLibraries("libllama.so"));
        Assert.StartsWith(Path.Combine(Path.GetFullPath(Artifacts.Publish), "runtimes", "linux-x64", "native"), llama, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Server_from_the_publish_folder_answers_a_ping()
    {
        var dll = Artifacts.RequirePublishedDll();
        await using var server = await RunningLmcache.StartAsync(Bound, "dotnet", dll, "server", "--host", "127.0.0.1", "--port", "0",
            "--capacity", "64MB");
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
