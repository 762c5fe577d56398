using System.Text;
using LLama;
using LMCacheSharp.Serving.OpenAi;

namespace LMCacheSharp.Serving.Inference;

/// <summary>
/// Turns chat messages into prompt text: with the model's own chat template when the GGUF has one
/// (<c>tokenizer.chat_template</c>, applied by llama.cpp), else with the documented default, a ChatML-style layout:
/// <code>
/// &lt;|im_start|&gt;system\n{content}&lt;|im_end|&gt;\n ... &lt;|im_start|&gt;assistant\n
/// </code>
/// Each turn's text is a prefix of the next turn's, so multi-round chats hit the KV cache.
/// </summary>
public sealed class ChatPromptFormatter
{
    private readonly LLamaWeights? _weights;

    /// <summary>Creates a formatter for <paramref name="weights"/>; null (or a model without a template) uses the default layout.</summary>
    public ChatPromptFormatter(LLamaWeights? weights)
    {
        _weights = weights is not null && weights.Metadata.ContainsKey("tokenizer.chat_template") ? weights : null;
    }

    /// <summary>Whether the model's own template is used.</summary>
    public bool UsesModelTemplate => _weights is not null;

    /// <summary>The prompt for <paramref name="messages"/>, ending where the assistant's reply begins.</summary>
    public string Format(IReadOnlyList<ChatMessageInput> messages)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (_weights is not null)
        {
            var template = new LLamaTemplate(_weights) { AddAssistant = true };
            foreach (var m in messages)
            {
                template.Add(m.Role, m.Content);
            }

            return Encoding.UTF8.GetString(template.Apply());
        }

        return FormatDefault(messages);
    }

    /// <summary>The default layout (also used by tests).</summary>
    public static string FormatDefault(IReadOnlyList<ChatMessageInput> messages)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var sb = new StringBuilder();
        foreach (var m in messages)
        {
            sb.Append("<|im_start|>").Append(m.Role).Append('\n').Append(m.Content).Append("<|im_end|>\n");
        }

        return sb.Append("<|im_start|>assistant\n").ToString();
    }
}
