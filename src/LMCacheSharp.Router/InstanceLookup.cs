using System.Net.Http.Headers;
using System.Text.Json;

namespace LMCacheSharp.Router;

/// <summary>An instance's answer to <c>POST /lookup</c>: the prompt's tokens and the leading tokens each asked tier holds (0 for a tier not asked).</summary>
/// <param name="PromptTokens">The prompt's tokens as the instance tokenizes it.</param>
/// <param name="Memory">Leading prompt tokens in its memory tier.</param>
/// <param name="Disk">In its disk tier.</param>
/// <param name="Remote">In its remote tier (the shared store).</param>
/// <param name="Load">Its load at the time of the answer, or null.</param>
internal readonly record struct LookupAnswer(int PromptTokens, int Memory, int Disk, int Remote, InstanceLoad? Load)
{
    /// <summary>The most any one tier holds: what the instance would restore.</summary>
    public int MostCached => Math.Max(Memory, Math.Max(Disk, Remote));
}

/// <summary>Asks an <c>lmcache serve</c> instance's <c>POST /lookup</c> (the one place that speaks it, for kv-aware and --pd).</summary>
internal static class InstanceLookup
{
    /// <summary>
    /// Sends the request's <paramref name="body"/> to <c>/lookup?tiers=</c><paramref name="tiers"/> and reads the answer. Throws
    /// <see cref="HttpRequestException"/> for a non-2xx answer, <see cref="JsonException"/>, <see cref="KeyNotFoundException"/> or
    /// <see cref="InvalidOperationException"/> for an answer of another shape, and <see cref="OperationCanceledException"/>.
    /// </summary>
    public static async Task<LookupAnswer> AskAsync(HttpMessageInvoker http, RouterInstance instance, ReadOnlyMemory<byte> body, string tiers,
        CancellationToken cancellationToken)
    {
        using var message = new HttpRequestMessage(HttpMethod.Post, instance.Name + "/lookup?tiers=" + tiers)
        {
            Content = new ReadOnlyMemoryContent(body),
        };
        message.Content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        using var response = await http.SendAsync(message, cancellationToken).ConfigureAwait(false);
        if (!response.IsSuccessStatusCode)
        {
            throw new HttpRequestException($"/lookup answered {(int)response.StatusCode}", null, response.StatusCode);
        }

        using var stream = await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
        using var doc = await JsonDocument.ParseAsync(stream, default, cancellationToken).ConfigureAwait(false);
        var root = doc.RootElement;
        var cached = root.GetProperty("cached_tokens");
        InstanceLoad? load = root.TryGetProperty("load", out var l) && l.ValueKind == JsonValueKind.Object
            ? new InstanceLoad(l.GetProperty("in_flight").GetInt32(), l.GetProperty("queued").GetInt32())
            : null;
        return new LookupAnswer(Math.Max(0, root.GetProperty("prompt_tokens").GetInt32()), Tier(cached, "memory"), Tier(cached, "disk"), Tier(cached, "remote"), load);
    }

    // A tier not asked is null in the answer.
    private static int Tier(JsonElement cached, string name) =>
        cached.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.Number ? Math.Max(0, value.GetInt32()) : 0;
}
