using System.Buffers;
using System.Diagnostics;
using LMCacheSharp.Core.Codecs;
using LMCacheSharp.Core.Configuration;
using LMCacheSharp.Core.Events;
using LMCacheSharp.Core.Keys;
using LMCacheSharp.Core.Kv;
using LMCacheSharp.Core.Metrics;
using LMCacheSharp.Core.Storage;

namespace LMCacheSharp.Core.Engine;

/// <summary>
/// What an inference engine calls: <see cref="LookupAsync"/> (how many leading tokens are cached),
/// <see cref="RetrieveAsync"/> (write the leading hit run into the engine) and <see cref="StoreAsync"/> (save the KV of
/// new chunks). Keys are prefix-chained hashes under a <see cref="CacheNamespace"/>; each call may pass its own namespace
/// (another salt or tags) or use the engine's default. Thread-safe; a memory-tier hit completes synchronously and
/// allocates nothing.
/// </summary>
public sealed partial class CacheEngine : IAsyncDisposable
{
    private readonly bool _ownsStorage;
    private readonly bool _ownsPool;
    private readonly bool _ownsMetrics;
    private readonly bool _lowerChildIndex; // a lower tier keeps a child index: partial chunks go there, tails are looked up there

    /// <summary>Creates an engine over an existing storage manager.</summary>
    /// <param name="options">Chunk size and partial-chunk policy are read from here.</param>
    /// <param name="defaultNamespace">Namespace used when a call passes none.</param>
    /// <param name="storage">The tiers.</param>
    /// <param name="pool">Where chunk buffers come from.</param>
    /// <param name="metrics">Where calls are counted.</param>
    /// <param name="ownsDependencies">Dispose storage, pool and metrics with the engine.</param>
    public CacheEngine(LMCacheOptions options, CacheNamespace defaultNamespace, StorageManager storage, KvBufferPool pool,
        CacheMetrics metrics, bool ownsDependencies = false)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(defaultNamespace);
        ArgumentNullException.ThrowIfNull(storage);
        ArgumentNullException.ThrowIfNull(pool);
        ArgumentNullException.ThrowIfNull(metrics);
        options.Validate();
        ChunkSize = options.ChunkSize;
        SaveUnfullChunk = options.SaveUnfullChunk;
        TokenExact = options.TokenExactReuse;
        SaveDecodeCache = options.SaveDecodeCache;
        Namespace = defaultNamespace;
        Storage = storage;
        Pool = pool;
        Metrics = metrics;
        _ownsStorage = _ownsPool = _ownsMetrics = ownsDependencies;
        _lowerChildIndex = storage.HasChildIndex;
    }

    /// <summary>
    /// Creates an engine with the tiers <paramref name="options"/> asks for that the core provides (memory), followed by
    /// <paramref name="lowerTiers"/> (disk, remote: built by their own packages). With <paramref name="events"/>, every
    /// change to what the tiers hold is reported there (see <see cref="StorageManager"/>), each store with its parent and
    /// token ids. With <paramref name="diskScanProgress"/>, the disk tier's start-up scan reports how far it has come there
    /// (<see cref="DiskTierOptions.ScanProgress"/>).
    /// </summary>
    public static CacheEngine Create(LMCacheOptions options, CacheNamespace defaultNamespace, CacheMetrics? metrics = null,
        Func<KvBufferPool, CacheMetrics, IEnumerable<IStorageTier>>? lowerTiers = null, IKvEventSink? events = null,
        IProgress<DiskTierScanProgress>? diskScanProgress = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();

        // KV that may have been through a lossy codec (disk or remote) is keyed apart from exact KV.
        defaultNamespace = KvCodecs.WithCodecVariant(defaultNamespace, options);
        var ownsMetrics = metrics is null;
        metrics ??= new CacheMetrics();
        var pool = new KvBufferPool(options.PoolRetainedBytes);
        var tiers = new List<IStorageTier>();
        if (options.LocalCpu)
        {
            tiers.Add(new MemoryTier(options.MaxLocalCpuSizeBytes, metrics, options.VerifyMemoryChecksums, options.EvictionPolicy, options.MaxPinnedBytes));
        }

        if (!string.IsNullOrEmpty(options.LocalDisk))
        {
            var diskOptions = DiskTierOptions.FromLMCacheOptions(options);
            diskOptions.ScanProgress = diskScanProgress;
            var disk = new DiskTier(diskOptions, pool, metrics);
            var scan = disk.StartupScan;
            metrics.Faults?.Event($"disk tier {disk.Root}: recovered {scan.Recovered} chunk files ({disk.GetStats().UsedBytes} bytes), removed {scan.Discarded} corrupt " +
                $"and {scan.TempFilesRemoved} unfinished files, evicted {scan.EvictedOverCapacity} over capacity, in {scan.Elapsed.TotalMilliseconds:F0} ms");
            tiers.Add(disk);
        }

        if (lowerTiers is not null)
        {
            tiers.AddRange(lowerTiers(pool, metrics));
        }

        if (tiers.Count == 0)
        {
            throw new ArgumentException("No storage tier is enabled: set local_cpu: true or configure a disk or remote tier.");
        }

        var storage = new StorageManager(tiers, metrics, options.WriteQueueChunks, events: events);
        var engine = new CacheEngine(options, defaultNamespace, storage, pool, metrics, ownsDependencies: true);
        if (engine.TokenExact)
        {
            foreach (var disk in tiers.OfType<DiskTier>())
            {
                // A restarted process finds its partial chunks again: the tail index is rebuilt from the files' lineages.
                foreach (var (key, lineage) in disk.GetLineages())
                {
                    // A file's lineage is only believed when it hashes to the file's key: a chunk's key is the hash of its
                    // parent and its tokens, so a lineage that claims other tokens can never make a child match them.
                    if (IsChildOf(lineage.Parent, lineage.Tokens, key))
                    {
                        engine.Tails.Add(lineage.Parent, key, lineage.Tokens);
                    }
                    else
                    {
                        metrics.CorruptChunk(disk.Name);
                    }
                }
            }
        }
        if (!ownsMetrics)
        {
            engine.DoNotDisposeMetrics();
        }

        return engine;
    }

    /// <summary>Tokens per chunk.</summary>
    public int ChunkSize { get; }

    /// <summary>Whether a trailing partial chunk is stored and looked up.</summary>
    public bool SaveUnfullChunk { get; }

    /// <summary>Whether reuse goes to the token (<see cref="LMCacheOptions.TokenExactReuse"/>): see <see cref="Tails"/>.</summary>
    public bool TokenExact { get; }

    /// <summary>Whether engines store the KV of generated tokens when a request ends (<see cref="LMCacheOptions.SaveDecodeCache"/>).</summary>
    public bool SaveDecodeCache { get; }

    /// <summary>The parent -> children index of the chunks in the memory tier, for token-exact reuse.</summary>
    public TailIndex Tails { get; } = new();

    /// <summary>The default namespace.</summary>
    public CacheNamespace Namespace { get; }

    /// <summary>The tiers.</summary>
    public StorageManager Storage { get; }

    /// <summary>The buffer pool.</summary>
    public KvBufferPool Pool { get; }

    /// <summary>The metrics.</summary>
    public CacheMetrics Metrics { get; }

    private bool MetricsOwned { get; set; } = true;

    /// <summary>Number of leading tokens of <paramref name="tokens"/> whose KV is cached (a multiple of the chunk size, or all tokens when the partial last chunk is cached).</summary>
    public async ValueTask<int> LookupAsync(ReadOnlyMemory<int> tokens, CacheNamespace? ns = null, CancellationToken cancellationToken = default)
    {
        var start = Stopwatch.GetTimestamp();
        ns ??= Namespace;
        var keys = RentKeys(tokens.Span, ns, out var count);
        try
        {
            var hits = await Storage.CountPrefixAsync(keys.AsMemory(0, count), cancellationToken).ConfigureAwait(false);
            var hitTokens = Math.Min(hits * ChunkSize, tokens.Length);
            Metrics.Lookup(tokens.Length, hitTokens, Stopwatch.GetElapsedTime(start).TotalSeconds);
            return hitTokens;
        }
        finally
        {
            ArrayPool<ChunkHash>.Shared.Return(keys);
        }
    }

    /// <summary>
    /// Looks up <paramref name="tokens"/> and brings the leading hit run into the memory tier (fetching from disk or remote
    /// where needed), so that a later <see cref="RetrieveAsync"/> on the inference thread only touches memory. Returns the
    /// leading tokens now in memory. Call it off the inference thread, before the request is scheduled. Counts as a lookup
    /// in the metrics.
    /// </summary>
    public async ValueTask<int> PrefetchAsync(ReadOnlyMemory<int> tokens, CacheNamespace? ns = null, CancellationToken cancellationToken = default)
    {
        var start = Stopwatch.GetTimestamp();
        ns ??= Namespace;
        Storage.Events?.AddRoot(ns.Seed);
        var keys = RentKeys(tokens.Span, ns, out var count);
        var ready = 0;
        try
        {
            for (var i = 0; i < count; i++)
            {
                if (Storage.ContainsInMemory(keys[i]))
                {
                    ready++;
                    continue;
                }

                var chunk = await Storage.GetAsync(keys[i], cancellationToken).ConfigureAwait(false);
                if (chunk is null)
                {
                    break;
                }

                chunk.Release();
                ready++;
            }
        }
        finally
        {
            ArrayPool<ChunkHash>.Shared.Return(keys);
        }

        var hitTokens = Math.Min(ready * ChunkSize, tokens.Length);
        Metrics.Lookup(tokens.Length, hitTokens, Stopwatch.GetElapsedTime(start).TotalSeconds);
        return hitTokens;
    }

    /// <summary>
    /// Finds the leading cached chunks of <paramref name="tokens"/> in any tier, brings them into memory and pins them for a
    /// later <see cref="Restore"/> (which then touches no tier: call this off the inference thread, before the request is
    /// scheduled). Counts as a lookup in the metrics. The caller disposes the result.
    /// </summary>
    public async ValueTask<CachedPrefix> PinAsync(ReadOnlyMemory<int> tokens, CacheNamespace? ns = null, CancellationToken cancellationToken = default)
    {
        var start = Stopwatch.GetTimestamp();
        ns ??= Namespace;
        Storage.Events?.AddRoot(ns.Seed);
        var keys = ComputeKeys(tokens.Span, ns);
        var count = keys.Length;
        var chunks = count == 0 ? [] : new KvChunk[count];
        var pinned = 0;
        // One lookup for the whole prompt (one round trip per tier stretch), then every present chunk fetched at once:
        // lower tiers pipeline the reads (the lm:// pool and Redis multiplex them), so a prompt costs two round trips,
        // not one per chunk. Memory hits complete synchronously.
        var present = count == 0 ? 0 : await Storage.CountPrefixAsync(keys, cancellationToken).ConfigureAwait(false);
        // The tail after the run, from a shared store's child index when the local one has nothing as good: asked together
        // with the chunk reads, so it costs no extra round trip (the chosen child is one more read).
        var children = StartRemoteTailLookup(tokens, ns, keys, present, cancellationToken);
        var fetches = new Task<KvChunk?>[present];
        var fromLowerTier = present == 0 ? [] : new bool[present];
        for (var i = 0; i < present; i++)
        {
            fromLowerTier[i] = !Storage.ContainsInMemory(keys[i]); // asked first: a lower tier may answer synchronously too
            var get = Storage.GetAsync(keys[i], cancellationToken);
            fetches[i] = get.IsCompletedSuccessfully ? Task.FromResult(get.Result) : get.AsTask();
        }

        try
        {
            await Task.WhenAll(fetches).ConfigureAwait(false);
        }
        catch
        {
            foreach (var fetch in fetches)
            {
                if (fetch.IsCompletedSuccessfully)
                {
                    fetch.Result?.Release();
                }
            }

            _ = children?.ContinueWith(static t => t.Exception, TaskContinuationOptions.OnlyOnFaulted);
            throw;
        }

        for (var i = 0; i < present; i++)
        {
            var chunk = fetches[i].Result;
            if (chunk is not null && pinned == i)
            {
                chunks[pinned++] = chunk; // the leading run
            }
            else
            {
                chunk?.Release(); // after a gap (evicted or failed since the lookup): of no use
            }
        }

        var hitTokens = Math.Min(pinned * ChunkSize, tokens.Length);
        var prefix = new CachedPrefix(ns, tokens, keys, chunks, pinned, hitTokens);
        for (var i = 0; i < pinned; i++)
        {
            if (fromLowerTier[i])
            {
                prefix.LowerTierTokens += Math.Min(ChunkSize, tokens.Length - (i * ChunkSize));
            }
        }

        if (TokenExact)
        {
            for (var i = 0; i < pinned; i++)
            {
                // Chunks found in a lower tier become candidates of the tail lookup too, now that memory holds them (those
                // found in memory were registered when they were stored: the hot path does not walk the index for them).
                if (!fromLowerTier[i])
                {
                    continue;
                }

                var at = i * ChunkSize;
                Tails.Add(i == 0 ? ns.Seed : keys[i - 1], keys[i], tokens.Span.Slice(at, Math.Min(ChunkSize, tokens.Length - at)));
            }

            if (children is not null)
            {
                var found = await children.ConfigureAwait(false);
                if (pinned == present)
                {
                    var parent = present == 0 ? ns.Seed : keys[present - 1];
                    foreach (var child in found)
                    {
                        // The remote's word is checked: a child whose tokens do not hash to its key is never a candidate.
                        if (child.Tokens.Length is > 0 && child.Tokens.Length <= ChunkSize && IsChildOf(parent, child.Tokens, child.Key))
                        {
                            Tails.Add(parent, child.Key, child.Tokens);
                        }
                        else
                        {
                            Metrics.CorruptChunk("remote");
                        }
                    }
                }
            }

            await FindTailAsync(prefix, cancellationToken).ConfigureAwait(false);
        }

        Metrics.Lookup(tokens.Length, prefix.Tokens, Stopwatch.GetElapsedTime(start).TotalSeconds);
        return prefix;
    }

    // Asks the lower tiers' child indexes for the tail after the first `present` chunks, unless there is no tail to find or
    // the local index already holds a child that matches all of it. Null when not asked.
    private Task<IReadOnlyList<StoredChild>>? StartRemoteTailLookup(ReadOnlyMemory<int> tokens, CacheNamespace ns, ChunkHash[] keys, int present,
        CancellationToken cancellationToken)
    {
        var at = present * ChunkSize;
        if (!TokenExact || !_lowerChildIndex || at >= tokens.Length)
        {
            return null;
        }

        var parent = present == 0 ? ns.Seed : keys[present - 1];
        var next = tokens[at..Math.Min(tokens.Length, at + ChunkSize)];
        if (Tails.Find(parent, next.Span, max: 1) is [{ } best] && best.Common == next.Length && Storage.ContainsInMemory(best.Key))
        {
            return null;
        }

        return Storage.FindChildrenAsync(parent, next, RemoteChildrenPerLookup, cancellationToken).AsTask();
    }

    /// <summary>Children a tail lookup asks a lower tier's child index for.</summary>
    private const int RemoteChildrenPerLookup = 4;

    /// <summary>Whether <paramref name="key"/> is the key of a chunk of <paramref name="tokens"/> after <paramref name="parent"/>.</summary>
    private static bool IsChildOf(ChunkHash parent, int[] tokens, ChunkHash key)
    {
        Span<ChunkHash> derived = stackalloc ChunkHash[1];
        return PrefixHasher.ComputeKeys(parent, tokens, tokens.Length, true, derived) == 1 && derived[0] == key;
    }

    /// <summary>
    /// Pins the best stored child after the whole-chunk run of <paramref name="prefix"/>: memory only, tokens compared.
    /// A child that is gone from memory is forgotten.
    /// </summary>
    private void FindTail(CachedPrefix prefix) => FindTailAsync(prefix, CancellationToken.None, memoryOnly: true).AsTask().GetAwaiter().GetResult();

    /// <summary>
    /// As <see cref="FindTail"/>; unless <paramref name="memoryOnly"/>, a child that memory lacks is fetched from the lower
    /// tiers (the disk tier after a restart) and promoted. Forgotten only when no tier holds it.
    /// </summary>
    private async ValueTask FindTailAsync(CachedPrefix prefix, CancellationToken cancellationToken, bool memoryOnly = false)
    {
        var run = prefix.ChunkCount;
        var at = run * ChunkSize;
        if (at >= prefix.PromptTokens || Storage.Memory is null)
        {
            return;
        }

        var parent = run == 0 ? prefix.Namespace.Seed : prefix.Keys[run - 1];
        foreach (var match in Tails.Find(parent, prefix.LookedUp.Span[at..]))
        {
            if (match.Common <= prefix.TailTokens)
            {
                return; // the tail pinned already is as good
            }

            var chunk = Storage.Memory.TryGet(match.Key);
            if (chunk is null && !memoryOnly)
            {
                chunk = await Storage.GetAsync(match.Key, cancellationToken).ConfigureAwait(false);
            }

            if (chunk is null)
            {
                if (!memoryOnly)
                {
                    Tails.Remove(parent, match.Key);
                }

                continue;
            }

            if (chunk.TokenCount != match.ChunkTokens || chunk.Format != prefix.Namespace.Format ||
                chunk.Length != prefix.Namespace.Format.PayloadLength(match.ChunkTokens))
            {
                chunk.Release();
                Tails.Remove(parent, match.Key);
                Metrics.CorruptChunk("memory");
                continue;
            }

            prefix.SetTail(chunk, Math.Min(match.Common, prefix.PromptTokens - at));
            return;
        }
    }

    /// <summary>
    /// Pins the chunks after <paramref name="prefix"/>'s run that the memory tier holds now (stored since the lookup, e.g.
    /// by the request just before). Memory only: no I/O, never a wait. Returns the tokens now pinned.
    /// </summary>
    public int ExtendInMemory(CachedPrefix prefix)
    {
        ArgumentNullException.ThrowIfNull(prefix);
        var run = prefix.ChunkCount;
        while (prefix.ChunkCount < prefix.Keys.Length && Storage.Memory?.TryGet(prefix.Keys[prefix.ChunkCount]) is { } more)
        {
            prefix.Append(more, Math.Min((prefix.ChunkCount + 1) * ChunkSize, prefix.PromptTokens));
        }

        if (TokenExact && !prefix.TailDeclined && (prefix.ChunkCount > run || prefix.Tail is null || prefix.TailTokens < prefix.PromptTokens - prefix.RunTokens))
        {
            FindTail(prefix); // a longer child may have been stored since the lookup (the previous turn's completion)
        }

        return prefix.Tokens;
    }

    /// <summary>
    /// Writes the pinned chunks of <paramref name="prefix"/> into <paramref name="sink"/>, in order, and returns the tokens
    /// restored. With a token-exact tail the sink receives the whole tail chunk but the count includes only its matching
    /// tokens: the caller removes the positions from the returned count on. First the run is extended with the chunks the memory tier holds now (stored while the request waited);
    /// nothing else is looked at: no lower tier, never a wait. A chunk that fails its checks ends the run (it is dropped
    /// from memory now and from the lower tiers in the background), as does one the sink refuses.
    /// </summary>
    public int Restore(CachedPrefix prefix, IKvSink sink)
    {
        ArgumentNullException.ThrowIfNull(prefix);
        ArgumentNullException.ThrowIfNull(sink);
        var start = Stopwatch.GetTimestamp();
        ExtendInMemory(prefix);
        var restored = 0;
        var chunks = prefix.Chunks;
        for (var i = 0; i < chunks.Length; i++)
        {
            var chunk = chunks[i];
            var chunkStart = i * ChunkSize;
            var chunkTokens = Math.Min(ChunkSize, prefix.PromptTokens - chunkStart);
            if (chunk.TokenCount != chunkTokens || chunk.Format != prefix.Namespace.Format || chunk.Length != prefix.Namespace.Format.PayloadLength(chunkTokens))
            {
                Metrics.CorruptChunk("engine");
                Storage.RemoveInBackground(chunk.Key);
                break;
            }

            if (!sink.TryWriteKv(chunkStart, chunkTokens, chunk.Span))
            {
                break;
            }

            restored += chunkTokens;
        }

        if (prefix.Tail is { } tail && restored == prefix.RunTokens && restored < prefix.PromptTokens)
        {
            // The whole child goes in; only its first TailTokens positions count (the caller removes the cells past them).
            if (sink.TryWriteKv(restored, tail.TokenCount, tail.Span))
            {
                restored += prefix.TailTokens;
            }
        }

        if (restored > 0 && !sink.CompleteWrite())
        {
            restored = 0;
        }

        Metrics.Retrieve(prefix.PromptTokens, restored, Stopwatch.GetElapsedTime(start).TotalSeconds);
        return restored;
    }

    /// <summary>
    /// Writes the KV of the leading cached chunks of <paramref name="tokens"/> into <paramref name="sink"/>, in order, and
    /// returns how many tokens were restored. Stops at the first chunk that is missing, fails its checks or that the sink
    /// refuses; a problem in a tier is a miss, never an exception.
    /// </summary>
    public async ValueTask<int> RetrieveAsync(ReadOnlyMemory<int> tokens, IKvSink sink, CacheNamespace? ns = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(sink);
        var start = Stopwatch.GetTimestamp();
        ns ??= Namespace;
        Storage.Events?.AddRoot(ns.Seed);
        var keys = RentKeys(tokens.Span, ns, out var count);
        var restored = 0;
        try
        {
            for (var i = 0; i < count; i++)
            {
                var chunkStart = i * ChunkSize;
                var chunkTokens = Math.Min(ChunkSize, tokens.Length - chunkStart);
                var chunk = await Storage.GetAsync(keys[i], cancellationToken).ConfigureAwait(false);
                if (chunk is null)
                {
                    break;
                }

                try
                {
                    if (chunk.TokenCount != chunkTokens || chunk.Format != ns.Format || chunk.Length != ns.Format.PayloadLength(chunkTokens))
                    {
                        Metrics.CorruptChunk("engine");
                        Storage.RemoveInBackground(keys[i]);
                        break;
                    }

                    if (!sink.TryWriteKv(chunkStart, chunkTokens, chunk.Span))
                    {
                        break;
                    }

                    restored += chunkTokens;
                }
                finally
                {
                    chunk.Release();
                }
            }

            if (restored > 0 && !sink.CompleteWrite())
            {
                restored = 0; // a failed retrieval (an exception) writes nothing more
            }
        }
        finally
        {
            ArrayPool<ChunkHash>.Shared.Return(keys);
            Metrics.Retrieve(tokens.Length, restored, Stopwatch.GetElapsedTime(start).TotalSeconds);
        }

        return restored;
    }

    /// <summary>
    /// Stores the KV of every complete chunk of <paramref name="tokens"/> not yet in memory (and of the partial last chunk
    /// when <see cref="SaveUnfullChunk"/> is on), reading it from <paramref name="source"/>. Chunks that lie wholly within
    /// the first <paramref name="skipTokens"/> tokens are known to be cached and are not read. Returns the tokens newly stored.
    /// Lower tiers are written in the background.
    /// </summary>
    public ValueTask<int> StoreAsync(ReadOnlyMemory<int> tokens, IKvSource source, int skipTokens = 0, CacheNamespace? ns = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentOutOfRangeException.ThrowIfNegative(skipTokens);
        cancellationToken.ThrowIfCancellationRequested();
        var start = Stopwatch.GetTimestamp();
        ns ??= Namespace;
        Storage.Events?.AddRoot(ns.Seed); // a first chunk's parent is the seed: published as null
        // Token-exact reuse also keeps the partial last chunk (in the local tiers, and in a remote with a child index).
        var keys = RentKeys(tokens.Span, ns, out var count, includePartial: SaveUnfullChunk || TokenExact);
        var stored = 0;
        List<ChunkHash>? dominated = TokenExact ? [] : null; // partial chunks a longer new one makes useless
        try
        {
            for (var i = 0; i < count; i++)
            {
                var chunkStart = i * ChunkSize;
                var chunkTokens = Math.Min(ChunkSize, tokens.Length - chunkStart);
                var partial = chunkTokens < ChunkSize;
                var parent = i == 0 ? ns.Seed : keys[i - 1];
                if (chunkStart + chunkTokens <= skipTokens || Storage.ContainsInMemory(keys[i]))
                {
                    continue; // cached already: registered in the tail index when it was stored or pinned
                }

                if (partial && TokenExact && Tails.Find(parent, tokens.Span[chunkStart..], max: 1) is [{ } best] && best.Common == chunkTokens &&
                    Storage.ContainsInMemory(best.Key))
                {
                    continue; // a stored child already starts with all of these tokens: it serves them
                }

                var length = ns.Format.PayloadLength(chunkTokens);
                if (length > ChunkEnvelope.MaxPayloadLength)
                {
                    throw new InvalidOperationException($"A chunk of {chunkTokens} tokens is {length} bytes, over the {ChunkEnvelope.MaxPayloadLength}-byte limit: lower chunk_size.");
                }

                var chunk = Pool.Rent((int)length);
                try
                {
                    if (!source.TryReadKv(chunkStart, chunkTokens, chunk.Span))
                    {
                        break;
                    }

                    chunk.Key = keys[i];
                    chunk.TokenCount = chunkTokens;
                    chunk.Format = ns.Format;
                    chunk.QuotaGroup = ns.QuotaGroup; // a shared cache server counts a salted chunk against its salt's quota
                    if (TokenExact || Storage.Events is not null)
                    {
                        // The tail index and KV events both need the chunk's place in its prompt.
                        chunk.Lineage = new ChunkLineage(parent, tokens.Span.Slice(chunkStart, chunkTokens).ToArray());
                    }

                    chunk.SealChecksum();
                    // A partial chunk goes to the local tiers only (the disk tier indexes it by its lineage), unless a remote keeps a
                    // child index: then other instances find it there by its parent and tokens.
                    if (Storage.Put(chunk, localOnly: partial && !SaveUnfullChunk && !_lowerChildIndex))
                    {
                        stored += chunkTokens;
                    }

                    if (TokenExact && Storage.ContainsInMemory(keys[i]))
                    {
                        Tails.Add(parent, keys[i], tokens.Span.Slice(chunkStart, chunkTokens), dominated);
                    }
                }
                finally
                {
                    chunk.Release();
                }
            }

            // A shorter partial chunk that a new one extends serves nothing the new one does not: free it.
            foreach (var key in dominated ?? [])
            {
                Storage.RemoveInBackground(key, localOnly: true);
            }
        }
        finally
        {
            source.CompleteRead();
            ArrayPool<ChunkHash>.Shared.Return(keys);
            Metrics.Store(stored, Stopwatch.GetElapsedTime(start).TotalSeconds);
        }

        return ValueTask.FromResult(stored);
    }

    /// <summary>The keys of <paramref name="tokens"/>' chunks under <paramref name="ns"/> (or the default namespace).</summary>
    public ChunkHash[] ComputeKeys(ReadOnlySpan<int> tokens, CacheNamespace? ns = null) =>
        PrefixHasher.ComputeKeys(ns ?? Namespace, tokens, ChunkSize, SaveUnfullChunk);

    /// <summary>Waits for background writes to lower tiers.</summary>
    public Task FlushAsync(CancellationToken cancellationToken = default) => Storage.FlushAsync(cancellationToken);

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        if (_ownsStorage)
        {
            await Storage.DisposeAsync().ConfigureAwait(false);
        }

        if (_ownsPool)
        {
            Pool.Dispose();
        }

        if (_ownsMetrics && MetricsOwned)
        {
            Metrics.Dispose();
        }
    }

    private void DoNotDisposeMetrics() => MetricsOwned = false;

    private ChunkHash[] RentKeys(ReadOnlySpan<int> tokens, CacheNamespace ns, out int count, bool? includePartial = null)
    {
        var partial = includePartial ?? SaveUnfullChunk;
        var n = PrefixHasher.ChunkCount(tokens.Length, ChunkSize, partial);
        var keys = ArrayPool<ChunkHash>.Shared.Rent(Math.Max(n, 1));
        count = PrefixHasher.ComputeKeys(ns.Seed, tokens, ChunkSize, partial, keys);
        return keys;
    }
}
