using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Core.Keys;

/// <summary>
/// Everything that makes KV incompatible, folded into the seed of every key's hash chain: the model fingerprint (weights
/// and architecture), the KV format (dtype, layout, shape), the key-format version, an optional tenant salt, optional tags,
/// and an optional variant (for example a lossy codec that changes the KV bits).
/// Two namespaces that differ in any field never produce the same keys.
/// </summary>
public sealed class CacheNamespace : IEquatable<CacheNamespace>
{
    /// <summary>Version of the key derivation; bump when hashing or payload semantics change.</summary>
    public const int KeyFormatVersion = 1;

    private readonly SortedDictionary<string, string> _tags;

    /// <summary>Creates a namespace.</summary>
    /// <param name="modelFingerprint">Identifies weights and architecture (for example a hash of the GGUF). Non-empty.</param>
    /// <param name="format">The KV format.</param>
    /// <param name="salt">Optional tenant salt (<c>cache_salt</c>); tenants with different salts never share KV.</param>
    /// <param name="tags">Optional tags (<c>lmcache.tag.*</c>); part of the key.</param>
    /// <param name="variant">Optional extra discriminator, such as a lossy codec name.</param>
    public CacheNamespace(string modelFingerprint, KvFormat format, string? salt = null,
        IEnumerable<KeyValuePair<string, string>>? tags = null, string? variant = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(modelFingerprint);
        format.Validate();
        ModelFingerprint = modelFingerprint;
        Format = format;
        Salt = string.IsNullOrEmpty(salt) ? null : salt;
        Variant = string.IsNullOrEmpty(variant) ? null : variant;
        _tags = new SortedDictionary<string, string>(StringComparer.Ordinal);
        if (tags is not null)
        {
            foreach (var (k, v) in tags)
            {
                _tags[k] = v;
            }
        }

        Seed = ComputeSeed();
    }

    /// <summary>The model fingerprint.</summary>
    public string ModelFingerprint { get; }

    /// <summary>The KV format.</summary>
    public KvFormat Format { get; }

    /// <summary>The tenant salt, or null.</summary>
    public string? Salt { get; }

    /// <summary>The variant, or null.</summary>
    public string? Variant { get; }

    /// <summary>Tags in ordinal key order.</summary>
    public IReadOnlyDictionary<string, string> Tags => _tags;

    /// <summary>The hash that starts every key chain in this namespace ("hash -1").</summary>
    public ChunkHash Seed { get; }

    /// <summary>
    /// The quota group of this namespace's chunks on a shared cache server (<see cref="QuotaGroupOf"/> of <see cref="Salt"/>),
    /// or null without a salt.
    /// </summary>
    public string? QuotaGroup => Salt is null ? null : _quotaGroup ??= QuotaGroupOf(Salt);

    private string? _quotaGroup;

    /// <summary>
    /// The quota group id of a <c>cache_salt</c>: 16 lower-case hex characters, the first 8 bytes of
    /// SHA-256("lmcachesharp.quota-group" || 0 || UTF-8 salt). A client sends it with each PUT of a salted chunk and the
    /// cache server computes it from the salts it has quotas for, so the salt itself never travels; short and stable
    /// across processes. Not a secret: a weak salt can be guessed from it offline.
    /// </summary>
    public static string QuotaGroupOf(string salt)
    {
        ArgumentException.ThrowIfNullOrEmpty(salt);
        var input = Encoding.UTF8.GetBytes("lmcachesharp.quota-group\0" + salt);
        return Convert.ToHexStringLower(SHA256.HashData(input).AsSpan(0, 8));
    }

    /// <summary>The same namespace with another salt.</summary>
    public CacheNamespace WithSalt(string? salt) => new(ModelFingerprint, Format, salt, _tags, Variant);

    /// <summary>The same namespace with these tags added (replacing equal keys).</summary>
    public CacheNamespace WithTags(IEnumerable<KeyValuePair<string, string>> tags)
    {
        var merged = new SortedDictionary<string, string>(_tags, StringComparer.Ordinal);
        foreach (var (k, v) in tags)
        {
            merged[k] = v;
        }

        return new(ModelFingerprint, Format, Salt, merged, Variant);
    }

    /// <summary>The same namespace with another variant.</summary>
    public CacheNamespace WithVariant(string? variant) => new(ModelFingerprint, Format, Salt, _tags, variant);

    private ChunkHash ComputeSeed()
    {
        // Canonical, length-prefixed encoding: no two different field sets encode to the same bytes.
        using var ms = new MemoryStream();
        void Field(string name, string? value)
        {
            Span<byte> len = stackalloc byte[4];
            // An absent value encodes as "\0"; a present value that starts with NUL gets one more NUL in front, so that a
            // salt of "\0" differs from no salt and every other key stays as it was.
            var encoded = value is null ? "\0" : value.StartsWith('\0') ? "\0" + value : value;
            foreach (var s in new[] { name, encoded })
            {
                var bytes = Encoding.UTF8.GetBytes(s);
                BinaryPrimitives.WriteInt32LittleEndian(len, bytes.Length);
                ms.Write(len);
                ms.Write(bytes);
            }
        }

        Field("lmcachesharp.keys", KeyFormatVersion.ToString(System.Globalization.CultureInfo.InvariantCulture));
        Field("model", ModelFingerprint);
        Field("format", Format.ToString());
        Field("salt", Salt);
        Field("variant", Variant);
        foreach (var (k, v) in _tags)
        {
            Field("tag:" + k, v);
        }

        return new ChunkHash(SHA256.HashData(ms.ToArray()));
    }

    /// <inheritdoc />
    public bool Equals(CacheNamespace? other) => other is not null && Seed == other.Seed;

    /// <inheritdoc />
    public override bool Equals(object? obj) => Equals(obj as CacheNamespace);

    /// <inheritdoc />
    public override int GetHashCode() => Seed.GetHashCode();

    /// <inheritdoc />
    public override string ToString() =>
        $"model={ModelFingerprint} format={Format} salt={(Salt is null ? "-" : "set")} tags={_tags.Count} variant={Variant ?? "-"}";
}
