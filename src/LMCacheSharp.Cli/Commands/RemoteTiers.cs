using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Metrics;
using LMCacheSharp.Core.Storage;

namespace LMCacheSharp.Cli.Commands;

/// <summary>The lower tiers that the configuration asks for beyond what the core builds (the remote tier).</summary>
internal static class RemoteTiers
{
    public static Func<KvBufferPool, CacheMetrics, IEnumerable<IStorageTier>>? For(LMCacheOptions options) =>
        string.IsNullOrEmpty(options.RemoteUrl) ? null : throw new ArgumentException($"remote_url '{options.RemoteUrl}': remote tiers are not built into this version yet");
}
