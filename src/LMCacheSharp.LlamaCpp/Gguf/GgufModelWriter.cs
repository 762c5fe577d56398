using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;

namespace LMCacheSharp.LlamaCpp.Gguf;

/// <summary>
/// Writes Llama-architecture GGUF models with random weights and a working SentencePiece-style tokenizer, so tests and
/// benchmarks need no download. Weights are uniform in +-1/sqrt(fan_in), norms are 1.0 (finite logits, DESIGN section 6).
/// The vocabulary is &lt;unk&gt;, &lt;s&gt;, &lt;/s&gt;, the 256 byte tokens &lt;0x00&gt;..&lt;0xFF&gt; (byte fallback: any text
/// tokenizes) and plain pieces (single characters, "▁" + letter, letter pairs, ...). The same spec and seed always give
/// a byte-identical file.
/// </summary>
public static class GgufModelWriter
{
    /// <summary>Id of &lt;unk&gt;.</summary>
    public const int UnknownToken = 0;

    /// <summary>Id of &lt;s&gt;.</summary>
    public const int BosToken = 1;

    /// <summary>Id of &lt;/s&gt;.</summary>
    public const int EosToken = 2;

    private const int RowChunkBytes = 1 << 20;

    /// <summary>
    /// Writes the model to <paramref name="path"/> (through a temporary file renamed at the end, so a crash leaves no
    /// half-written model) and returns the file length. <paramref name="progress"/> gets (bytes written, total bytes).
    /// </summary>
    public static long Write(LlamaModelSpec spec, string path, Action<long, long>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(spec);
        ArgumentException.ThrowIfNullOrEmpty(path);
        spec.Validate();
        using var writer = Describe(spec);
        var total = writer.FileLength;
        var full = Path.GetFullPath(path);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        var temp = full + ".tmp-" + Environment.ProcessId.ToString(System.Globalization.CultureInfo.InvariantCulture);
        try
        {
            using (var file = new FileStream(temp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
            {
                file.SetLength(total);
                long lastReport = 0;
                writer.WriteTo(file, (tensor, stream) =>
                {
                    cancellationToken.ThrowIfCancellationRequested();
                    WriteTensor(spec, tensor, stream, written =>
                    {
                        if (progress is not null && stream.Position - lastReport >= 16L << 20)
                        {
                            lastReport = stream.Position;
                            progress(stream.Position, total);
                        }
                    });
                });
                if (file.Position != total)
                {
                    throw new InvalidOperationException($"wrote {file.Position} bytes, expected {total}");
                }
            }

            File.Move(temp, full, overwrite: true);
            progress?.Invoke(total, total);
            return total;
        }
        finally
        {
            if (File.Exists(temp))
            {
                File.Delete(temp);
            }
        }
    }

    /// <summary>The vocabulary <see cref="Write"/> puts in a model of <paramref name="vocabSize"/> tokens.</summary>
    public static IReadOnlyList<string> BuildVocabulary(int vocabSize)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(vocabSize, 259);
        var tokens = new List<string>(vocabSize) { "<unk>", "<s>", "</s>" };
        for (var b = 0; b < 256; b++)
        {
            tokens.Add($"<0x{b:X2}>");
        }

        var seen = new HashSet<string>(tokens, StringComparer.Ordinal);
        void Add(string piece)
        {
            if (tokens.Count < vocabSize && seen.Add(piece))
            {
                tokens.Add(piece);
            }
        }

        const string space = "\u2581";
        const string letters = "etaoinshrdlcumwfgypbvkjxqz";
        Add(space);
        foreach (var c in letters)
        {
            Add(c.ToString());
        }

        for (var c = 0x21; c < 0x7F; c++)
        {
            Add(((char)c).ToString());
        }

        foreach (var c in letters)
        {
            Add(space + c);
        }

        foreach (var c in letters.ToUpperInvariant())
        {
            Add(space + c);
        }

        // Longer pieces, each the concatenation of two existing pieces (so SentencePiece merges can reach it).
        var level = new List<string>();
        foreach (var a in letters)
        {
            foreach (var b in letters)
            {
                level.Add(string.Concat(a, b));
            }
        }

        foreach (var p in level)
        {
            Add(p);
        }

        foreach (var p in level)
        {
            Add(space + p);
        }

        for (var length = 3; tokens.Count < vocabSize && length < 16; length++)
        {
            var next = new List<string>();
            foreach (var p in level)
            {
                foreach (var c in letters)
                {
                    var piece = p + c;
                    next.Add(piece);
                    Add(piece);
                    if (tokens.Count >= vocabSize)
                    {
                        break;
                    }
                }

                if (tokens.Count >= vocabSize)
                {
                    break;
                }
            }

            level = next;
        }

        for (var i = 0; tokens.Count < vocabSize; i++)
        {
            Add($"<unused{i}>"); // only reached for vocabularies larger than the pieces above
        }

        return tokens;
    }

    private static GgufWriter Describe(LlamaModelSpec spec)
    {
        var w = new GgufWriter();
        var vocab = BuildVocabulary(spec.VocabSize);
        w.Add("general.architecture", "llama");
        w.Add("general.name", $"lmcachesharp-random-{spec.Layers}x{spec.EmbeddingLength}-{spec.WeightType.ToString().ToLowerInvariant()}-seed{spec.Seed}");
        w.Add("general.alignment", (uint)GgufWriter.Alignment);
        w.Add("general.file_type", spec.WeightType switch
        {
            GgmlTensorType.F32 => 0u,
            GgmlTensorType.F16 => 1u,
            _ => 7u, // LLAMA_FTYPE_MOSTLY_Q8_0
        });
        w.Add("llama.context_length", (uint)spec.ContextLength);
        w.Add("llama.embedding_length", (uint)spec.EmbeddingLength);
        w.Add("llama.block_count", (uint)spec.Layers);
        w.Add("llama.feed_forward_length", (uint)spec.FeedForwardLength);
        w.Add("llama.attention.head_count", (uint)spec.HeadCount);
        w.Add("llama.attention.head_count_kv", (uint)spec.KvHeadCount);
        w.Add("llama.attention.layer_norm_rms_epsilon", 1e-5f);
        w.Add("llama.rope.dimension_count", (uint)spec.HeadSize);
        w.Add("llama.rope.freq_base", 10000f);
        w.Add("llama.vocab_size", (uint)spec.VocabSize);
        w.Add("tokenizer.ggml.model", "llama");
        w.AddArray("tokenizer.ggml.tokens", vocab);
        var scores = new float[vocab.Count];
        var types = new int[vocab.Count];
        for (var i = 0; i < vocab.Count; i++)
        {
            // Earlier (shorter, more common) pieces merge first.
            scores[i] = i < 259 ? 0f : -(i - 259);
            types[i] = i switch
            {
                UnknownToken => 2, // UNKNOWN
                BosToken or EosToken => 3, // CONTROL
                < 259 => 6, // BYTE
                _ => 1, // NORMAL
            };
        }

        w.AddArray("tokenizer.ggml.scores", scores);
        w.AddArray("tokenizer.ggml.token_type", types);
        w.Add("tokenizer.ggml.unknown_token_id", (uint)UnknownToken);
        w.Add("tokenizer.ggml.bos_token_id", (uint)BosToken);
        w.Add("tokenizer.ggml.eos_token_id", (uint)EosToken);
        w.Add("tokenizer.ggml.add_bos_token", true);
        w.Add("tokenizer.ggml.add_eos_token", false);

        long e = spec.EmbeddingLength, kv = (long)spec.KvHeadCount * spec.HeadSize, f = spec.FeedForwardLength;
        var t = spec.WeightType;
        w.AddTensor("token_embd.weight", t, e, spec.VocabSize);
        w.AddTensor("output_norm.weight", GgmlTensorType.F32, e);
        w.AddTensor("output.weight", t, e, spec.VocabSize);
        for (var l = 0; l < spec.Layers; l++)
        {
            var p = $"blk.{l}.";
            w.AddTensor(p + "attn_norm.weight", GgmlTensorType.F32, e);
            w.AddTensor(p + "attn_q.weight", t, e, e);
            w.AddTensor(p + "attn_k.weight", t, e, kv);
            w.AddTensor(p + "attn_v.weight", t, e, kv);
            w.AddTensor(p + "attn_output.weight", t, e, e);
            w.AddTensor(p + "ffn_norm.weight", GgmlTensorType.F32, e);
            w.AddTensor(p + "ffn_gate.weight", t, e, f);
            w.AddTensor(p + "ffn_up.weight", t, e, f);
            w.AddTensor(p + "ffn_down.weight", t, f, e);
        }

        return w;
    }

    private static void WriteTensor(LlamaModelSpec spec, GgufWriter.TensorInfo tensor, Stream output, Action<long> progress)
    {
        var rowLength = (int)tensor.Dims[0];
        var rows = tensor.Dims.Skip(1).Aggregate(1L, (a, b) => a * b);
        var rowBytes = (int)GgufWriter.RowBytes(tensor.Type, rowLength);
        var isNorm = tensor.Dims.Length == 1;
        var rng = new SplitMix64(spec.Seed ^ Fnv1a(tensor.Name));
        var bound = (float)(1.0 / Math.Sqrt(rowLength));
        var rowsPerWrite = Math.Max(1, RowChunkBytes / rowBytes);
        var values = ArrayPool<float>.Shared.Rent(rowLength);
        var bytes = ArrayPool<byte>.Shared.Rent(rowBytes * rowsPerWrite);
        try
        {
            for (long r = 0; r < rows;)
            {
                var n = (int)Math.Min(rowsPerWrite, rows - r);
                for (var i = 0; i < n; i++)
                {
                    var row = values.AsSpan(0, rowLength);
                    if (isNorm)
                    {
                        row.Fill(1f);
                    }
                    else
                    {
                        for (var j = 0; j < row.Length; j++)
                        {
                            row[j] = rng.NextSymmetric(bound);
                        }
                    }

                    Encode(tensor.Type, row, bytes.AsSpan(i * rowBytes, rowBytes));
                }

                output.Write(bytes, 0, n * rowBytes);
                r += n;
                progress(output.Position);
            }
        }
        finally
        {
            ArrayPool<float>.Shared.Return(values);
            ArrayPool<byte>.Shared.Return(bytes);
        }
    }

    private static void Encode(GgmlTensorType type, ReadOnlySpan<float> row, Span<byte> destination)
    {
        switch (type)
        {
            case GgmlTensorType.F32:
                MemoryMarshal.AsBytes(row).CopyTo(destination);
                break;
            case GgmlTensorType.F16:
                for (var j = 0; j < row.Length; j++)
                {
                    BinaryPrimitives.WriteHalfLittleEndian(destination[(j * 2)..], (Half)row[j]);
                }

                break;
            case GgmlTensorType.Q8_0:
                for (var block = 0; block < row.Length / 32; block++)
                {
                    var x = row.Slice(block * 32, 32);
                    var amax = 0f;
                    foreach (var v in x)
                    {
                        amax = Math.Max(amax, Math.Abs(v));
                    }

                    var d = amax / 127f;
                    var id = d != 0 ? 1f / d : 0f;
                    var o = destination.Slice(block * 34, 34);
                    BinaryPrimitives.WriteHalfLittleEndian(o, (Half)d);
                    for (var j = 0; j < 32; j++)
                    {
                        o[2 + j] = (byte)(sbyte)Math.Round(x[j] * id, MidpointRounding.AwayFromZero);
                    }
                }

                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(type), type, "unsupported tensor type");
        }
    }

    private static ulong Fnv1a(string text)
    {
        var hash = 14695981039346656037UL;
        foreach (var b in Encoding.UTF8.GetBytes(text))
        {
            hash = (hash ^ b) * 1099511628211UL;
        }

        return hash;
    }

    /// <summary>A small, fast, stable generator (the weights must not depend on the .NET version's Random).</summary>
    private struct SplitMix64(ulong seed)
    {
        private ulong _state = seed;

        public float NextSymmetric(float bound)
        {
            _state += 0x9E3779B97F4A7C15UL;
            var z = _state;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
            z ^= z >> 31;
            var unit = (z >> 40) * (1.0f / (1 << 24)); // [0, 1)
            return ((unit * 2f) - 1f) * bound;
        }
    }
}
