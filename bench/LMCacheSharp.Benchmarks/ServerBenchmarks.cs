using System.Net;
using System.Net.Sockets;
using BenchmarkDotNet.Attributes;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Storage;
using LMCacheSharp.Remote;
using LMCacheSharp.Server;
using StackExchange.Redis;

namespace LMCacheSharp.Benchmarks;

/// <summary>
/// The cache server against redis-server and against the loopback TCP ceiling, same machine, same access pattern (one
/// client, one request at a time): GET and PUT of 8 MiB values and a prefix lookup of 128 keys. The ceiling is a bare
/// socket server that answers a 16-byte request with 8 MiB from memory (GET) or takes 8 MiB and answers 16 bytes (PUT).
/// Each operation moves <see cref="Values"/> values (128 MiB). Redis rows are skipped when redis-server is not installed.
/// Run: dotnet run -c Release --project bench/LMCacheSharp.Benchmarks -- --filter '*ServerBenchmarks*'
/// </summary>
[MemoryDiagnoser]
[MedianColumn]
public class ServerBenchmarks
{
    private const int ValueBytes = 8 << 20;
    private const int Values = 16;
    private const int PrefixKeys = 128;

    private CacheServer _server = null!;
    private CacheClient _client = null!;
    private RedisProcess? _redisProcess;
    private ConnectionMultiplexer? _redis;
    private LoopbackCeiling _loopback = null!;
    private KvBufferPool _pool = null!;
    private IStorageTier _tier = null!;
    private byte[] _value = null!;
    private byte[] _destination = null!;
    private byte[][] _keys = null!;
    private RedisKey[] _redisKeys = null!;
    private byte[] _prefixPacked = null!;
    private RedisKey[] _redisPrefix = null!;
    private ChunkHash[] _chunkKeys = null!;

    [GlobalSetup]
    public void Setup()
    {
        _value = new byte[ValueBytes];
        new Random(1).NextBytes(_value);
        _destination = new byte[ValueBytes];
        _keys = [.. Enumerable.Range(0, Values).Select(i => BitConverter.GetBytes(i).Concat(new byte[28]).ToArray())];
        _redisKeys = [.. _keys.Select(k => (RedisKey)k)];

        _server = CacheServer.Create(new CacheServerOptions { Port = 0, CapacityBytes = 2L << 30 });
        _server.StartAsync().GetAwaiter().GetResult();
        _client = new CacheClient(new CacheClientOptions { Port = _server.EndPoint.Port, Connections = 1 });
        foreach (var key in _keys)
        {
            _client.PutAsync(key, _value).GetAwaiter().GetResult();
        }

        var prefixKeys = Enumerable.Range(0, PrefixKeys).Select(i => BitConverter.GetBytes(1_000_000 + i).Concat(new byte[28]).ToArray()).ToArray();
        _prefixPacked = [.. prefixKeys.SelectMany(k => k)];
        foreach (var key in prefixKeys)
        {
            _client.PutAsync(key, new byte[] { 1 }).GetAwaiter().GetResult();
        }

        _redisProcess = RedisProcess.TryStart();
        if (_redisProcess is not null)
        {
            _redis = ConnectionMultiplexer.Connect($"127.0.0.1:{_redisProcess.Port},syncTimeout=30000,asyncTimeout=30000");
            var db = _redis.GetDatabase();
            foreach (var key in _redisKeys)
            {
                db.StringSet(key, _value);
            }

            _redisPrefix = [.. prefixKeys.Select(k => (RedisKey)k)];
            foreach (var key in _redisPrefix)
            {
                db.StringSet(key, new byte[] { 1 });
            }
        }

        _loopback = new LoopbackCeiling(ValueBytes);

        // The remote tier's real path: chunk envelopes, raw GETs straight into pooled chunks, checksum verified.
        _pool = new KvBufferPool(64L << 20);
        var options = new LMCacheOptions { RemoteTimeoutMs = 30_000 };
        _tier = RemoteTierFactory.Create(_server.Url + "?connections=1", options, _pool);
        var format = new KvFormat(1, 16384, 16384, KvDataType.F16, KvLayout.LayerKV); // 32 KiB/token: 256 tokens = 8 MiB
        _chunkKeys = new ChunkHash[Values];
        for (var i = 0; i < Values; i++)
        {
            var chunk = _pool.Rent(ValueBytes);
            _value.CopyTo(chunk.Span);
            var key = new byte[32];
            key[0] = (byte)i;
            key[31] = 0x5A;
            chunk.Key = _chunkKeys[i] = new ChunkHash(key);
            chunk.TokenCount = 256;
            chunk.Format = format;
            chunk.SealChecksum();
            _tier.PutAsync(chunk).AsTask().GetAwaiter().GetResult();
            chunk.Release();
        }
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _tier.DisposeAsync().AsTask().GetAwaiter().GetResult();
        _pool.Dispose();
        _client.DisposeAsync().AsTask().GetAwaiter().GetResult();
        _server.DisposeAsync().AsTask().GetAwaiter().GetResult();
        _redis?.Dispose();
        _redisProcess?.Dispose();
        _loopback.Dispose();
    }

    [Benchmark(Baseline = true, OperationsPerInvoke = Values, Description = "GET 8 MiB: loopback TCP ceiling")]
    [BenchmarkCategory("get")]
    public async Task Get_loopback()
    {
        for (var i = 0; i < Values; i++)
        {
            await _loopback.GetAsync(_destination);
        }
    }

