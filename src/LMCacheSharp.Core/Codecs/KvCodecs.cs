using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Keys;

namespace LMCacheSharp.Core.Codecs;

/// <summary>The codecs this build knows, by id and by configuration name.</summary>
public static class KvCodecs
{
    private static readonly IKvCodec[] All = [RawCodec.Instance, Lz4Codec.Instance, ZstdCodec.Instance, Int8GroupCodec.Instance, Fp8E4M3Codec.Instance];

    /// <summary>Every registered codec.</summary>
    public static IReadOnlyList<IKvCodec> Registered => All;

    /// <summary>The codec with this id, or null.</summary>
    public static IKvCodec? Find(KvCodecId id)
    {
        foreach (var codec in All)
        {
            if (codec.Id == id)
            {
                return codec;
            }
        }

        return null;
    }

    /// <summary>The codec with this configuration name (case-insensitive), or null.</summary>
    public static IKvCodec? Find(string name)
    {
        foreach (var codec in All)
        {
            if (string.Equals(codec.Name, name, StringComparison.OrdinalIgnoreCase) ||
                string.Equals(codec.Id.ToString(), name, StringComparison.OrdinalIgnoreCase))
            {
                return codec;
            }
        }

        return null;
    }

    /// <summary>Names accepted by <see cref="Find(string)"/>, for error messages.</summary>
    public static string Names => string.Join(", ", All.Select(c => c.Name));

    /// <summary>
    /// The lossy codecs that <paramref name="options"/> configures for an enabled tier (disk when <c>local_disk</c> is set,
    /// remote when <c>remote_url</c> is set), as a variant string such as <c>lossy=int8</c> or <c>lossy=fp8+int8</c>
    /// (distinct names, ordinal order), or null when every configured codec is lossless.
    /// </summary>
    public static string? LossyVariant(LMCacheOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var names = new SortedSet<string>(StringComparer.Ordinal);
        if (!string.IsNullOrEmpty(options.LocalDisk) && Find(options.LocalDiskSerde) is { IsLossless: false } disk)
        {
            names.Add(disk.Name);
        }

        if (!string.IsNullOrEmpty(options.RemoteUrl) && Find(options.RemoteSerde) is { IsLossless: false } remote)
        {
            names.Add(remote.Name);
        }

        return names.Count == 0 ? null : "lossy=" + string.Join('+', names);
    }

    /// <summary>
    /// <paramref name="ns"/> with the lossy codecs of <paramref name="options"/> folded into its
    /// <see cref="CacheNamespace.Variant"/> (appended after any existing variant with '|'), so that KV that may have been
    /// through a lossy codec is never served under the keys of exact KV, and caches using different lossy codecs never share
    /// chunks. Returns <paramref name="ns"/> itself when every configured codec is lossless.
    /// </summary>
    /// <exception cref="LMCacheConfigurationException">A configured lossy codec cannot encode <paramref name="ns"/>'s format
    /// (already-quantized KV, or an engine-native layout): the tier would never store anything.</exception>
    public static CacheNamespace WithCodecVariant(CacheNamespace ns, LMCacheOptions options)
    {
        ArgumentNullException.ThrowIfNull(ns);
        var lossy = LossyVariant(options);
        if (lossy is not null)
        {
            var problems = new List<string>();
            foreach (var (key, enabled, name) in new[] { ("local_disk_serde", !string.IsNullOrEmpty(options.LocalDisk), options.LocalDiskSerde),
                ("remote_serde", !string.IsNullOrEmpty(options.RemoteUrl), options.RemoteSerde) })
            {
                if (enabled && Find(name) is { IsLossless: false } codec && KvElements.LossyUnsupportedReason(ns.Format, codec.Name) is { } reason)
                {
                    problems.Add($"{key}: {reason}");
                }
            }

            if (problems.Count > 0)
            {
                throw new LMCacheConfigurationException(problems);
            }
        }

        if (lossy is null || ns.Variant == lossy || (ns.Variant?.EndsWith("|" + lossy, StringComparison.Ordinal) ?? false))
        {
            return ns;
        }

        return ns.WithVariant(ns.Variant is null ? lossy : ns.Variant + "|" + lossy);
    }
}
