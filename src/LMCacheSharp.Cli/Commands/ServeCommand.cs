using System.CommandLine;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Serving;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace LMCacheSharp.Cli.Commands;

/// <summary><c>lmcache serve</c>: the OpenAI-compatible server with the KV cache.</summary>
internal static class ServeCommand
{
    public static Command Create()
    {
        var model = new Option<string?>("--model", "-m") { Description = "GGUF model (Llama architecture). Default: a generated model with random weights." };
        var modelName = new Option<string?>("--model-name") { Description = "Name served in /v1/models. Default: the file name." };
        var config = new Option<string?>("--config") { Description = "LMCache YAML configuration (chunk_size, max_local_cpu_size, local_disk, remote_url, ...)." };
        var cacheSettings = new Option<string[]>("--lmcache") { Description = "Cache setting KEY=VALUE (LMCache key), repeatable; wins over --config and LMCACHE_*.", AllowMultipleArgumentsPerToken = false };
        var host = new Option<string>("--host") { Description = "Address to bind.", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "Port (0 picks a free one).", DefaultValueFactory = _ => 8000 };
        var ctx = new Option<int?>("--ctx-size") { Description = "KV cells of the context, shared by concurrent requests. Default: 4096, or the model's trained context when smaller." };
        var concurrent = new Option<int>("--max-concurrent") { Description = "Requests decoded together (one sequence each).", DefaultValueFactory = _ => 4 };
        var queue = new Option<int>("--max-queue") { Description = "Requests that may wait; beyond it: 429.", DefaultValueFactory = _ => 64 };
        var batch = new Option<int>("--batch-size") { Description = "Tokens per decode call.", DefaultValueFactory = _ => 512 };
        var threads = new Option<int>("--threads") { Description = "CPU threads.", DefaultValueFactory = _ => Environment.ProcessorCount };
        var flash = new Option<string>("--flash-attention") { Description = "on, off or auto (auto: on for head size >= 64).", DefaultValueFactory = _ => "auto" };
        var maxTokens = new Option<int>("--default-max-tokens") { Description = "max_tokens when a request gives none.", DefaultValueFactory = _ => 256 };
        var noCache = new Option<bool>("--no-cache") { Description = "Serve without the KV cache (the baseline)." };
        var logLevel = new Option<string>("--log-level") { Description = "trace, debug, information, warning, error or none (information: one line per request).", DefaultValueFactory = _ => "information" };
        var kvEvents = new Option<string?>("--kv-events") { Description = "Publish KV events in vLLM's format on a ZeroMQ PUB socket bound at tcp://HOST:PORT (kv_events_endpoint)." };
        var kvEventsReplay = new Option<string?>("--kv-events-replay") { Description = "Answer replay requests on a ZeroMQ ROUTER socket bound at tcp://HOST:PORT (kv_events_replay_endpoint)." };
        var kvEventsTopic = new Option<string?>("--kv-events-topic") { Description = "Topic frame of the KV event messages (kv_events_topic). Default: kv-events." };
        var stall = new Option<double>("--stall-timeout") { Description = "Seconds without progress of the inference loop (with requests pending) after which /health answers 503.", DefaultValueFactory = _ => 60 };
        var controller = new Option<string?>("--controller") { Description = "Register with the fleet controller at this URL (lmcache controller), heartbeat, and publish KV events to it (on free 127.0.0.1 ports unless --kv-events is given)." };
        var controllerToken = new Option<string?>("--controller-token") { Description = "The controller's --auth-token (also LMCACHE_CONTROLLER_TOKEN): sent to it, and required on this server's /lmcache/prefetch and /lmcache/clear." };
        var kvUnified = new Option<string>("--kv-unified") { Description = "on: one KV cache shared by all sequences (a request may fill the context; prefixes shared in place). off: a KV stream per sequence of ctx-size / max-concurrent cells, attention over a request's own cells only (faster under concurrency).", DefaultValueFactory = _ => "on" };
        var role = new Option<string>("--role") { Description = "both, prefill or decode: the instance's part in a prefill/decode-disaggregated fleet behind `lmcache router --pd` (prefill and decode need a shared store, remote_url).", DefaultValueFactory = _ => "both" };
        var llama = new LlamaNativeOptions();
        var command = new Command("serve", "Serve a GGUF model through the OpenAI API (/v1/completions, /v1/chat/completions) with the KV cache.")
        {
            model, modelName, config, cacheSettings, host, port, ctx, concurrent, queue, batch, threads, flash, maxTokens, noCache, logLevel, stall,
            kvEvents, kvEventsReplay, kvEventsTopic, controller, controllerToken, role, kvUnified,
        };
        llama.AddTo(command);
        command.SetAction(async (r, ct) =>
        {
            // Every problem of the file, the environment and the flags is reported at once, each naming its source.
            var problems = new List<string>();
            var overrides = new List<KeyValuePair<string, string>>();
            foreach (var setting in r.GetValue(cacheSettings) ?? [])
            {
                var eq = setting.IndexOf('=', StringComparison.Ordinal);
                if (eq <= 0)
                {
                    problems.Add($"--lmcache: takes KEY=VALUE, got '{setting}'");
                    continue;
                }

                overrides.Add(new(setting[..eq].Trim(), setting[(eq + 1)..].Trim()));
            }

            // The KV event flags are LMCache keys like any other: one loader validates them, after the file and LMCACHE_*.
            foreach (var (flag, key) in new[] { (kvEvents, "kv_events_endpoint"), (kvEventsReplay, "kv_events_replay_endpoint"), (kvEventsTopic, "kv_events_topic") })
            {
                if (r.GetValue(flag) is { } value)
                {
                    overrides.Add(new(key, value));
                }
            }

            var controllerUrl = FleetOptions.ParseController(r.GetValue(controller), problems);
            if (controllerUrl is not null && r.GetValue(kvEvents) is null)
            {
                FleetOptions.AddFreeEventPorts(overrides, r.GetValue(kvEventsReplay) is null);
            }

            var warnings = new List<string>();
            var cacheOptions = new LMCacheOptions();
            try
            {
                cacheOptions = LMCacheConfigLoader.Load(r.GetValue(config), null, overrides, warnings);
            }
            catch (LMCacheConfigurationException e)
            {
                problems.AddRange(e.Errors);
            }

            warnings.ForEach(w => Console.Error.WriteLine("warning: " + w));
            var flashText = r.GetValue(flash)!.ToLowerInvariant();
            if (flashText is not ("on" or "off" or "auto"))
            {
                problems.Add($"--flash-attention: must be on, off or auto, got '{flashText}'");
            }

            if (!TryParseLogLevel(r.GetValue(logLevel)!, out var level))
            {
                problems.Add($"--log-level: must be trace, debug, information, warning, error or none, got '{r.GetValue(logLevel)}'");
            }

            var kvUnifiedText = r.GetValue(kvUnified)!.ToLowerInvariant();
            if (kvUnifiedText is not ("on" or "off"))
            {
                problems.Add($"--kv-unified: must be on or off, got '{kvUnifiedText}'");
            }

            var roleText = r.GetValue(role)!.ToLowerInvariant();
            var serveRole = roleText switch { "prefill" => ServeRole.Prefill, "decode" => ServeRole.Decode, _ => ServeRole.Both };
            if (roleText is not ("both" or "prefill" or "decode"))
            {
                problems.Add($"--role: must be both, prefill or decode, got '{roleText}'");
            }
            else if (serveRole != ServeRole.Both && string.IsNullOrEmpty(cacheOptions.RemoteUrl) && !r.GetValue(noCache))
            {
                problems.Add($"--role {roleText}: needs a shared store for the KV (remote_url: lm://host:port or redis://host:port, e.g. --lmcache remote_url=lm://127.0.0.1:65432)");
            }

            var options = new ServingOptions
            {
                Role = serveRole,
                LogLevel = level < 0 ? LogLevel.Information : level,
                StallTimeout = TimeSpan.FromSeconds(Math.Clamp(r.GetValue(stall), 0, 1e6)),
                ModelPath = r.GetValue(model),
                ModelName = r.GetValue(modelName),
                ContextSize = r.GetValue(ctx),
                MaxConcurrentRequests = r.GetValue(concurrent),
                MaxQueuedRequests = r.GetValue(queue),
                BatchSize = r.GetValue(batch),
                Threads = r.GetValue(threads),
                FlashAttention = flashText == "auto" ? null : flashText == "on",
                KvUnified = kvUnifiedText != "off",
                DefaultMaxTokens = r.GetValue(maxTokens),
                EnableCache = !r.GetValue(noCache),
                GpuLayers = r.GetValue(llama.GpuLayers),
                Progress = ProgressLine.ForStderr(),
            };
            problems.AddRange(options.GetErrors());
            problems.AddRange(llama.LibraryErrors(r));
            if (problems.Count > 0)
            {
                return await ConfigFlags.FailAsync("lmcache serve", problems);
            }

            // A busy port is found before minutes go into generating or loading a model.
            if (PortInUse(r.GetValue(host)!, r.GetValue(port)) is { } busy)
            {
                await Console.Error.WriteLineAsync(busy);
                return 2;
            }

            var url = $"http://{r.GetValue(host)}:{r.GetValue(port)}";
            try
            {
                llama.Apply(r);
                await using var app = ServingApp.Build(options, cacheOptions, [url]);
                var fleetToken = r.GetValue(controllerToken) ?? Environment.GetEnvironmentVariable("LMCACHE_CONTROLLER_TOKEN");
                FleetOptions.Map(app, fleetToken);
                await app.StartAsync(ct);
                var service = app.Services.GetRequiredService<LMCacheSharp.Serving.Inference.InferenceService>();
                await using var registration = FleetOptions.Register(app, controllerUrl, fleetToken);
                var totalCells = options.KvUnified ? service.ContextSize : service.ContextSize * options.MaxConcurrentRequests;
                var ctxSource = options.ContextSize is null ? (totalCells < ServingOptions.DefaultContextSize ? ", the model's trained context" : ", the default") : "";
                Console.WriteLine($"lmcache serve: {string.Join(", ", app.Urls)} (model '{service.ModelName}', context {service.ContextSize} tokens{(options.KvUnified ? "" : $" per request ({options.MaxConcurrentRequests} KV streams)")}{ctxSource}, cache {(options.EnableCache ? "on" : "off")}); Ctrl+C to stop");
                if (app.Services.GetService<LMCacheSharp.KvEvents.ZmqKvEventPublisher>() is { } events)
                {
                    Console.WriteLine($"lmcache serve: KV events on {events.Endpoint} (topic '{events.Topic}'{(events.ReplayEndpoint is { } replay ? $", replay on {replay}" : "")})");
                }
                else if (cacheOptions.KvEventsEndpoint is not null)
                {
                    await Console.Error.WriteLineAsync("warning: --no-cache: no KV events are published");
                }

                await app.WaitForShutdownAsync(ct);
                return 0;
            }
            catch (LMCacheConfigurationException e)
            {
                // Found while starting (a KV event port in use): a configuration problem like those above.
                await Console.Error.WriteLineAsync("lmcache serve: " + string.Join("; ", e.Errors));
                return 2;
            }
            catch (Exception e) when (e is InvalidDataException or FileNotFoundException or ArgumentException or IOException)
            {
                await Console.Error.WriteLineAsync("lmcache serve: " + e.Message);
                return 1;
            }
        });
        return command;
    }

