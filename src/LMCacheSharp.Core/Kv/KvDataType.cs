namespace LMCacheSharp.Core.Kv;

/// <summary>Element type of the KV tensors. Values match ggml's type ids so connectors map them directly.</summary>
public enum KvDataType : byte
{
    /// <summary>32-bit float.</summary>
    F32 = 0,
    /// <summary>IEEE half.</summary>
    F16 = 1,
    /// <summary>ggml q4_0 blocks.</summary>
    Q4_0 = 2,
    /// <summary>ggml q8_0 blocks (f16 scale + 32 int8).</summary>
    Q8_0 = 8,
    /// <summary>bfloat16.</summary>
    BF16 = 30,
}

/// <summary>How a chunk payload is laid out.</summary>
public enum KvLayout : byte
{
    /// <summary>
    /// For each layer: K of every token of the chunk (token-major rows), then V of every token (token-major rows).
    /// Payloads of consecutive chunks concatenate along the token axis per (layer, K/V).
    /// </summary>
    LayerKV = 1,

    /// <summary>
    /// For each layer: K rows token-major, then V dimension-major within the chunk ([dim][token]), as llama.cpp keeps V
    /// without flash attention. Same size as <see cref="LayerKV"/>.
    /// </summary>
    LayerKTransposedV = 2,

    /// <summary>
    /// Engine-native: the payload is a llama.cpp sequence-state blob of the chunk's tokens (the format of
    /// <c>llama_state_seq_get_data</c>, cells in position order), zero-padded to the payload length, so it restores with
    /// no assembly. <see cref="KvFormat.KBytesPerToken"/> includes a per-token allowance for the blob's headers.
    /// </summary>
    LlamaCppSequenceState = 3,
}
