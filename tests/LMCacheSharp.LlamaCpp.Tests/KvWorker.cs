using System.Globalization;
using LMCacheSharp.Core.Configuration;

namespace LMCacheSharp.LlamaCpp.Tests;

/// <summary>
/// The other process of the cross-process test: <c>kv-worker store MODEL FA LAYOUT CHUNK DIR TOKENS</c> prefills the
/// comma-separated tokens with a cache whose only tier is the disk tier over DIR, stores the prompt's
/// chunks there and prints the tokens stored.
/// </summary>
internal static class KvWorker
{
    public const string Verb = "kv-worker";

    public static async Task<int> RunAsync(string[] args)
    {
        if (args.Length != 7 || args[0] != "store")
        {
            await Console.Error.WriteLineAsync("usage: kv-worker store MODEL FA(true|false) LAYOUT CHUNK DIR TOKENS");
            return 2;
        }

        var model = args[1];
        var flashAttention = bool.Parse(args[2]);
        var layout = Enum.Parse<LlamaChunkLayout>(args[3]);
        var chunk = int.Parse(args[4], CultureInfo.InvariantCulture);
        var dir = args[5];
        var tokens = args[6].Split(',').Select(t => int.Parse(t, CultureInfo.InvariantCulture)).ToArray();
        _ = TestModels.Directory; // installs the quiet log callback
        using var lm = new LlamaTestModel(model, flashAttention);
        var options = new LMCacheOptions { ChunkSize = chunk, LocalCpu = false, LocalDisk = dir, MaxLocalDiskSize = 1, TokenExactReuse = false };
        await using var cache = LlamaKvCache.CreateWithEngine(lm.Handle, GgufFingerprint.Compute(model), options,
            new LlamaKvCacheOptions { Layout = layout });
        var generator = new CachedGenerator(lm.Handle, cache);
        var result = await generator.PrefillAsync(tokens);
        await cache.Engine.FlushAsync();
        Console.WriteLine(result.StoredTokens.ToString(CultureInfo.InvariantCulture));
        return 0;
    }
}
