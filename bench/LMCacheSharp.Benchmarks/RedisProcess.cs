using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace LMCacheSharp.Benchmarks;

/// <summary>A private redis-server (no persistence) on a free loopback port, for side-by-side benchmarks; null when redis-server is not installed.</summary>
internal sealed class RedisProcess : IDisposable
{
    private readonly Process _process;
    private readonly string _dir;

    private RedisProcess(Process process, int port, string dir)
    {
        _process = process;
        Port = port;
        _dir = dir;
    }

    public int Port { get; }

    public static RedisProcess? TryStart()
    {
        var port = FreePort();
        var dir = Directory.CreateTempSubdirectory("lmcache-bench-redis-").FullName;
        Process? process;
        try
        {
            process = Process.Start(new ProcessStartInfo("redis-server",
                ["--bind", "127.0.0.1", "--port", port.ToString(System.Globalization.CultureInfo.InvariantCulture), "--save", "", "--appendonly", "no",
                 "--dir", dir, "--protected-mode", "yes", "--proto-max-bulk-len", "1gb"])
            {
                RedirectStandardOutput = true,
                UseShellExecute = false,
            });
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return null; // not installed
        }

        if (process is null)
        {
            return null;
        }

        process.OutputDataReceived += (_, _) => { };
        process.BeginOutputReadLine();
        for (var i = 0; i < 100; i++)
        {
            try
            {
                using var probe = new Socket(SocketType.Stream, ProtocolType.Tcp);
                probe.Connect(IPAddress.Loopback, port);
                return new RedisProcess(process, port, dir);
            }
            catch (SocketException)
            {
                Thread.Sleep(50);
            }
        }

        process.Kill();
        process.Dispose();
        return null;
    }

    public void Dispose()
    {
        try
        {
            _process.Kill();
            _process.WaitForExit(5000);
        }
        catch (InvalidOperationException)
        {
        }

        _process.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
