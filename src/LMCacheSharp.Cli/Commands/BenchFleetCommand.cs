using System.CommandLine;
using LMCacheSharp.Bench;

namespace LMCacheSharp.Cli.Commands;

/// <summary><c>lmcache bench fleet</c>: the flags of <see cref="FleetBench"/>, whose fleet members are this same lmcache.</summary>
internal static class BenchFleetCommand
{
    public static Command Create()
    {
        var d = new FleetBenchSettings();
        var model = new Option<string?>("--model") { Description = "GGUF served by every instance. Default: ../shared/models/stories260K.gguf when present, else the generated default model." };
        var instances = new Option<int>("--instances") { Description = "serve instances behind the router (1..16).", DefaultValueFactory = _ => d.Instances };
        var threads = new Option<int>("--threads") { Description = "llama.cpp threads per instance (1..256).", DefaultValueFactory = _ => d.Threads };
        var ctx = new Option<int>("--ctx-size") { Description = "KV cells of each instance's context, shared by its concurrent requests.", DefaultValueFactory = _ => d.ContextSize };
        var documents = new Option<int>("--documents") { Description = "Synthetic documents (1..10000), shared out over the users.", DefaultValueFactory = _ => d.Documents };
        var users = new Option<int>("--users") { Description = "Users (1..--documents); user u owns the documents d with d mod users = u.", DefaultValueFactory = _ => d.Users };
        var questions = new Option<int>("--questions") { Description = "Questions each user asks about each of their documents (1..100); the first is cold.", DefaultValueFactory = _ => d.Questions };
        var docWords = new Option<int>("--doc-words") { Description = "Words per synthetic document (1..100000).", DefaultValueFactory = _ => d.DocWords };
        var maxTokens = new Option<int>("--max-tokens") { Description = "Tokens generated per request (1..4096).", DefaultValueFactory = _ => d.MaxTokens };
        var concurrency = new Option<int>("--concurrency") { Description = "Requests in flight at once over all users (1..1024); each user waits for an answer before asking again.", DefaultValueFactory = _ => d.Concurrency };
        var policies = new Option<string>("--policies") { Description = "Routing policies measured, comma-separated: round-robin, kv-aware, least-loaded, session.", DefaultValueFactory = _ => string.Join(',', d.Policies) };
        var sharedCache = new Option<string>("--shared-cache") { Description = "Variants, comma-separated: off (each instance its own memory only), on (plus one cache server all instances share).", DefaultValueFactory = _ => string.Join(',', d.SharedCache) };
        var controller = new Option<bool>("--controller") { Description = "Also start an lmcache controller: the instances register with it, and the router takes the instances and kv-aware's lookups from it." };
        var output = new Option<string>("--output", "-o") { Description = "Folder for results (fleet.json, fleet.csv, fleet-summary.md, fleet-ttft.png).", DefaultValueFactory = _ => d.Output };
        var command = new Command("fleet", "A fleet (serve instances, router, optional cache server) under a multi-user long-document workload: TTFT, hits by tier, throughput per routing policy.")
        {
            model, instances, threads, ctx, documents, users, questions, docWords, maxTokens, concurrency, policies, sharedCache, controller, output,
        };
        command.SetAction(async (r, ct) =>
        {
            // Every problem of the flags is reported at once, each naming its flag.
            var settings = new FleetBenchSettings
            {
                Model = r.GetValue(model),
                Instances = r.GetValue(instances),
                Threads = r.GetValue(threads),
                ContextSize = r.GetValue(ctx),
                Documents = r.GetValue(documents),
                Users = r.GetValue(users),
                Questions = r.GetValue(questions),
                DocWords = r.GetValue(docWords),
                MaxTokens = r.GetValue(maxTokens),
                Concurrency = r.GetValue(concurrency),
                Policies = FleetBenchSettings.ParseList(r.GetValue(policies)),
                SharedCache = FleetBenchSettings.ParseList(r.GetValue(sharedCache)),
                Controller = r.GetValue(controller),
                Output = r.GetValue(output)!,
            };
            if (settings.GetErrors() is { Count: > 0 } problems)
            {
                return await ConfigFlags.FailAsync("lmcache bench fleet", problems);
            }

            try
            {
                await FleetBench.RunAsync(settings, Self(), ct);
                return 0;
            }
            catch (BenchException e)
            {
                await Console.Error.WriteLineAsync("lmcache bench fleet: " + e.Message);
                return 1;
            }
        });
        return command;
    }

    // dotnet lmcache.dll when this runs under the dotnet host, else the executable itself (apphost or tool shim).
    internal static FleetLauncher Self()
    {
        var path = Environment.ProcessPath ?? "dotnet";
        if (string.Equals(Path.GetFileNameWithoutExtension(path), "dotnet", StringComparison.OrdinalIgnoreCase))
        {
            var dll = typeof(BenchFleetCommand).Assembly.Location;
            return new FleetLauncher(path, [string.IsNullOrEmpty(dll) ? Path.Combine(AppContext.BaseDirectory, "lmcache.dll") : dll]);
        }

        return new FleetLauncher(path, []);
    }
}
