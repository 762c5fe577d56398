using System.Buffers;
using Microsoft.AspNetCore.Http;

namespace LMCacheSharp.Router;

/// <summary>
/// A request body read whole into a pooled array, so that the router can route on it and forward it (again, on a retry).
/// The router owns it: disposed (the array returned) when the request ends.
/// </summary>
internal sealed class BufferedBody : IDisposable
{
    private byte[]? _array;

    private BufferedBody(byte[] array, int length)
    {
        _array = array;
        Length = length;
    }

    /// <summary>Bytes read.</summary>
    public int Length { get; }

    /// <summary>The body.</summary>
    public ReadOnlyMemory<byte> Memory => (_array ?? throw new ObjectDisposedException(nameof(BufferedBody))).AsMemory(0, Length);

    /// <summary>A fresh read-only stream over the body, for one forwarding attempt.</summary>
    public Stream OpenRead() => new MemoryStream(_array ?? throw new ObjectDisposedException(nameof(BufferedBody)), 0, Length, writable: false);

    /// <summary>
    /// Reads the body of <paramref name="http"/>, at most <paramref name="limit"/> bytes. Null when it is larger: then the rest
    /// has been read and thrown away (up to Kestrel's limit, twice <paramref name="limit"/>), so that a client that sends its
    /// whole body before reading sees the 413 the caller writes; a body announcing more than that is not read at all.
    /// </summary>
    public static async Task<BufferedBody?> ReadAsync(HttpContext http, long limit)
    {
        var aborted = http.RequestAborted;
        var announced = http.Request.ContentLength;
        if (announced > limit)
        {
            if (announced <= 2 * limit)
            {
                await DrainAsync(http.Request.Body, aborted).ConfigureAwait(false);
            }

            return null;
        }

        var array = ArrayPool<byte>.Shared.Rent((int)Math.Clamp(announced ?? 16 << 10, 1, limit + 1));
        var length = 0;
        try
        {
            while (true)
            {
                if (length == array.Length)
                {
                    if (length > limit)
                    {
                        await DrainAsync(http.Request.Body, aborted).ConfigureAwait(false);
                        ArrayPool<byte>.Shared.Return(array);
                        return null;
                    }

                    var larger = ArrayPool<byte>.Shared.Rent((int)Math.Min(limit + 1, (long)array.Length * 2));
                    array.AsSpan(0, length).CopyTo(larger);
                    ArrayPool<byte>.Shared.Return(array);
                    array = larger;
                }

                var n = await http.Request.Body.ReadAsync(array.AsMemory(length), aborted).ConfigureAwait(false);
                if (n == 0)
                {
                    break;
                }

                length += n;
            }

            if (length > limit)
            {
                ArrayPool<byte>.Shared.Return(array);
                return null;
            }

            return new BufferedBody(array, length);
        }
        catch (BadHttpRequestException e) when (e.StatusCode == StatusCodes.Status413PayloadTooLarge)
        {
            ArrayPool<byte>.Shared.Return(array);
            return null; // past Kestrel's own limit: the connection closes after the reply
        }
        catch
        {
            ArrayPool<byte>.Shared.Return(array);
            throw;
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _array, null) is { } array)
        {
            ArrayPool<byte>.Shared.Return(array);
        }
    }

    private static async Task DrainAsync(Stream body, CancellationToken cancellationToken)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(64 << 10);
        try
        {
            while (await body.ReadAsync(buffer, cancellationToken).ConfigureAwait(false) > 0)
            {
            }
        }
        catch (BadHttpRequestException)
        {
            // Past Kestrel's own limit: the connection closes after the reply.
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }
}