    [Benchmark(OperationsPerInvoke = Values, Description = "GET 8 MiB: cache server")]
    [BenchmarkCategory("get")]
    public async Task Get_server()
    {
        for (var i = 0; i < Values; i++)
        {
            await _client.GetAsync(_keys[i], _destination);
        }
    }

    [Benchmark(OperationsPerInvoke = Values, Description = "GET 8 MiB: cache server, remote tier (envelope + checksum)")]
    [BenchmarkCategory("get")]
    public async Task Get_server_tier()
    {
        for (var i = 0; i < Values; i++)
        {
            var chunk = await _tier.GetAsync(_chunkKeys[i]) ?? throw new InvalidOperationException("miss");
            chunk.Release();
        }
    }

    [Benchmark(OperationsPerInvoke = Values, Description = "GET 8 MiB: redis-server")]
    [BenchmarkCategory("get")]
    public async Task Get_redis()
    {
        if (_redis is null)
        {
            return;
        }

        var db = _redis.GetDatabase();
        for (var i = 0; i < Values; i++)
        {
            using var lease = await db.StringGetLeaseAsync(_redisKeys[i]);
            lease!.Span.CopyTo(_destination);
        }
    }

    [Benchmark(OperationsPerInvoke = Values, Description = "PUT 8 MiB: loopback TCP ceiling")]
    [BenchmarkCategory("put")]
    public async Task Put_loopback()
    {
        for (var i = 0; i < Values; i++)
        {
            await _loopback.PutAsync(_value);
        }
    }

    [Benchmark(OperationsPerInvoke = Values, Description = "PUT 8 MiB: cache server")]
    [BenchmarkCategory("put")]
    public async Task Put_server()
    {
        for (var i = 0; i < Values; i++)
        {
            await _client.PutAsync(_keys[i], _value);
        }
    }

    [Benchmark(OperationsPerInvoke = Values, Description = "PUT 8 MiB: redis-server")]
    [BenchmarkCategory("put")]
    public async Task Put_redis()
    {
        if (_redis is null)
        {
            return;
        }

        var db = _redis.GetDatabase();
        for (var i = 0; i < Values; i++)
        {
            await db.StringSetAsync(_redisKeys[i], _value);
        }
    }

    [Benchmark(Description = "prefix lookup, 128 keys: cache server (EXISTS-PREFIX)")]
    [BenchmarkCategory("prefix")]
    public Task<int> Prefix_server() => _client.ExistsPrefixAsync(_prefixPacked, 32);

    [Benchmark(Description = "prefix lookup, 128 keys: redis-server (pipelined EXISTS)")]
    [BenchmarkCategory("prefix")]
    public async Task<int> Prefix_redis()
    {
        if (_redis is null)
        {
            return 0;
        }

        var batch = _redis.GetDatabase().CreateBatch();
        var exists = new Task<bool>[PrefixKeys];
        for (var i = 0; i < PrefixKeys; i++)
        {
            exists[i] = batch.KeyExistsAsync(_redisPrefix[i]);
        }

        batch.Execute();
        await Task.WhenAll(exists);
        var n = 0;
        while (n < PrefixKeys && exists[n].Result)
        {
            n++;
        }

        return n;
    }

    /// <summary>
    /// The ceiling: a bare socket server in this process. GET: the client sends 16 bytes, the server sends the value from
    /// memory. PUT: the client sends 16 bytes and the value, the server reads it into a buffer and answers 16 bytes.
    /// </summary>
    private sealed class LoopbackCeiling : IDisposable
    {
        private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
        private readonly Socket _client = new(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true, SendBufferSize = 4 << 20, ReceiveBufferSize = 4 << 20 };
        private readonly byte[] _request = new byte[16];
        private readonly Task _serving;

        public LoopbackCeiling(int valueBytes)
        {
            _listener.Start();
            _serving = Task.Run(async () =>
            {
                using var socket = await _listener.AcceptSocketAsync();
                socket.NoDelay = true;
                socket.SendBufferSize = socket.ReceiveBufferSize = 4 << 20;
                var value = new byte[valueBytes];
                var header = new byte[16];
                while (true)
                {
                    if (!await ReceiveExactlyAsync(socket, header))
                    {
                        return;
                    }

                    if (header[0] == 1)
                    {
                        await SendAllAsync(socket, value);
                    }
                    else
                    {
                        await ReceiveExactlyAsync(socket, value);
                        await SendAllAsync(socket, header);
                    }
                }
            });
            _client.Connect((IPEndPoint)_listener.LocalEndpoint);
        }

        public async Task GetAsync(byte[] destination)
        {
            _request[0] = 1;
            await SendAllAsync(_client, _request);
            await ReceiveExactlyAsync(_client, destination);
        }

        public async Task PutAsync(byte[] value)
        {
            _request[0] = 2;
            await SendAllAsync(_client, _request);
            await SendAllAsync(_client, value);
            await ReceiveExactlyAsync(_client, _request);
        }

        public void Dispose()
        {
            _client.Dispose();
            _listener.Stop();
            _serving.Wait(TimeSpan.FromSeconds(5));
        }

        private static async Task SendAllAsync(Socket socket, ReadOnlyMemory<byte> data)
        {
            while (!data.IsEmpty)
            {
                data = data[await socket.SendAsync(data)..];
            }
        }

        private static async Task<bool> ReceiveExactlyAsync(Socket socket, Memory<byte> target)
        {
            while (!target.IsEmpty)
            {
                var n = await socket.ReceiveAsync(target);
                if (n == 0)
                {
                    return false;
                }

                target = target[n..];
            }

            return true;
        }
    }
}
