using System.Net.Sockets;
using LMCacheSharp.Protocol;
using LMCacheSharp.Remote;
using LMCacheSharp.Tests.Shared;

namespace LMCacheSharp.Server.Tests;

public class CacheServerTests
{
    private static async Task<CacheServer> StartAsync(CacheServerOptions? options = null)
    {
        options ??= new CacheServerOptions();
        options.Port = 0;
        options.CapacityBytes = Math.Min(options.CapacityBytes, 256L << 20);
        var server = CacheServer.Create(options);
        await server.StartAsync(TestContext.Current.CancellationToken);
        return server;
    }

    private static CacheClient Client(CacheServer server, string? token = null, int connections = 2) =>
        new(new CacheClientOptions { Host = "127.0.0.1", Port = server.EndPoint.Port, AuthToken = token, Connections = connections });

    private static byte[] Value(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    [Fact]
    public async Task Binds_loopback_on_a_free_port_and_round_trips_through_the_real_client()
    {
        await using var server = await StartAsync();
        Assert.Equal("127.0.0.1", server.EndPoint.Address.ToString());
        Assert.NotEqual(0, server.EndPoint.Port);
        Assert.Equal($"lm://127.0.0.1:{server.EndPoint.Port}", server.Url);
        await using var client = Client(server);
        await client.PingAsync();
        var value = Value(8 << 20, 1);
        Assert.True(await client.PutAsync("chunk-0"u8.ToArray(), value));
        var destination = new byte[9 << 20];
        Assert.Equal(value.Length, await client.GetAsync("chunk-0"u8.ToArray(), destination));
        Assert.True(destination.AsSpan(0, value.Length).SequenceEqual(value));
        Assert.Equal(-1, await client.GetAsync("nope"u8.ToArray(), destination));
        Assert.Throws<ArgumentException>(() => client.GetAsync("chunk-0"u8.ToArray(), new byte[10]).GetAwaiter().GetResult());
        Assert.Equal(value, await client.GetAsync("chunk-0"u8.ToArray()));
        Assert.Equal(1, await client.ExistsPrefixAsync(["chunk-0"u8.ToArray(), "nope"u8.ToArray()]));
        var multi = await client.MultiGetAsync(["nope"u8.ToArray(), "chunk-0"u8.ToArray()]);
        Assert.Null(multi[0]);
        Assert.Equal(value, multi[1]);
        Assert.True(await client.DeleteAsync("chunk-0"u8.ToArray()));
        var stats = await client.StatsAsync();
        Assert.Equal(0, stats["items"]);
        Assert.True(stats["requests_get"] >= 3);
    }

    [Fact]
    public async Task Many_clients_pipelining_at_once_all_get_their_own_answers()
    {
        await using var server = await StartAsync();
        var clients = Enumerable.Range(0, 6).Select(_ => Client(server, connections: 2)).ToArray();
        try
        {
            var work = clients.Select((client, c) => Task.Run(async () =>
            {
                var ops = Enumerable.Range(0, 120).Select(async i =>
                {
                    var key = BitConverter.GetBytes((c * 1000) + i);
                    var value = Value(1 + ((i * 7919) % 70_000), (c * 1000) + i);
                    Assert.True(await client.PutAsync(key, value));
                    Assert.Equal(value, await client.GetAsync(key));
                    Assert.Equal(1, await client.ExistsPrefixAsync([key]));
                });
                await Task.WhenAll(ops);
            })).ToArray();
            await Task.WhenAll(work).WaitAsync(TimeSpan.FromSeconds(60), TestContext.Current.CancellationToken);
            Assert.Equal(6 * 120, server.Store.GetStats().Items);
        }
        finally
        {
            foreach (var client in clients)
            {
                await client.DisposeAsync();
            }
        }
    }

    [Theory]
    [InlineData("magic")]
    [InlineData("oversized")]
    [InlineData("truncated")]
    [InlineData("garbage")]
    public async Task Bad_frames_close_only_their_own_connection(string kind)
    {
        await using var server = await StartAsync();
        await using var good = Client(server, connections: 1);
        Assert.True(await good.PutAsync("k"u8.ToArray(), Value(100_000, 1)));

        using var bad = new Socket(SocketType.Stream, ProtocolType.Tcp);
        await bad.ConnectAsync(server.EndPoint, TestContext.Current.CancellationToken);
        var frame = new byte[FrameHeader.Size];
        new FrameHeader(Opcode.Get, StatusCode.Ok, 1, 1000).WriteTo(frame);
        byte[] payload = kind switch
        {
            "magic" => [.. "GET / HTTP/1.1\r\n\r\n"u8],
            "oversized" => SetLength(frame, uint.MaxValue),
            "truncated" => frame.AsSpan(0, 10).ToArray(),
            _ => Value(4096, 9),
        };
        await bad.SendAsync(payload, TestContext.Current.CancellationToken);
        if (kind == "truncated")
        {
            bad.Shutdown(SocketShutdown.Send); // the peer hangs up mid-header
        }

        // Meanwhile the well-behaved client is unaffected.
        Assert.Equal(100_000, (await good.GetAsync("k"u8.ToArray()))!.Length);

        var reply = new byte[4096];
        var received = 0;
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        while (true)
        {
            var n = await bad.ReceiveAsync(reply.AsMemory(received), timeout.Token);
            if (n == 0)
            {
                break; // closed by the server
            }

            received += n;
        }

        if (kind != "truncated")
        {
            var header = FrameHeader.Parse(reply, ProtocolLimits.Default, isRequest: false);
            Assert.Equal(StatusCode.ProtocolViolation, header.Status);
        }

        await good.PingAsync();
        Assert.Equal(1, server.Store.GetStats().Items);
    }

    [Theory]
    [InlineData("header")]
    [InlineData("body")]
    public async Task A_client_that_stalls_inside_a_frame_is_closed_and_other_clients_are_not(string where)
    {
        await using var server = await StartAsync(new CacheServerOptions { FrameTimeout = TimeSpan.FromMilliseconds(300) });
        using var idle = new Socket(SocketType.Stream, ProtocolType.Tcp);
        await idle.ConnectAsync(server.EndPoint, TestContext.Current.CancellationToken);

        using var stalled = new Socket(SocketType.Stream, ProtocolType.Tcp);
        await stalled.ConnectAsync(server.EndPoint, TestContext.Current.CancellationToken);
        var writer = new System.Buffers.ArrayBufferWriter<byte>();
        FrameWriter.WritePutHead(writer, 1, "stalled"u8, 100_000);
        var sent = where == "header" ? writer.WrittenSpan[..7].ToArray() : [.. writer.WrittenSpan, .. Value(1000, 3)];
        await stalled.SendAsync(sent, TestContext.Current.CancellationToken);

        var reply = new byte[4096];
        var received = 0;
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        while (await stalled.ReceiveAsync(reply.AsMemory(received), timeout.Token) is var n and > 0)
        {
            received += n;
        }

        var header = FrameHeader.Parse(reply, ProtocolLimits.Default, isRequest: false);
        Assert.Equal(StatusCode.ProtocolViolation, header.Status);
        Assert.Equal(0, server.Store.GetStats().Items); // the half-sent value was never stored

        // The idle connection is untouched (that idleness never closes one is checked on a fake clock, in
        // CacheSessionLimitsTests.A_connection_idle_between_frames_is_never_closed).
        var ping = new System.Buffers.ArrayBufferWriter<byte>();
        FrameWriter.WriteEmpty(ping, Opcode.Ping, StatusCode.Ok, 7);
        await idle.SendAsync(ping.WrittenMemory, TestContext.Current.CancellationToken);
        var pong = new byte[FrameHeader.Size];
        for (var got = 0; got < pong.Length;)
        {
            var n = await idle.ReceiveAsync(pong.AsMemory(got), timeout.Token);
            Assert.True(n > 0, "the idle connection was closed");
            got += n;
        }

        Assert.Equal(StatusCode.Ok, FrameHeader.Parse(pong, ProtocolLimits.Default, isRequest: false).Status);
    }

    private static byte[] SetLength(byte[] frame, uint length)
    {
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(frame.AsSpan(12), length);
        return frame;
    }

    [Fact]
    public async Task Auth_is_enforced_with_the_real_client()
    {
        await using var server = await StartAsync(new CacheServerOptions { AuthToken = "tok" });
        await using (var anonymous = Client(server))
        {
            var e = await Assert.ThrowsAsync<CacheServerException>(() => anonymous.PutAsync("k"u8.ToArray(), new byte[] { 1 }));
            Assert.Equal(StatusCode.Unauthorized, e.Status);
        }

        await using (var wrong = Client(server, "nope"))
        {
            await Assert.ThrowsAsync<CacheServerException>(() => wrong.PingAsync());
        }

        await using var right = Client(server, "tok");
        Assert.True(await right.PutAsync("k"u8.ToArray(), new byte[] { 1 }));
        Assert.Equal([1], await right.GetAsync("k"u8.ToArray()));
    }

    [Fact]
    public async Task Connections_over_the_limit_are_told_busy()
    {
        await using var server = await StartAsync(new CacheServerOptions { MaxConnections = 1 });
        await using var first = Client(server, connections: 1);
        await first.PingAsync();
        await using var second = Client(server, connections: 1);
        var e = await Assert.ThrowsAsync<CacheConnectionException>(() => second.PingAsync());
        Assert.Contains("Busy", e.Message, StringComparison.Ordinal);
        await first.PingAsync();
    }

    [Fact]
    public async Task Metrics_are_served_over_http()
    {
        await using var server = await StartAsync(new CacheServerOptions { MetricsPort = 0 });
        await using var client = Client(server);
        await client.PutAsync("k"u8.ToArray(), new byte[] { 1 });
        await client.GetAsync("k"u8.ToArray());
        await client.GetAsync("x"u8.ToArray());
        using var http = new HttpClient();
        var text = await http.GetStringAsync(server.MetricsUrl, TestContext.Current.CancellationToken);
        Assert.Contains("lmcache_server_hits_total 1", text, StringComparison.Ordinal);
        Assert.Contains("lmcache_server_misses_total 1", text, StringComparison.Ordinal);
        Assert.Contains("lmcache_server_items 1", text, StringComparison.Ordinal);
        Assert.Contains("lmcache_server_requests_get_total 2", text, StringComparison.Ordinal);
    }

    /// <summary>Every family /metrics has exported, with its TYPE (a disk-backed server), as dashboards know them.</summary>
    private static readonly (string Name, string Type)[] ExportedFamilies =
    [
        .. new[]
        {
            "items", "used_bytes", "capacity_bytes", "pinned_items", "pinned_bytes", "max_pinned_bytes", "connections_active", "disk_items", "disk_used_bytes",
            "disk_capacity_bytes", "disk_queued_bytes",
        }
            .Select(n => ("lmcache_server_" + n, "gauge")),
        .. new[]
        {
            "evictions", "hits", "misses", "bytes_received", "bytes_sent", "connections_accepted", "connections_rejected", "protocol_errors",
            "request_errors", "auth_failures", "auth_closes", "put_busy", "connections_too_slow", "disk_hits", "disk_writes", "disk_writes_dropped",
            "disk_refused", "disk_write_failures", "disk_evictions", "disk_corrupt", "disk_errors", "requests_ping", "requests_auth", "requests_put",
            "requests_get", "requests_mget", "requests_exists_prefix", "requests_delete", "requests_clear", "requests_stats", "requests_link",
            "requests_children", "requests_pin", "requests_unpin", "requests_put_in_group", "quota_evictions",
        }.Select(n => ("lmcache_server_" + n + "_total", "counter")),
    ];

    [Fact]
    public async Task Metrics_keep_their_names_and_are_the_values_STATS_answers()
    {
        var dir = Path.Combine(Path.GetTempPath(), "lmcache-metrics-" + Guid.NewGuid().ToString("N"));
        try
        {
            await using var server = await StartAsync(new CacheServerOptions { MetricsPort = 0, Disk = new DiskStoreOptions { Directory = dir } });
            await using var client = Client(server, connections: 1);
            await client.PutAsync("k"u8.ToArray(), new byte[] { 1 });
            await client.GetAsync("k"u8.ToArray());
            await client.GetAsync("x"u8.ToArray());
            using var http = new HttpClient();
            var metrics = new PrometheusText(await http.GetStringAsync(server.MetricsUrl, TestContext.Current.CancellationToken));
            metrics.AssertFamilies(ExportedFamilies);
            Assert.Equal(ExportedFamilies.Length, metrics.Types.Keys.Count(n => n.StartsWith("lmcache_server_", StringComparison.Ordinal)));
            Assert.Equal(1, metrics["lmcache_server_hits_total"]);
            Assert.Equal(2, metrics["lmcache_server_requests_get_total"]);
            Assert.Equal(1, metrics["lmcache_server_connections_active"]);
            Assert.True(metrics.Has("process_cpu_seconds_total"));
            // One count behind both: every value STATS lists is the one /metrics exported (but the disk's: its writer runs on).
            foreach (var (name, value) in server.Metrics.Snapshot(server.Store.GetStats()))
            {
                if (!name.StartsWith("disk_", StringComparison.Ordinal))
                {
                    Assert.Equal(value, metrics[metrics.Types.ContainsKey("lmcache_server_" + name) ? "lmcache_server_" + name : "lmcache_server_" + name + "_total"]);
                }
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public async Task Salt_quotas_evict_within_their_group_and_show_on_metrics_by_group_id_only()
    {
        var options = new CacheServerOptions { MetricsPort = 0, CapacityBytes = 1L << 20 };
        options.SaltQuotas["tenant-a"] = 4 * 4096;
        options.SaltQuotas["tenant-b"] = 64 * 4096;
        await using var server = await StartAsync(options);
        await using var client = Client(server, connections: 1);
        var a = System.Text.Encoding.ASCII.GetBytes(LMCacheSharp.Core.Keys.CacheNamespace.QuotaGroupOf("tenant-a"));
        var b = System.Text.Encoding.ASCII.GetBytes(LMCacheSharp.Core.Keys.CacheNamespace.QuotaGroupOf("tenant-b"));
        for (var i = 0; i < 8; i++)
        {
            Assert.True(await client.PutAsync(System.Text.Encoding.ASCII.GetBytes("b" + i), new System.Buffers.ReadOnlySequence<byte>(Value(4000, i)), b));
            Assert.True(await client.PutAsync(System.Text.Encoding.ASCII.GetBytes("a" + i), new System.Buffers.ReadOnlySequence<byte>(Value(4000, i)), a));
        }

        Assert.False(client.QuotaGroupsUnsupported);
        Assert.Equal(0, await client.ExistsPrefixAsync([.. Enumerable.Range(0, 4).Select(i => (ReadOnlyMemory<byte>)System.Text.Encoding.ASCII.GetBytes("a" + i))]));
        Assert.Equal(4, await client.ExistsPrefixAsync([.. Enumerable.Range(4, 4).Select(i => (ReadOnlyMemory<byte>)System.Text.Encoding.ASCII.GetBytes("a" + i))]));
        Assert.Equal(8, await client.ExistsPrefixAsync([.. Enumerable.Range(0, 8).Select(i => (ReadOnlyMemory<byte>)System.Text.Encoding.ASCII.GetBytes("b" + i))]));
        Assert.False(await client.PutAsync("big"u8.ToArray(), new System.Buffers.ReadOnlySequence<byte>(Value(5 * 4096, 1)), a)); // over its quota

        using var http = new HttpClient();
        var text = await http.GetStringAsync(server.MetricsUrl, TestContext.Current.CancellationToken);
        var metrics = new PrometheusText(text);
        var ga = System.Text.Encoding.ASCII.GetString(a);
        Assert.Equal(4 * 4096, metrics[$"lmcache_server_quota_group_used_bytes{{group=\"{ga}\"}}"]);
        Assert.Equal(4 * 4096, metrics[$"lmcache_server_quota_group_quota_bytes{{group=\"{ga}\"}}"]);
        Assert.Equal(4, metrics[$"lmcache_server_quota_group_evictions_total{{group=\"{ga}\"}}"]);
        Assert.Equal(8 * 4096, metrics[$"lmcache_server_quota_group_used_bytes{{group=\"{System.Text.Encoding.ASCII.GetString(b)}\"}}"]);
        Assert.Equal(4, metrics["lmcache_server_quota_evictions_total"]);
        Assert.DoesNotContain("tenant-", text, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Pinned_keys_survive_eviction_pressure_through_the_client()
    {
        await using var server = await StartAsync(new CacheServerOptions { CapacityBytes = 1L << 20 }); // 256 values of 4 KiB
        await using var client = Client(server, connections: 1);
        var keys = new byte[2 * 32];
        new Random(3).NextBytes(keys);
        await client.PutAsync(keys.AsMemory(0, 32), Value(4000, 1));
        await client.PutAsync(keys.AsMemory(32, 32), Value(4000, 2));
        Assert.Equal(2, await client.PinAsync(keys, 32));
        for (var i = 0; i < 600; i++)
        {
            await client.PutAsync(System.Text.Encoding.ASCII.GetBytes("fill" + i), Value(4000, i));
        }

        Assert.Equal(2, await client.ExistsPrefixAsync(keys, 32));
        var stats = await client.StatsAsync();
        Assert.Equal((2L, 2L * 4096, 1L << 19), (stats["pinned_items"], stats["pinned_bytes"], stats["max_pinned_bytes"]));
        Assert.Equal(2, await client.UnpinAsync(keys, 32));
        Assert.Equal(0, await client.UnpinAsync(keys, 32));

        var many = new byte[200 * 32];
        new Random(4).NextBytes(many);
        for (var i = 0; i < 200; i++)
        {
            await client.PutAsync(many.AsMemory(i * 32, 32), Value(4000, i));
        }

        var e = await Assert.ThrowsAsync<CacheServerException>(() => client.PinAsync(many, 32)); // 800 KiB: over the half that may be pinned
        Assert.Equal(StatusCode.TooLarge, e.Status);
        Assert.Equal(0, (await client.StatsAsync())["pinned_items"]);
    }

    [Fact]
    public async Task Two_servers_in_one_process_export_only_their_own_counts()
    {
        await using var busy = await StartAsync(new CacheServerOptions { MetricsPort = 0 });
        await using var idle = await StartAsync(new CacheServerOptions { MetricsPort = 0 });
        await using var client = Client(busy, connections: 1);
        await client.GetAsync("x"u8.ToArray());
        using var http = new HttpClient();
        Assert.Equal(1, new PrometheusText(await http.GetStringAsync(busy.MetricsUrl, TestContext.Current.CancellationToken))["lmcache_server_misses_total"]);
        Assert.Equal(0, new PrometheusText(await http.GetStringAsync(idle.MetricsUrl, TestContext.Current.CancellationToken))["lmcache_server_misses_total"]);
    }

    [Fact]
    public async Task Graceful_stop_tells_connected_clients_and_frees_the_port()
    {
        var server = await StartAsync();
        var port = server.EndPoint.Port;
        await using var client = Client(server, connections: 1);
        await client.PingAsync();
        await server.DisposeAsync();
        await Assert.ThrowsAnyAsync<IOException>(() => client.PingAsync());
        using var probe = new Socket(SocketType.Stream, ProtocolType.Tcp);
        await Assert.ThrowsAsync<SocketException>(async () => await probe.ConnectAsync("127.0.0.1", port, TestContext.Current.CancellationToken));
    }

    [Fact]
    public void Options_name_every_bad_value()
    {
        var errors = new CacheServerOptions
        {
            Host = "not a host",
            Port = 70000,
            CapacityBytes = 1,
            MaxConnections = 0,
            MetricsPort = -1,
            WriteSliceBytes = 1,
            FrameTimeout = TimeSpan.FromMilliseconds(1),
        }.GetErrors();
        Assert.Equal(7, errors.Count);
        Assert.Empty(new CacheServerOptions().GetErrors());
    }
}

public class CacheServerMemoryBoundTests
{
    [Fact]
    public async Task Sixty_four_put_headers_announcing_large_values_stay_within_the_budget_and_gets_are_still_served()
    {
        const int Connections = 64;
        const int ValueBytes = 64 << 20; // 4 GiB announced in all
        const long Budget = 128L << 20;
        var options = new CacheServerOptions { Port = 0, CapacityBytes = 256L << 20, MaxInFlightPutBytes = Budget, FrameTimeout = TimeSpan.FromMinutes(5) };
        await using var server = CacheServer.Create(options);
        await server.StartAsync(TestContext.Current.CancellationToken);
        await using var client = new CacheClient(new CacheClientOptions { Port = server.EndPoint.Port, Connections = 1 });
        Assert.True(await client.PutAsync("hot"u8.ToArray(), new byte[] { 42 }, TestContext.Current.CancellationToken));

        using var process = System.Diagnostics.Process.GetCurrentProcess();
        GC.Collect();
        process.Refresh();
        var rssBefore = process.WorkingSet64;
        var sockets = new List<Socket>();
        try
        {
            for (var i = 0; i < Connections; i++)
            {
                var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
                sockets.Add(socket);
                await socket.ConnectAsync(server.EndPoint, TestContext.Current.CancellationToken);
                var head = new System.Buffers.ArrayBufferWriter<byte>();
                FrameWriter.WritePutHead(head, 1, BitConverter.GetBytes(i), ValueBytes);
                await socket.SendAsync(head.WrittenMemory, TestContext.Current.CancellationToken); // the body never comes
            }

            // Two fit in the budget; every other one is told Busy (after its short wait) and its connection stays open.
            var busy = 0;
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
            timeout.CancelAfter(TimeSpan.FromSeconds(60));
            var replies = sockets.Select(async socket =>
            {
                var header = new byte[FrameHeader.Size];
                for (var got = 0; got < header.Length;)
                {
                    var n = await socket.ReceiveAsync(header.AsMemory(got), timeout.Token);
                    if (n == 0)
                    {
                        return StatusCode.ProtocolViolation;
                    }

                    got += n;
                }

                return FrameHeader.Parse(header, ProtocolLimits.Default, isRequest: false).Status;
            }).ToList();
            while (busy < Connections - 2)
            {
                var done = await Task.WhenAny(replies);
                replies.Remove(done);
                Assert.Equal(StatusCode.Busy, await done);
                busy++;
            }

            Assert.True(server.InFlight.UsedBytes <= Budget, $"{server.InFlight.UsedBytes} bytes in flight");
            var pool = ((MemoryCacheStore)server.Store).Pool;
            Assert.True(pool.RentedBytes <= Budget + (1 << 20), $"{pool.RentedBytes} bytes rented");
            GC.Collect();
            process.Refresh();
            var rssGrowth = process.WorkingSet64 - rssBefore;
            TestContext.Current.TestOutputHelper?.WriteLine($"rented {pool.RentedBytes >> 20} MiB, in flight {server.InFlight.UsedBytes >> 20} MiB, RSS growth {rssGrowth >> 20} MiB");
            Assert.True(rssGrowth < Budget + (256L << 20), $"RSS grew by {rssGrowth >> 20} MiB");

            // The server keeps serving.
            Assert.Equal([42], await client.GetAsync("hot"u8.ToArray(), TestContext.Current.CancellationToken));
            Assert.Equal(Connections - 2, (await client.StatsAsync(TestContext.Current.CancellationToken))["put_busy"]);
        }
        finally
        {
            sockets.ForEach(s => s.Dispose());
        }
    }
}
