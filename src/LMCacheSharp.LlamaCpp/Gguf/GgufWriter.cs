using System.Buffers.Binary;
using System.Text;

namespace LMCacheSharp.LlamaCpp.Gguf;

/// <summary>GGUF metadata value types (the file format's own numbering).</summary>
internal enum GgufValueType : uint
{
    UInt8 = 0,
    Int8 = 1,
    UInt16 = 2,
    Int16 = 3,
    UInt32 = 4,
    Int32 = 5,
    Float32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    UInt64 = 10,
    Int64 = 11,
    Float64 = 12,
}

/// <summary>ggml tensor element types used by the generator (ggml's numbering).</summary>
public enum GgmlTensorType : uint
{
    /// <summary>32-bit float.</summary>
    F32 = 0,
    /// <summary>IEEE half.</summary>
    F16 = 1,
    /// <summary>Blocks of 32 weights: an f16 scale and 32 int8 (34 bytes).</summary>
    Q8_0 = 8,
}

/// <summary>
/// Writes a GGUF v3 file: header, metadata, tensor infos, then tensor data streamed one tensor at a time (so a
/// multi-GB model never sits in memory). Tensor data offsets are aligned to <see cref="Alignment"/> bytes.
/// </summary>
internal sealed class GgufWriter : IDisposable
{
    public const uint Magic = 0x46554747; // "GGUF"
    public const uint Version = 3;
    public const int Alignment = 32;

    private readonly MemoryStream _metadata = new();
    private readonly List<TensorInfo> _tensors = [];
    private int _metadataCount;

    public IReadOnlyList<TensorInfo> Tensors => _tensors;

    public void Dispose() => _metadata.Dispose();

    public void Add(string key, string value)
    {
        BeginKey(key, GgufValueType.String);
        WriteString(_metadata, value);
    }

    public void Add(string key, uint value)
    {
        BeginKey(key, GgufValueType.UInt32);
        WriteUInt32(_metadata, value);
    }

    public void Add(string key, float value)
    {
        BeginKey(key, GgufValueType.Float32);
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteSingleLittleEndian(b, value);
        _metadata.Write(b);
    }

    public void Add(string key, bool value)
    {
        BeginKey(key, GgufValueType.Bool);
        _metadata.WriteByte(value ? (byte)1 : (byte)0);
    }

    public void AddArray(string key, IReadOnlyList<string> values)
    {
        BeginArray(key, GgufValueType.String, values.Count);
        foreach (var v in values)
        {
            WriteString(_metadata, v);
        }
    }

    public void AddArray(string key, IReadOnlyList<float> values)
    {
        BeginArray(key, GgufValueType.Float32, values.Count);
        Span<byte> b = stackalloc byte[4];
        foreach (var v in values)
        {
            BinaryPrimitives.WriteSingleLittleEndian(b, v);
            _metadata.Write(b);
        }
    }

    public void AddArray(string key, IReadOnlyList<int> values)
    {
        BeginArray(key, GgufValueType.Int32, values.Count);
        foreach (var v in values)
        {
            WriteUInt32(_metadata, (uint)v);
        }
    }

    /// <summary>Declares a tensor; <paramref name="dims"/> are ggml's ne (innermost first).</summary>
    public void AddTensor(string name, GgmlTensorType type, params long[] dims)
    {
        var elements = dims.Aggregate(1L, (a, b) => a * b);
        var rowBytes = RowBytes(type, dims[0]);
        var bytes = rowBytes * (elements / dims[0]);
        _tensors.Add(new TensorInfo(name, type, dims, bytes));
    }

    /// <summary>Bytes of one row of <paramref name="elements"/> elements.</summary>
    public static long RowBytes(GgmlTensorType type, long elements) => type switch
    {
        GgmlTensorType.F32 => elements * 4,
        GgmlTensorType.F16 => elements * 2,
        GgmlTensorType.Q8_0 => elements % 32 == 0
            ? elements / 32 * 34
            : throw new ArgumentException($"q8_0 rows must be a multiple of 32 elements, got {elements}"),
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "unsupported tensor type"),
    };

    /// <summary>Total file size once written.</summary>
    public long FileLength => DataOffset() + DataLength();

    /// <summary>Writes everything; <paramref name="writeTensor"/> must write exactly the tensor's bytes.</summary>
    public void WriteTo(Stream output, Action<TensorInfo, Stream> writeTensor)
    {
        ArgumentNullException.ThrowIfNull(output);
        using var header = new MemoryStream();
        WriteUInt32(header, Magic);
        WriteUInt32(header, Version);
        WriteUInt64(header, (ulong)_tensors.Count);
        WriteUInt64(header, (ulong)_metadataCount);
        _metadata.Position = 0;
        _metadata.CopyTo(header);
        long offset = 0;
        foreach (var t in _tensors)
        {
            WriteString(header, t.Name);
            WriteUInt32(header, (uint)t.Dims.Length);
            foreach (var d in t.Dims)
            {
                WriteUInt64(header, (ulong)d);
            }

            WriteUInt32(header, (uint)t.Type);
            WriteUInt64(header, (ulong)offset);
            offset = Align(offset + t.Bytes);
        }

        Pad(header, Align(header.Length) - header.Length);
        header.Position = 0;
        header.CopyTo(output);
        foreach (var t in _tensors)
        {
            var before = output.Position;
            writeTensor(t, output);
            if (output.Position - before != t.Bytes)
            {
                throw new InvalidOperationException($"tensor {t.Name}: wrote {output.Position - before} bytes, expected {t.Bytes}");
            }

            Pad(output, Align(t.Bytes) - t.Bytes);
        }
    }

    private long DataOffset()
    {
        var header = 24 + _metadata.Length;
        foreach (var t in _tensors)
        {
            header += 8 + Encoding.UTF8.GetByteCount(t.Name) + 4 + (8 * t.Dims.Length) + 4 + 8;
        }

        return Align(header);
    }

    private long DataLength() => _tensors.Sum(t => Align(t.Bytes));

    private static long Align(long n) => (n + Alignment - 1) / Alignment * Alignment;

    private static void Pad(Stream s, long count)
    {
        for (var i = 0; i < count; i++)
        {
            s.WriteByte(0);
        }
    }

    private void BeginKey(string key, GgufValueType type)
    {
        WriteString(_metadata, key);
        WriteUInt32(_metadata, (uint)type);
        _metadataCount++;
    }

    private void BeginArray(string key, GgufValueType elementType, int count)
    {
        BeginKey(key, GgufValueType.Array);
        WriteUInt32(_metadata, (uint)elementType);
        WriteUInt64(_metadata, (ulong)count);
    }

    private static void WriteString(Stream s, string value)
    {
        var bytes = Encoding.UTF8.GetBytes(value);
        WriteUInt64(s, (ulong)bytes.Length);
        s.Write(bytes);
    }

    private static void WriteUInt32(Stream s, uint value)
    {
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, value);
        s.Write(b);
    }

    private static void WriteUInt64(Stream s, ulong value)
    {
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, value);
        s.Write(b);
    }

    /// <summary>A declared tensor.</summary>
    internal sealed record TensorInfo(string Name, GgmlTensorType Type, long[] Dims, long Bytes);
}
