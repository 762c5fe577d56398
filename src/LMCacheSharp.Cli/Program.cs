using System.CommandLine;
using LMCacheSharp.Cli.Commands;

var root = new RootCommand("LMCacheSharp: a KV cache for LLM inference in .NET (LMCache for llama.cpp).");

// Each command lives in Commands/<Name>Command.cs and is registered here with one line.
var bench = new Command("bench", "Benchmarks: the cache engine, time to first token, an OpenAI endpoint, a fleet behind the router.");
bench.Subcommands.Add(EngineBenchCommand.Create());
bench.Subcommands.Add(BenchTtftCommand.Create());
bench.Subcommands.Add(BenchServingCommand.Create());
bench.Subcommands.Add(BenchFleetCommand.Create());
bench.Subcommands.Add(BenchPdCommand.Create());
root.Subcommands.Add(bench);
root.Subcommands.Add(ServeCommand.Create());
root.Subcommands.Add(ServerCommand.Create());
root.Subcommands.Add(RouterCommand.Create());
root.Subcommands.Add(ControllerCommand.Create());
root.Subcommands.Add(GenModelCommand.Create());

return await root.Parse(args).InvokeAsync().ConfigureAwait(false);
