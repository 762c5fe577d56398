using System.Diagnostics;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace LMCacheSharp.Cli.Tests;

/// <summary>
/// A long-running lmcache (<c>serve</c> or <c>server</c>) started as a process: waits for the line naming its address,
/// keeps its output, and is killed on dispose.
/// </summary>
internal sealed partial class RunningLmcache : IAsyncDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _output = new();
    private readonly TaskCompletionSource<string> _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private RunningLmcache(Process process) => _process = process;

    /// <summary>What the process printed on its start line: http://127.0.0.1:PORT or lm://127.0.0.1:PORT.</summary>
    public string Address => _ready.Task.Result;

    /// <summary>Its stdout and stderr so far.</summary>
    public string Output
    {
        get
        {
            lock (_output)
            {
                return _output.ToString();
            }
        }
    }

    /// <summary>
    /// Starts <paramref name="fileName"/> with <paramref name="args"/> and waits (up to <paramref name="timeout"/>) for its
    /// "lmcache serve: URL" or "lmcache server: URL" line. A process that exits first fails with what it printed.
    /// </summary>
    public static Task<RunningLmcache> StartAsync(TimeSpan timeout, string fileName, params string[] args) =>
        StartAsync(timeout, new Dictionary<string, string>(), fileName, args);

    /// <summary>As <see cref="StartAsync(TimeSpan, string, string[])"/>, with <paramref name="environment"/> added to the process's.</summary>
    public static async Task<RunningLmcache> StartAsync(TimeSpan timeout, IReadOnlyDictionary<string, string> environment, string fileName,
        params string[] args)
    {
        var info = new ProcessStartInfo(fileName) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args)
        {
            info.ArgumentList.Add(a);
        }

        info.Environment["LMCACHE_HOME"] = LmcacheProcess.Home;
        foreach (var (name, value) in environment)
        {
            info.Environment[name] = value;
        }

        var running = new RunningLmcache(new Process { StartInfo = info });
        running._process.OutputDataReceived += (_, e) => running.OnLine(e.Data);
        running._process.ErrorDataReceived += (_, e) => running.OnLine(e.Data);
        running._process.Start();
        running._process.BeginOutputReadLine();
        running._process.BeginErrorReadLine();
        using var cts = new CancellationTokenSource(timeout);
        var exited = running._process.WaitForExitAsync(cts.Token);
        if (await Task.WhenAny(running._ready.Task, exited) != running._ready.Task)
        {
            var output = running.Output;
            await running.DisposeAsync();
            throw new InvalidOperationException($"{fileName} {string.Join(' ', args)} did not start within {timeout}; it printed:\n{output}");
        }

        return running;
    }

    /// <summary>The shared libraries (full paths) mapped into the process whose file name is <paramref name="fileName"/> (Linux: /proc/PID/maps).</summary>
    public IReadOnlyList<string> MappedLibraries(string fileName) =>
        [.. File.ReadAllLines($"/proc/{_process.Id}/maps")
            .Select(line => line.IndexOf('/', StringComparison.Ordinal) is var i and >= 0 ? line[i..] : "")
            .Where(path => Path.GetFileName(path) == fileName)
            .Distinct()];

    /// <summary>POSTs one greedy completion to /v1/completions and returns the JSON answer (the status must be 200).</summary>
    public async Task<JsonElement> CompleteAsync(string prompt, int maxTokens)
    {
        using var http = new HttpClient { BaseAddress = new Uri(Address), Timeout = TimeSpan.FromSeconds(60) };
        using var response = await http.PostAsJsonAsync("/v1/completions", new { prompt, max_tokens = maxTokens, temperature = 0 });
        var body = await response.Content.ReadAsStringAsync();
        Assert.True(response.IsSuccessStatusCode, $"{(int)response.StatusCode}: {body}\n{Output}");
        using var json = JsonDocument.Parse(body);
        return json.RootElement.Clone();
    }

    /// <summary>Checks the shape of a completion answer: one choice of <paramref name="maxTokens"/> tokens, usage filled in.</summary>
    public static void AssertCompletion(JsonElement answer, int maxTokens)
    {
        Assert.Equal("text_completion", answer.GetProperty("object").GetString());
        var choice = Assert.Single(answer.GetProperty("choices").EnumerateArray());
        Assert.Equal(JsonValueKind.String, choice.GetProperty("text").ValueKind);
        Assert.Equal("length", choice.GetProperty("finish_reason").GetString());
        var usage = answer.GetProperty("usage");
        Assert.True(usage.GetProperty("prompt_tokens").GetInt32() > 0);
        Assert.Equal(maxTokens, usage.GetProperty("completion_tokens").GetInt32());
    }

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
        }

        await _process.WaitForExitAsync(CancellationToken.None);
        _process.Dispose();
    }

    private void OnLine(string? line)
    {
        if (line is null)
        {
            return;
        }

        lock (_output)
        {
            _output.AppendLine(line);
        }

        if (StartLine().Match(line) is { Success: true } m)
        {
            _ready.TrySetResult(m.Groups[1].Value);
        }
    }

    [GeneratedRegex(@"^lmcache (?:serve|server): ((?:http|lm)://[^\s,]+)")]
    private static partial Regex StartLine();
}
