namespace LMCacheSharp.Core.Codecs;

/// <summary>The codecs this build knows, by id and by configuration name.</summary>
public static class KvCodecs
{
    private static readonly IKvCodec[] All = [RawCodec.Instance];

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
}
