using BenchmarkDotNet.Running;

// dotnet run -c Release --project bench/LMCacheSharp.Benchmarks -- --filter '*'
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