    internal static bool TryParseLogLevel(string text, out LogLevel level)
    {
        level = text.ToLowerInvariant() switch
        {
            "trace" => LogLevel.Trace,
            "debug" => LogLevel.Debug,
            "information" or "info" => LogLevel.Information,
            "warning" or "warn" => LogLevel.Warning,
            "error" => LogLevel.Error,
            "none" => LogLevel.None,
            _ => (LogLevel)(-1),
        };
        return level >= 0;
    }

    /// <summary>A one-line message when <paramref name="port"/> cannot be bound on <paramref name="host"/>, else null (port 0 is always free).</summary>
    internal static string? PortInUse(string host, int port)
    {
        if (port == 0)
        {
            return null;
        }

        if (port is < 0 or > 65535)
        {
            return $"--port must be 0..65535, got {port}";
        }

        System.Net.IPAddress address;
        if (host is "localhost")
        {
            address = System.Net.IPAddress.Loopback;
        }
        else if (!System.Net.IPAddress.TryParse(host, out address!))
        {
            return null; // a host name: Kestrel resolves it and reports its own error
        }

        try
        {
            using var probe = new System.Net.Sockets.TcpListener(address, port);
            probe.Start();
            probe.Stop();
            return null;
        }
        catch (System.Net.Sockets.SocketException e) when (e.SocketErrorCode == System.Net.Sockets.SocketError.AddressAlreadyInUse)
        {
            return $"port {port} is in use; pass --port";
        }
        catch (System.Net.Sockets.SocketException e)
        {
            return $"cannot listen on {host}:{port}: {e.Message}";
        }
    }
}
