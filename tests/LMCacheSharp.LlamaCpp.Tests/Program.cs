using System.Diagnostics.CodeAnalysis;

// Llama tests share the machine's cores: two contexts computing at once make ggml's spinning barriers crawl.
[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace LMCacheSharp.LlamaCpp.Tests;

/// <summary>
/// The test executable's entry point: <c>kv-worker ...</c> runs <see cref="KvWorker"/> (the other process of the
/// cross-process test); anything else goes to xunit exactly as its generated entry point would.
/// </summary>
[ExcludeFromCodeCoverage]
internal static class Program
{
    public static int Main(string[] args)
    {
        if (args.Length > 0 && args[0] == KvWorker.Verb)
        {
            return KvWorker.RunAsync(args[1..]).GetAwaiter().GetResult();
        }

        if (args.Any(arg => arg is "--server" or "--internal-msbuild-node"))
        {
            return Xunit.MicrosoftTestingPlatform.TestPlatformTestFramework.RunAsync(args, SelfRegisteredExtensions.AddSelfRegisteredExtensions)
                .GetAwaiter().GetResult();
        }

        return Xunit.Runner.InProc.SystemConsole.ConsoleRunner.Run(args).GetAwaiter().GetResult();
    }
}
