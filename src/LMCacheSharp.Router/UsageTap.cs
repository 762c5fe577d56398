using System.Text;
using System.Text.Json;

namespace LMCacheSharp.Router;

/// <summary>
/// Passes a forwarded response through unchanged (every write and flush goes straight to the client) while keeping a copy
/// of what it needs to read the instance's <c>usage</c>: the whole body of a non-streamed response up to
/// <see cref="MaxWholeBytes"/>, or the last <see cref="TailBytes"/> of a stream (where the usage chunk of
/// <c>stream_options.include_usage</c> sits, just before <c>data: [DONE]</c>). Nothing is held back or delayed.
/// </summary>
internal sealed class UsageTap(Stream inner, bool streamed) : Stream
{
    /// <summary>A non-streamed body larger than this is not parsed for usage.</summary>
    public const int MaxWholeBytes = 1 << 20;

    /// <summary>Bytes of a stream's end kept to find its usage chunk.</summary>
    public const int TailBytes = 16 << 10;

    private byte[] _kept = new byte[streamed ? 2 * TailBytes : 4096];
    private int _length;
    private bool _overflow;

    /// <summary>
    /// The usage the instance reported: prompt tokens and <c>prompt_tokens_details.cached_tokens</c>; null when the response
    /// had none (a stream without include_usage, an error) or it could not be read.
    /// </summary>
    public (int PromptTokens, int CachedTokens)? ReadUsage()
    {
        if (_overflow && !streamed)
        {
            return null;
        }

        var kept = _kept.AsSpan(0, _length);
        if (!streamed)
        {
            return Parse(kept);
        }

        // Server-sent events: the last "data: {...}" event that carries a usage object.
        var text = Encoding.UTF8.GetString(kept);
        foreach (var evt in text.Split("\n\n", StringSplitOptions.RemoveEmptyEntries).Reverse())
        {
            var line = evt.TrimStart('\r', '\n');
            if (line.StartsWith("data: {", StringComparison.Ordinal) && line.Contains("\"usage\"", StringComparison.Ordinal) &&
                Parse(Encoding.UTF8.GetBytes(line[6..])) is { } usage)
            {
                return usage;
            }
        }

        return null;
    }

    private static (int, int)? Parse(ReadOnlySpan<byte> json)
    {
        try
        {
            var reader = new Utf8JsonReader(json);
            using var doc = JsonDocument.ParseValue(ref reader);
            if (doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("usage", out var usage) &&
                usage.ValueKind == JsonValueKind.Object && usage.TryGetProperty("prompt_tokens", out var prompt) && prompt.TryGetInt32(out var p))
            {
                var cached = usage.TryGetProperty("prompt_tokens_details", out var details) && details.ValueKind == JsonValueKind.Object &&
                    details.TryGetProperty("cached_tokens", out var c) && c.TryGetInt32(out var n) ? n : 0;
                return (p, cached);
            }
        }
        catch (JsonException)
        {
        }

        return null;
    }

    private void Keep(ReadOnlySpan<byte> data)
    {
        if (streamed)
        {
            if (data.Length >= TailBytes)
            {
                data[^TailBytes..].CopyTo(_kept);
                _length = TailBytes;
                return;
            }

            if (_length + data.Length > _kept.Length)
            {
                // Keep the last TailBytes - data.Length bytes, then append.
                var keep = TailBytes - data.Length;
                _kept.AsSpan(_length - keep, keep).CopyTo(_kept);
                _length = keep;
            }

            data.CopyTo(_kept.AsSpan(_length));
            _length += data.Length;
            return;
        }

        if (_overflow)
        {
            return;
        }

        if (_length + data.Length > MaxWholeBytes)
        {
            _overflow = true;
            return;
        }

        if (_length + data.Length > _kept.Length)
        {
            Array.Resize(ref _kept, Math.Min(MaxWholeBytes, Math.Max(_kept.Length * 2, _length + data.Length)));
        }

        data.CopyTo(_kept.AsSpan(_length));
        _length += data.Length;
    }

    /// <inheritdoc />
    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        await inner.WriteAsync(buffer, cancellationToken).ConfigureAwait(false);
        Keep(buffer.Span);
    }

    /// <inheritdoc />
    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    /// <inheritdoc />
    public override void Write(byte[] buffer, int offset, int count)
    {
        inner.Write(buffer, offset, count);
        Keep(buffer.AsSpan(offset, count));
    }

    /// <inheritdoc />
    public override Task FlushAsync(CancellationToken cancellationToken) => inner.FlushAsync(cancellationToken);

    /// <inheritdoc />
    public override void Flush() => inner.Flush();

    /// <inheritdoc />
    public override bool CanRead => false;

    /// <inheritdoc />
    public override bool CanSeek => false;

    /// <inheritdoc />
    public override bool CanWrite => true;

    /// <inheritdoc />
    public override long Length => throw new NotSupportedException();

    /// <inheritdoc />
    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    /// <inheritdoc />
    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    /// <inheritdoc />
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    /// <inheritdoc />
    public override void SetLength(long value) => throw new NotSupportedException();
}
