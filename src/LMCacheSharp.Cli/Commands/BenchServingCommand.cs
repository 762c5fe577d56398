using System.CommandLine;
using LMCacheSharp.Bench;

namespace LMCacheSharp.Cli.Commands;

/// <summary><c>lmcache bench serving</c>: the flags of <see cref="ServingBench"/>.</summary>
internal static class BenchServingCommand
{
    public static Command Create()
    {
        var d = new ServingBenchSettings();
        var urls = new Option<string[]>("--url") { Description = "OpenAI endpoint(s) to measure instead of in-process servers (e.g. http://127.0.0.1:8000)." };
        var model = new Option<string?>("--model") { Description = "GGUF for the in-process servers. Default: the generated default model (random weights)." };
        var configs = new Option<string>("--configs") { Description = "In-process configurations: off (plain llama.cpp), context (in-context sharing only), tiers (cache tiers only), on (both); off-streams and streams: off and tiers with a KV stream per sequence (serve --kv-unified off).", DefaultValueFactory = _ => string.Join(',', d.Configs) };
        var workload = new Option<string>("--workload")
        {
            Description = "Comma list of leval, sharegpt (real data), doc-qa, chat, clients (the llama-server peer workloads, synthetic documents); all = leval,sharegpt; peer = doc-qa,chat,clients.",
            DefaultValueFactory = _ => "all",
        };
        var docWords = new Option<int>("--doc-words") { Description = "Words per synthetic document (doc-qa, chat, clients).", DefaultValueFactory = _ => d.DocWords };
        var rounds = new Option<int>("--rounds") { Description = "doc-qa: questions per document, asked round by round over all documents.", DefaultValueFactory = _ => d.Rounds };
        var conversations = new Option<int>("--conversations") { Description = "chat: conversations, interleaved turn by turn.", DefaultValueFactory = _ => d.Conversations };
        var turns = new Option<int>("--turns") { Description = "chat: turns per conversation.", DefaultValueFactory = _ => d.Turns };
        var clients = new Option<int>("--clients") { Description = "clients: concurrent clients, two questions each on their own document.", DefaultValueFactory = _ => d.Clients };
        var clientWords = new Option<int?>("--client-doc-words") { Description = "clients: words per client document. Default: half of --doc-words." };
        var repeats = new Option<int>("--repeats") { Description = "clients: runs per configuration (rotating order).", DefaultValueFactory = _ => d.Repeats };
        var concurrent = new Option<int>("--max-concurrent") { Description = "In-process servers: requests decoded together.", DefaultValueFactory = _ => d.MaxConcurrent };
        var threads = new Option<int>("--threads") { Description = "In-process servers: llama.cpp threads.", DefaultValueFactory = _ => d.Threads };
        var chunk = new Option<int>("--chunk-size") { Description = "In-process servers: chunk_size.", DefaultValueFactory = _ => d.ChunkSize };
        var data = new Option<string?>("--data") { Description = "Folder with leval/ and sharegpt/ (default: ../shared/data from the current folder or its parents)." };
        var documents = new Option<int>("--documents") { Description = "L-Eval documents (the first question of each is cold).", DefaultValueFactory = _ => d.Documents };
        var questions = new Option<int>("--questions") { Description = "Questions per document.", DefaultValueFactory = _ => d.Questions };
        var requests = new Option<int>("--requests") { Description = "ShareGPT requests replayed from run.json (after warmup.json).", DefaultValueFactory = _ => d.Requests };
        var maxChars = new Option<int>("--max-prompt-chars") { Description = "Prompts are cut to this many characters (keeps the prefix structure).", DefaultValueFactory = _ => d.MaxPromptChars };
        var maxTokens = new Option<int>("--max-tokens") { Description = "Tokens generated per request.", DefaultValueFactory = _ => d.MaxTokens };
        var ctx = new Option<int>("--ctx-size") { Description = "Context of the in-process servers.", DefaultValueFactory = _ => d.ContextSize };
        var output = new Option<string>("--output", "-o") { Description = "Folder for results (JSON, CSV, PNG).", DefaultValueFactory = _ => d.Output };
        var command = new Command("serving", "TTFT on real workloads through the OpenAI API: cold vs warm, cache off vs on.")
        {
            urls, model, configs, workload, data, documents, questions, requests, maxChars, maxTokens, ctx, output, docWords, rounds, conversations, turns,
            clients, repeats, concurrent, threads, chunk, clientWords,
        };
        var llama = new LlamaNativeOptions();
        llama.AddTo(command);
        command.SetAction(async (r, ct) =>
        {
            // Every problem of the flags is reported at once, each naming its flag, before any data is read or model loaded.
            var settings = new ServingBenchSettings
            {
                Urls = r.GetValue(urls) ?? [],
                Model = r.GetValue(model),
                Configs = ServingBenchSettings.ParseConfigs(r.GetValue(configs)!),
                Workloads = ServingBenchSettings.ParseWorkloads(r.GetValue(workload)!),
                Data = r.GetValue(data),
                Documents = r.GetValue(documents),
                Questions = r.GetValue(questions),
                Requests = r.GetValue(requests),
                MaxPromptChars = r.GetValue(maxChars),
                MaxTokens = r.GetValue(maxTokens),
                ContextSize = r.GetValue(ctx),
                Output = r.GetValue(output)!,
                DocWords = r.GetValue(docWords),
                Rounds = r.GetValue(rounds),
                Conversations = r.GetValue(conversations),
                Turns = r.GetValue(turns),
                Clients = r.GetValue(clients),
                ClientDocWords = r.GetValue(clientWords),
                Repeats = r.GetValue(repeats),
                MaxConcurrent = r.GetValue(concurrent),
                Threads = r.GetValue(threads),
                ChunkSize = r.GetValue(chunk),
                GpuLayers = r.GetValue(llama.GpuLayers),
            };
            var problems = settings.GetErrors().Concat(llama.LibraryErrors(r)).Concat(llama.GpuLayersErrors(r)).ToList();
            if (problems.Count > 0)
            {
                return await ConfigFlags.FailAsync("lmcache bench serving", problems);
            }

            try
            {
                if (settings.Urls.Count == 0)
                {
                    llama.Apply(r);
                }

                await ServingBench.RunAsync(settings, ProgressLine.ForStderr(), ct);
                return 0;
            }
            catch (BenchException e)
            {
                await Console.Error.WriteLineAsync("lmcache bench serving: " + e.Message);
                return 1;
            }
        });
        return command;
    }
}
