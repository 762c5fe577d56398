using System.Diagnostics;
using System.Text.RegularExpressions;

namespace LMCacheSharp.Controller.Tests;

/// <summary>The dashboard at / in headless Chromium (Debian's <c>chromium</c>, which .ci/services installs).</summary>
public sealed partial class DashboardTests
{
    private static string? Chromium() =>
        new[] { "/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome" }.FirstOrDefault(File.Exists);

    private static async Task<(int ExitCode, string Output)> RunChromiumAsync(string chromium, params string[] args)
    {
        var start = new ProcessStartInfo(chromium) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", $"--user-data-dir={Path.Combine(Path.GetTempPath(), "lmcache-chromium-" + Guid.NewGuid().ToString("N"))}" }.Concat(args))
        {
            start.ArgumentList.Add(a);
        }

        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(90));
        try
        {
            await process.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException("chromium did not finish in 90 s: " + await stderr);
        }

        return (process.ExitCode, await stdout);
    }

    [Fact]
    public async Task The_dashboard_renders_live_numbers_from_the_event_stream()
    {
        if (Chromium() is not { } chromium)
        {
            Assert.Skip("chromium is not installed (apt-get install -y chromium; .ci/services installs it)");
            return;
        }

        await using var controller = await RunningController.StartAsync();
        using var instance = new FakeInstance("http://127.0.0.1:7001");
        instance.Store([.. Enumerable.Range(1, 16)]);
        await instance.FlushAsync();
        await instance.RegisterAsync(controller);
        await controller.OkAsync("/instances/heartbeat", new
        {
            id = instance.Id,
            load = new { in_flight = 3, queued = 1 },
            stats = new { lookup_tokens = 1000, hit_tokens = 875, memory_used_bytes = 3L << 20, memory_capacity_bytes = 8L << 20 },
        });
        await controller.OkAsync("/router/report", new { router = "router-1", policy = "kv-aware", decisions_total = 40 });
        await RunningController.EventuallyAsync(() => controller.Directory.Count == 4, "the instance's chunks");

        // Headless Chromium under load (a fresh profile, two busy cores) can dump the page before its stream's first
        // snapshot has been handled: up to three tries, each a whole page load, before the checks.
        var (code, dom) = (0, "");
        for (var attempt = 0; attempt < 3; attempt++)
        {
            (code, dom) = await RunChromiumAsync(chromium, "--virtual-time-budget=5000", "--dump-dom", controller.Url + "/?limit=2");
            Assert.True(code == 0, "chromium failed: " + dom);
            if (dom.Contains($"id=\"inst-{instance.Id}\"", StringComparison.Ordinal))
            {
                break;
            }
        }

        // Only the script fills these in, from an SSE snapshot: the static page has none of them.
        Assert.Contains($"id=\"inst-{instance.Id}\"", dom, StringComparison.Ordinal);
        Assert.Matches(InFlight(), dom);
        Assert.Contains("87.5%", dom, StringComparison.Ordinal);
        Assert.Contains("4 / 0 / 0", dom, StringComparison.Ordinal);
        Assert.Contains("router-1", dom, StringComparison.Ordinal);
        Assert.Contains("<span id=\"status\">connected</span>", dom, StringComparison.Ordinal);
        var seq = int.Parse(SnapshotSeq().Match(dom).Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        Assert.True(seq >= 1, $"snapshot {seq}");

        // A screenshot for docs/fleet.md when asked (LMCACHE_DASHBOARD_SCREENSHOT=path.png).
        if (Environment.GetEnvironmentVariable("LMCACHE_DASHBOARD_SCREENSHOT") is { Length: > 0 } shot)
        {
            var (shotCode, _) = await RunChromiumAsync(chromium, "--virtual-time-budget=3000", "--window-size=1400,620", "--hide-scrollbars", $"--screenshot={shot}", controller.Url + "/?limit=2");
            Assert.Equal(0, shotCode);
        }
    }

    [GeneratedRegex("class=\"n in-flight\">3<")]
    private static partial Regex InFlight();

    [GeneratedRegex("<span id=\"seq\">(\\d+)</span>")]
    private static partial Regex SnapshotSeq();
}
