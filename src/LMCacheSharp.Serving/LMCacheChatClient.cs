using System.Runtime.CompilerServices;
using LMCacheSharp.Serving.Inference;
using LMCacheSharp.Serving.OpenAi;
using Microsoft.Extensions.AI;

namespace LMCacheSharp.Serving;

/// <summary>
/// An <see cref="IChatClient"/> over the cached engine, for .NET applications that want no HTTP. Per-call cache settings
/// go in <see cref="ChatOptions.AdditionalProperties"/>: <c>cache_salt</c> (string) and <c>skip_save</c> (bool).
/// </summary>
public sealed class LMCacheChatClient(InferenceService service) : IChatClient
{
    private readonly InferenceService _service = service ?? throw new ArgumentNullException(nameof(service));

    /// <inheritdoc />
    public async Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        var (prompt, parameters) = Prepare(messages, options, stream: false);
        var (text, finish, usage) = await _service.GenerateAsync(prompt, parameters, cancellationToken).ConfigureAwait(false);
        return new ChatResponse(new ChatMessage(ChatRole.Assistant, text))
        {
            ModelId = _service.ModelName,
            FinishReason = finish == FinishReason.Length ? ChatFinishReason.Length : ChatFinishReason.Stop,
            Usage = ToUsage(usage),
        };
    }

    /// <inheritdoc />
    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var (prompt, parameters) = Prepare(messages, options, stream: true);
        var job = await _service.SubmitAsync(prompt, parameters, cancellationToken).ConfigureAwait(false);
        await foreach (var e in job.Events.ReadAllAsync(cancellationToken).ConfigureAwait(false))
        {
            if (e.Error is not null)
            {
                throw new InvalidOperationException(e.Error);
            }

            var update = new ChatResponseUpdate(ChatRole.Assistant, e.Text) { ModelId = _service.ModelName };
            if (e.Finish is { } finish)
            {
                update.FinishReason = finish == FinishReason.Length ? ChatFinishReason.Length : ChatFinishReason.Stop;
                if (e.Usage is { } usage)
                {
                    update.Contents.Add(new UsageContent(ToUsage(usage)));
                }
            }

            yield return update;
        }
    }

    /// <inheritdoc />
    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        return serviceKey is not null ? null
            : serviceType == typeof(ChatClientMetadata) ? new ChatClientMetadata("lmcachesharp", null, _service.ModelName)
            : serviceType.IsInstanceOfType(this) ? this
            : serviceType.IsInstanceOfType(_service) ? _service
            : null;
    }

    /// <summary>Does nothing: the service is owned by its creator.</summary>
    public void Dispose()
    {
    }

    private (int[] Prompt, GenerationParameters Parameters) Prepare(IEnumerable<ChatMessage> messages, ChatOptions? options, bool stream)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var inputs = messages.Select(m => new ChatMessageInput(m.Role.Value, m.Text)).ToList();
        var props = options?.AdditionalProperties;
        var parameters = new GenerationParameters
        {
            MaxTokens = options?.MaxOutputTokens,
            Temperature = options?.Temperature ?? 1f,
            TopP = options?.TopP ?? 1f,
            Seed = options?.Seed is { } seed ? unchecked((uint)seed) : null,
            Stop = [.. options?.StopSequences ?? [], .. _service.ChatStopStrings],
            Stream = stream,
            CacheSalt = props is not null && props.TryGetValue("cache_salt", out var salt) ? salt?.ToString() : null,
            SkipSave = props is not null && props.TryGetValue("skip_save", out var skip) && skip is true,
            TopK = options?.TopK is > 0 and var k ? k : 0,
            FrequencyPenalty = options?.FrequencyPenalty ?? 0,
            PresencePenalty = options?.PresencePenalty ?? 0,
            Grammar = options?.ResponseFormat is ChatResponseFormatJson json
                ? json.Schema is { } schema ? OpenAi.JsonSchemaGrammar.Convert(schema, "response_format") : OpenAi.JsonSchemaGrammar.AnyObject
                : null,
        };
        return (_service.TokenizeChat(inputs), parameters);
    }

    private static UsageDetails ToUsage(GenerationUsage usage) => new()
    {
        InputTokenCount = usage.PromptTokens,
        OutputTokenCount = usage.CompletionTokens,
        TotalTokenCount = usage.PromptTokens + usage.CompletionTokens,
        CachedInputTokenCount = usage.CachedTokens,
    };
}
