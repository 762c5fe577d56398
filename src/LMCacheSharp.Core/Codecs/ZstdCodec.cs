using LMCacheSharp.Core.Kv;
using ZstdSharp;

namespace LMCacheSharp.Core.Codecs;

/// <summary>
/// Lossless: Zstandard (ZstdSharp.Port) of the byte-shuffled payload (see <see cref="Lz4Codec"/> for the shuffle), at
/// level <see cref="Level"/>. Zstd's entropy coding gains on the exponent bytes that LZ4 cannot; it is slower. Compressor
/// and decompressor contexts are kept per thread. Decodes bit-exactly.
/// </summary>
public sealed class ZstdCodec : ShuffledCompressionCodec
{
    /// <summary>Compression level used by the registered instance (1: fastest standard level; the level does not affect decoding).</summary>
    public const int DefaultLevel = 1;

    [ThreadStatic]
    private static Decompressor? _decompressor;

    [ThreadStatic]
    private static Compressor? _compressor;

    [ThreadStatic]
    private static int _compressorLevel;

    /// <summary>Creates a codec compressing at <paramref name="level"/> (1..19).</summary>
    public ZstdCodec(int level = DefaultLevel)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(level, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(level, 19);
        Level = level;
    }

    /// <summary>The shared instance (level <see cref="DefaultLevel"/>).</summary>
    public static ZstdCodec Instance { get; } = new();

    /// <summary>Compression level.</summary>
    public int Level { get; }

    /// <inheritdoc />
    public override KvCodecId Id => KvCodecId.Zstd;

    /// <inheritdoc />
    public override string Name => "zstd";

    /// <inheritdoc />
    public override int MaxEncodedLength(int rawLength, KvFormat format) => checked((int)Compressor.GetCompressBound(rawLength));

    /// <inheritdoc />
    protected override int Compress(ReadOnlySpan<byte> source, Span<byte> destination)
    {
        if (_compressor is null || _compressorLevel != Level)
        {
            _compressor?.Dispose();
            _compressor = new Compressor(Level);
            _compressorLevel = Level;
        }

        return _compressor.Wrap(source, destination);
    }

    /// <inheritdoc />
    protected override bool Decompress(ReadOnlySpan<byte> source, Span<byte> destination)
    {
        try
        {
            _decompressor ??= new Decompressor();
            if (!_decompressor.TryUnwrap(source, destination, out var written))
            {
                return false;
            }

            return written == destination.Length;
        }
        catch (ZstdException)
        {
            return false;
        }
    }
}
