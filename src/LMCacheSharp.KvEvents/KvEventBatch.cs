namespace LMCacheSharp.KvEvents;

/// <summary>One decoded <c>KVEventBatch</c>: vLLM's <c>[ts, events, data_parallel_rank]</c>.</summary>
/// <param name="Timestamp">When the publisher made the batch, in seconds since the Unix epoch.</param>
/// <param name="Events">The events, in order.</param>
/// <param name="DataParallelRank">The publisher's data-parallel rank (0 for lmcache serve), or null when absent.</param>
public sealed record KvEventBatch(double Timestamp, IReadOnlyList<KvWireEvent> Events, int? DataParallelRank);

/// <summary>A decoded event (one of <see cref="BlockStoredEvent"/>, <see cref="BlockRemovedEvent"/>, <see cref="AllBlocksClearedEvent"/>).</summary>
public abstract record KvWireEvent;

/// <summary>
/// <c>["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium]</c>: a run of blocks, each
/// the child of the one before it, the first a child of <see cref="ParentBlockHash"/> (null: the start of a prompt, or
/// unknown when <see cref="TokenIds"/> is empty). <see cref="TokenIds"/> holds the blocks' tokens one after the other.
/// </summary>
/// <param name="BlockHashes">The blocks' hashes (ours: <see cref="KvEventWire.BlockHash"/>).</param>
/// <param name="ParentBlockHash">The first block's parent, or null.</param>
/// <param name="TokenIds">Every block's token ids, concatenated (a block of lmcache's token-exact tail may hold fewer than
/// <see cref="BlockSize"/>; it is then the only block of its event).</param>
/// <param name="BlockSize">Tokens per block (lmcache's chunk size).</param>
/// <param name="LoraId">vLLM's LoRA id; always null from lmcache.</param>
/// <param name="Medium">The tier ("CPU", "DISK", "REMOTE"; vLLM: "GPU", "CPU", ...), or null when absent.</param>
public sealed record BlockStoredEvent(long[] BlockHashes, long? ParentBlockHash, int[] TokenIds, int BlockSize, int? LoraId, string? Medium) : KvWireEvent;

/// <summary><c>["BlockRemoved", block_hashes, medium]</c>: blocks that left a tier.</summary>
/// <param name="BlockHashes">The blocks' hashes.</param>
/// <param name="Medium">The tier, or null when absent.</param>
public sealed record BlockRemovedEvent(long[] BlockHashes, string? Medium) : KvWireEvent;

/// <summary><c>["AllBlocksCleared"]</c>: everything the publisher held is gone.</summary>
public sealed record AllBlocksClearedEvent : KvWireEvent;

/// <summary>An event of a type this decoder does not know (a newer publisher's): kept by tag so a consumer can count it.</summary>
/// <param name="Tag">The event's tag.</param>
public sealed record UnknownKvEvent(string Tag) : KvWireEvent;

/// <summary>Why a payload is not a KV event batch.</summary>
public enum KvEventFormatError
{
    /// <summary>Not valid msgpack, or it ends early.</summary>
    Malformed,
    /// <summary>The batch is not an array (or map) of ts, events, rank.</summary>
    NotABatch,
    /// <summary>An event is not a tagged array (or map with a "type" key).</summary>
    NotAnEvent,
    /// <summary>A field has the wrong type (a hash that is not an integer, tokens that are not a list...).</summary>
    BadField,
    /// <summary>A list is longer than <see cref="KvEventBatchReader.MaxItems"/>.</summary>
    TooLarge,
}

/// <summary>A payload that is not a KV event batch; <see cref="Error"/> says why.</summary>
public sealed class KvEventFormatException : Exception
{
    /// <summary>Creates the exception.</summary>
    public KvEventFormatException(KvEventFormatError error, string message)
        : base(message)
    {
        Error = error;
    }

    /// <summary>Creates the exception.</summary>
    public KvEventFormatException()
        : this(KvEventFormatError.Malformed, "not a KV event batch")
    {
    }

    /// <summary>Creates the exception.</summary>
    public KvEventFormatException(string message)
        : this(KvEventFormatError.Malformed, message)
    {
    }

    /// <summary>Creates the exception.</summary>
    public KvEventFormatException(string message, Exception innerException)
        : base(message, innerException)
    {
        Error = KvEventFormatError.Malformed;
    }

    /// <summary>Why.</summary>
    public KvEventFormatError Error { get; }
}
