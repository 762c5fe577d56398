using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.LlamaCpp;

/// <summary>How <see cref="LlamaKvCache"/> lays out a chunk's payload.</summary>
public enum LlamaChunkLayout
{
    /// <summary>
    /// A ready llama.cpp state blob of the chunk (<see cref="KvLayout.LlamaCppSequenceState"/>): stored and restored with
    /// no copy besides llama.cpp's own. The fastest; only llama.cpp contexts of the same shape can read it.
    /// </summary>
    StateBlob,

    /// <summary>
    /// The engine-neutral layout of DESIGN section 3: per layer K rows then V (<see cref="KvLayout.LayerKV"/> with flash
    /// attention, <see cref="KvLayout.LayerKTransposedV"/> without). Costs one extra copy each way.
    /// </summary>
    Portable,
}

/// <summary>
/// The shape of a llama.cpp context's KV, as read from a state blob: layers, ggml types and bytes per token of K and V,
/// and whether V is kept transposed (dimension-major, llama.cpp without flash attention).
/// </summary>
/// <param name="Layers">Layers with KV.</param>
/// <param name="KType">ggml type id of K.</param>
/// <param name="KRowBytes">Bytes of K for one token in one layer.</param>
/// <param name="VType">ggml type id of V.</param>
/// <param name="VRowBytes">Bytes of V for one token in one layer.</param>
/// <param name="VTransposed">V kept dimension-major (flash attention off).</param>
/// <param name="VElementBytes">Bytes of one V element when transposed, else 0.</param>
public readonly record struct LlamaKvShape(int Layers, int KType, int KRowBytes, int VType, int VRowBytes, bool VTransposed, int VElementBytes)
{
    /// <summary>Whether flash attention is on (V not transposed).</summary>
    public bool FlashAttention => !VTransposed;

    /// <summary>KV bytes one token occupies in llama.cpp across all layers.</summary>
    public long BytesPerToken => (long)Layers * (KRowBytes + VRowBytes);

    /// <summary>The chunk format for <paramref name="layout"/>.</summary>
    public KvFormat ToFormat(LlamaChunkLayout layout)
    {
        var dataType = Enum.IsDefined((KvDataType)KType) ? (KvDataType)KType : KvDataType.F16;
        if (layout == LlamaChunkLayout.Portable)
        {
            return new KvFormat(Layers, KRowBytes, VRowBytes, dataType, VTransposed ? KvLayout.LayerKTransposedV : KvLayout.LayerKV);
        }

        // A one-chunk blob of n cells is 24 + 24*layers + 12*n bytes longer than the bare rows; an allowance of
        // 24 + ceil(36/layers) bytes per token per layer covers that for every n >= 1 (the rest is zero padding).
        var allowance = 24 + ((36 + Layers - 1) / Layers);
        return new KvFormat(Layers, KRowBytes + allowance, VRowBytes, dataType, KvLayout.LlamaCppSequenceState);
    }

    /// <summary>
    /// The engine part of the key namespace: flash-attention mode (changes V's layout and the numerics) and the K and V
    /// types, e.g. <c>llama.cpp;fa=on;k=f16;v=f16</c>.
    /// </summary>
    public string Describe() => $"llama.cpp;fa={(FlashAttention ? "on" : "off")};k={TypeName(KType)};v={TypeName(VType)}";

    /// <summary>ggml's name for a type id.</summary>
    public static string TypeName(int type) => type switch
    {
        0 => "f32",
        1 => "f16",
        2 => "q4_0",
        3 => "q4_1",
        6 => "q5_0",
        7 => "q5_1",
        8 => "q8_0",
        30 => "bf16",
        _ => "type" + type.ToString(System.Globalization.CultureInfo.InvariantCulture),
    };

    /// <inheritdoc />
    public override string ToString() =>
        $"{Layers} layers, K {TypeName(KType)} {KRowBytes} B/token/layer, V {TypeName(VType)} {VRowBytes} B/token/layer{(VTransposed ? " (transposed)" : "")}";
}
