using System.Text.Json;

namespace LMCacheSharp.Serving.OpenAi;

/// <summary>A chat message of a request.</summary>
/// <param name="Role">system, user, assistant or tool.</param>
/// <param name="Content">The text.</param>
public sealed record ChatMessageInput(string Role, string Content);

/// <summary>Sampling and cache parameters common to completions and chat completions.</summary>
public sealed record GenerationParameters
{
    /// <summary>Tokens to generate at most (max_tokens / max_completion_tokens). Null: the server default.</summary>
    public int? MaxTokens { get; init; }

    /// <summary>The field <see cref="MaxTokens"/> came from, for error messages. Default "max_tokens".</summary>
    public string MaxTokensParam { get; init; } = "max_tokens";

    /// <summary>Request fields this server does not know and ignored (as vLLM does); logged at debug level.</summary>
    public IReadOnlyList<string> IgnoredFields { get; init; } = [];

    /// <summary>0 means greedy. Default 1.</summary>
    public float Temperature { get; init; } = 1f;

    /// <summary>Nucleus sampling mass. Default 1.</summary>
    public float TopP { get; init; } = 1f;

    /// <summary>Sampling seed; null picks one.</summary>
    public uint? Seed { get; init; }

    /// <summary>Stop strings (at most 4).</summary>
    public IReadOnlyList<string> Stop { get; init; } = [];

    /// <summary>Stream server-sent events.</summary>
    public bool Stream { get; init; }

    /// <summary>stream_options.include_usage.</summary>
    public bool StreamIncludeUsage { get; init; }

    /// <summary>Tenant salt: requests with different salts never share KV.</summary>
    public string? CacheSalt { get; init; }

    /// <summary>ignore_eos (vLLM and llama-server): end-of-generation tokens are never sampled; generation runs to max_tokens or a stop string.</summary>
    public bool IgnoreEos { get; init; }

    /// <summary>kv_transfer_params: lmcache.skip_save.</summary>
    public bool SkipSave { get; init; }

    /// <summary>kv_transfer_params: lmcache.tag.* (tag name without the prefix).</summary>
    public IReadOnlyDictionary<string, string> Tags { get; init; } = new Dictionary<string, string>();

    /// <summary>top_k: sample among the k most likely tokens; 0 (or -1, vLLM's spelling) disables it. Default 0.</summary>
    public int TopK { get; init; }

    /// <summary>min_p: drop tokens less likely than min_p times the most likely one; 0..1, default 0 (off).</summary>
    public float MinP { get; init; }

    /// <summary>presence_penalty: subtracted once from the logit of every token generated so far; -2..2, default 0.</summary>
    public float PresencePenalty { get; init; }

    /// <summary>frequency_penalty: subtracted from a token's logit once per time it was generated so far; -2..2, default 0.</summary>
    public float FrequencyPenalty { get; init; }

    /// <summary>repetition_penalty (vLLM, llama.cpp): divides positive logits (multiplies negative ones) of tokens generated so far; above 0, default 1 (off).</summary>
    public float RepetitionPenalty { get; init; } = 1f;

    /// <summary>logit_bias: token id -> bias added to its logit before sampling (-100..100).</summary>
    public IReadOnlyDictionary<int, float> LogitBias { get; init; } = new Dictionary<int, float>();

    /// <summary>Whether to report the log probability of every generated token (chat <c>logprobs: true</c>, completions <c>logprobs: N</c>).</summary>
    public bool Logprobs { get; init; }

    /// <summary>How many most likely alternatives to report per generated token (chat <c>top_logprobs</c> 0..20, completions <c>logprobs</c> 0..20).</summary>
    public int TopLogprobs { get; init; }

    /// <summary>Choices to generate for the prompt (n); the prompt is prefilled once and shared. Default 1.</summary>
    public int N { get; init; } = 1;

    /// <summary>A GBNF grammar (root rule <c>root</c>) every completion must match: from response_format, or null.</summary>
    public string? Grammar { get; init; }
}

/// <summary>POST /v1/completions. The prompt is text or, when <see cref="PromptTokens"/> is set, token ids (then <see cref="Prompt"/> is empty).</summary>
public sealed record CompletionRequest(string Model, string Prompt, GenerationParameters Parameters, bool Echo)
{
    /// <summary>The prompt as token ids (<c>"prompt": [1, 2, 3]</c>), or null for a text prompt.</summary>
    public IReadOnlyList<int>? PromptTokens { get; init; }
}

/// <summary>POST /v1/chat/completions.</summary>
public sealed record ChatCompletionRequest(string Model, IReadOnlyList<ChatMessageInput> Messages, GenerationParameters Parameters);

/// <summary>A request the server rejects: becomes a 400 in OpenAI's error shape.</summary>
public sealed class OpenAiRequestException(string message, string? param = null, string code = "invalid_request_error", int status = 400)
    : Exception(message)
{
    /// <summary>The offending parameter, or null.</summary>
    public string? Param { get; } = param;

    /// <summary>OpenAI error type.</summary>
    public string Code { get; } = code;

    /// <summary>HTTP status.</summary>
    public int Status { get; } = status;
}

/// <summary>Parses OpenAI request bodies with precise messages for every bad field.</summary>
public static class OpenAiRequestParser
{
    /// <summary>Most stop strings accepted (OpenAI allows 4).</summary>
    public const int MaxStopStrings = 4;

    /// <summary>Parses a /v1/completions body.</summary>
    public static CompletionRequest ParseCompletion(JsonElement body)
    {
        RequireObject(body);
        var model = OptionalString(body, "model") ?? "";
        if (!body.TryGetProperty("prompt", out var prompt))
        {
            throw new OpenAiRequestException("'prompt' is required", "prompt");
        }

        IReadOnlyList<int>? tokens = null;
        var text = "";
        if (prompt.ValueKind == JsonValueKind.String)
        {
            text = ReadString(prompt, "prompt");
        }
        else if (prompt.ValueKind == JsonValueKind.Array && prompt.GetArrayLength() == 1 && prompt[0].ValueKind == JsonValueKind.String)
        {
            text = ReadString(prompt[0], "prompt");
        }
        else if (prompt.ValueKind == JsonValueKind.Array && prompt.GetArrayLength() == 1 && prompt[0].ValueKind == JsonValueKind.Array)
        {
            tokens = ReadTokenIds(prompt[0]);
        }
        else if (prompt.ValueKind == JsonValueKind.Array && prompt.GetArrayLength() > 0 && prompt[0].ValueKind == JsonValueKind.Number)
        {
            tokens = ReadTokenIds(prompt);
        }
        else if (prompt.ValueKind == JsonValueKind.Array)
        {
            throw new OpenAiRequestException("'prompt' as a list must be token ids, or hold exactly one string or one list of token ids (batched prompts are not supported)", "prompt");
        }
        else
        {
            throw new OpenAiRequestException("'prompt' must be a string or a list of token ids", "prompt");
        }

        RejectUnsupported(body, chat: false);
        var parameters = ParseParameters(body, CompletionFields, chat: false);
        var echo = OptionalBool(body, "echo") ?? false;
        if (echo && parameters.Logprobs)
        {
            throw new OpenAiRequestException("'echo' together with 'logprobs' is not supported (the prompt's log probabilities are not computed)", "echo");
        }

        return new CompletionRequest(model, text, parameters, echo) { PromptTokens = tokens };
    }

    /// <summary>Fields of /v1/completions this server reads (others are ignored and listed at debug level).</summary>
    private static readonly HashSet<string> CompletionFields = new(StringComparer.Ordinal)
    {
        "model", "prompt", "echo", "max_tokens", "temperature", "top_p", "seed", "stop", "stream", "stream_options", "cache_salt",
        "kv_transfer_params", "n", "best_of", "user", "ignore_eos", "logprobs", "logit_bias", "presence_penalty", "frequency_penalty",
        "repetition_penalty", "top_k", "min_p", "suffix", "response_format",
    };

    /// <summary>Fields of /v1/chat/completions this server reads.</summary>
    private static readonly HashSet<string> ChatFields = new(StringComparer.Ordinal)
    {
        "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop", "stream", "stream_options",
        "cache_salt", "kv_transfer_params", "n", "best_of", "user", "ignore_eos", "logprobs", "top_logprobs", "logit_bias",
        "presence_penalty", "frequency_penalty", "repetition_penalty", "top_k", "min_p", "response_format", "tools", "tool_choice",
        "functions", "function_call", "parallel_tool_calls", "audio", "modalities", "prediction", "web_search_options",
        "reasoning_effort", "verbosity", "store", "metadata", "service_tier", "safety_identifier", "prompt_cache_key",
    };

    /// <summary>Most alternatives per token for top_logprobs (chat) and logprobs (completions); OpenAI allows 20 and 5.</summary>
    public const int MaxTopLogprobs = 20;

    private static int[] ReadTokenIds(JsonElement array)
    {
        var n = array.GetArrayLength();
        if (n == 0)
        {
            throw new OpenAiRequestException("'prompt' must not be empty", "prompt");
        }

        var tokens = new int[n];
        var i = 0;
        foreach (var e in array.EnumerateArray())
        {
            if (e.ValueKind != JsonValueKind.Number || !e.TryGetInt32(out tokens[i]))
            {
                throw new OpenAiRequestException($"'prompt[{i}]' must be an integer token id", "prompt");
            }

            i++;
        }

        return tokens;
    }

    /// <summary>A JSON string's value; invalid text (a lone surrogate escape such as \ud800) is a 400 naming the field.</summary>
    internal static string ReadString(JsonElement e, string name)
    {
        try
        {
            return e.GetString()!;
        }
        catch (InvalidOperationException)
        {
            throw new OpenAiRequestException($"'{name}' is not valid text (a lone UTF-16 surrogate or invalid UTF-8)", name);
        }
    }

    /// <summary>
    /// Rejects a body with a field name that is not valid text (invalid UTF-8, or an escape such as \ud800 that decodes to a
    /// lone surrogate) anywhere in it, before any field is looked up: for such a name <see cref="JsonProperty.Name"/>, and
    /// <see cref="JsonElement.TryGetProperty(string, out JsonElement)"/> over an escaped one, throw InvalidOperationException
    /// (found by OpenAiRequestParserFuzzTests). String values are checked where they are read (<see cref="ReadString"/>).
    /// </summary>
    private static void RequireValidNames(JsonElement e, string where)
    {
        if (e.ValueKind == JsonValueKind.Object)
        {
            foreach (var p in e.EnumerateObject())
            {
                string name;
                try
                {
                    name = p.Name;
                }
                catch (InvalidOperationException)
                {
                    var field = where.Length == 0 ? "a field name" : $"a field name in '{where}'";
                    throw new OpenAiRequestException($"{field} is not valid text (a lone UTF-16 surrogate or invalid UTF-8)", where.Length == 0 ? null : where);
                }

                RequireValidNames(p.Value, where.Length == 0 ? name : where);
            }
        }
        else if (e.ValueKind == JsonValueKind.Array)
        {
            foreach (var item in e.EnumerateArray())
            {
                if (item.ValueKind is JsonValueKind.Object or JsonValueKind.Array)
                {
                    RequireValidNames(item, where);
                }
            }
        }
    }

    /// <summary>Parses a /v1/chat/completions body.</summary>
    public static ChatCompletionRequest ParseChat(JsonElement body)
    {
        RequireObject(body);
        var model = OptionalString(body, "model") ?? "";
        if (!body.TryGetProperty("messages", out var messages) || messages.ValueKind != JsonValueKind.Array)
        {
            throw new OpenAiRequestException("'messages' is required and must be a list", "messages");
        }

        if (messages.GetArrayLength() == 0)
        {
            throw new OpenAiRequestException("'messages' must not be empty", "messages");
        }

        var list = new List<ChatMessageInput>();
        var i = 0;
        foreach (var m in messages.EnumerateArray())
        {
            var where = $"messages[{i++}]";
            if (m.ValueKind != JsonValueKind.Object)
            {
                throw new OpenAiRequestException($"'{where}' must be an object", where);
            }

            var role = OptionalString(m, "role") ?? throw new OpenAiRequestException($"'{where}.role' is required", where + ".role");
            if (role is not ("system" or "developer" or "user" or "assistant" or "tool"))
            {
                throw new OpenAiRequestException($"'{where}.role' must be system, developer, user, assistant or tool, got '{role}'", where + ".role");
            }

            list.Add(new ChatMessageInput(role == "developer" ? "system" : role, ReadContent(m, where, role)));
        }

        RejectUnsupported(body, chat: true);
        return new ChatCompletionRequest(model, list, ParseParameters(body, ChatFields, chat: true));
    }

    private static string ReadContent(JsonElement message, string where, string role)
    {
        if (!message.TryGetProperty("content", out var content) || content.ValueKind == JsonValueKind.Null)
        {
            // As OpenAI: an assistant turn may carry tool calls instead of text; every other role needs content.
            return role is "assistant" ? "" : throw new OpenAiRequestException($"'{where}.content' is required for a {role} message", where + ".content");
        }

        if (content.ValueKind == JsonValueKind.String)
        {
            return ReadString(content, where + ".content");
        }

        if (content.ValueKind != JsonValueKind.Array)
        {
            throw new OpenAiRequestException($"'{where}.content' must be a string or a list of text parts", where + ".content");
        }

        var text = new System.Text.StringBuilder();
        foreach (var part in content.EnumerateArray())
        {
            if (part.ValueKind != JsonValueKind.Object || OptionalString(part, "type") != "text")
            {
                throw new OpenAiRequestException($"'{where}.content' parts must be of type 'text' (images and audio are not supported)", where + ".content");
            }

            text.Append(OptionalString(part, "text", where + ".content"));
        }

        return text.ToString();
    }

    private static GenerationParameters ParseParameters(JsonElement body, HashSet<string> known, bool chat)
    {
        var maxTokensParam = body.TryGetProperty("max_completion_tokens", out var mct) && mct.ValueKind != JsonValueKind.Null ? "max_completion_tokens" : "max_tokens";
        var maxTokens = OptionalInt(body, maxTokensParam);
        if (maxTokens is < 1)
        {
            throw new OpenAiRequestException($"'{maxTokensParam}' must be at least 1", maxTokensParam);
        }

        var ignored = new List<string>();
        foreach (var p in body.EnumerateObject())
        {
            if (!known.Contains(p.Name))
            {
                ignored.Add(p.Name);
            }
        }

        var temperature = OptionalFloat(body, "temperature") ?? 1f;
        if (temperature is < 0 or > 2)
        {
            throw new OpenAiRequestException($"'temperature' must be between 0 and 2, got {temperature}", "temperature");
        }

        var topP = OptionalFloat(body, "top_p") ?? 1f;
        if (topP is <= 0 or > 1)
        {
            throw new OpenAiRequestException($"'top_p' must be in (0, 1], got {topP}", "top_p");
        }

        long? seed = body.TryGetProperty("seed", out var s) && s.ValueKind != JsonValueKind.Null
            ? s.ValueKind == JsonValueKind.Number && s.TryGetInt64(out var sv) ? sv : throw new OpenAiRequestException("'seed' must be an integer", "seed")
            : null;

        var stop = new List<string>();
        if (body.TryGetProperty("stop", out var st) && st.ValueKind != JsonValueKind.Null)
        {
            if (st.ValueKind == JsonValueKind.String)
            {
                stop.Add(ReadString(st, "stop"));
            }
            else if (st.ValueKind == JsonValueKind.Array && st.EnumerateArray().All(e => e.ValueKind == JsonValueKind.String))
            {
                stop.AddRange(st.EnumerateArray().Select(e => ReadString(e, "stop")));
            }
            else
            {
                throw new OpenAiRequestException("'stop' must be a string or a list of strings", "stop");
            }

            if (stop.Count > MaxStopStrings || stop.Any(string.IsNullOrEmpty))
            {
                throw new OpenAiRequestException($"'stop' takes up to {MaxStopStrings} non-empty strings", "stop");
            }
        }

        var includeUsage = body.TryGetProperty("stream_options", out var so) && so.ValueKind == JsonValueKind.Object && (OptionalBool(so, "include_usage") ?? false);
        var (skipSave, tags) = ParseKvTransferParams(body);
        var salt = OptionalString(body, "cache_salt");
        var (logprobs, topLogprobs) = ParseLogprobs(body, chat);
        var n = OptionalInt(body, "n") ?? 1;
        if (n < 1)
        {
            throw new OpenAiRequestException($"'n' must be at least 1, got {n}", "n");
        }

        if (OptionalInt(body, "best_of") is { } bestOf && bestOf != 1 && bestOf != n)
        {
            throw new OpenAiRequestException($"'best_of' other than 1 or n is not supported (got {bestOf}, n = {n})", "best_of");
        }

        var ignoreEos = OptionalBool(body, "ignore_eos") ?? false;
        var grammar = ResponseFormatGrammar.FromRequest(body);
        if (grammar is not null && ignoreEos)
        {
            // The grammar ends the output with an end-of-generation token; ignore_eos would forbid the only allowed token.
            throw new OpenAiRequestException("'ignore_eos' cannot be combined with a JSON 'response_format'", "ignore_eos");
        }

        return new GenerationParameters
        {
            TopK = ParseTopK(body),
            MinP = RangeFloat(body, "min_p", 0, 1, 0),
            PresencePenalty = RangeFloat(body, "presence_penalty", -2, 2, 0),
            FrequencyPenalty = RangeFloat(body, "frequency_penalty", -2, 2, 0),
            RepetitionPenalty = ParseRepetitionPenalty(body),
            LogitBias = ParseLogitBias(body),
            Logprobs = logprobs,
            TopLogprobs = topLogprobs,
            N = n,
            Grammar = grammar,
            MaxTokens = maxTokens,
            MaxTokensParam = maxTokensParam,
            IgnoredFields = ignored,
            Temperature = temperature,
            TopP = topP,
            Seed = seed is null ? null : unchecked((uint)seed.Value),
            Stop = stop,
            Stream = OptionalBool(body, "stream") ?? false,
            StreamIncludeUsage = includeUsage,
            CacheSalt = string.IsNullOrEmpty(salt) ? null : salt,
            SkipSave = skipSave,
            Tags = tags,
            IgnoreEos = ignoreEos,
        };
    }

    private static (bool Logprobs, int Top) ParseLogprobs(JsonElement body, bool chat)
    {
        if (!chat)
        {
            // Completions: logprobs is the number of alternatives (OpenAI's legacy shape); null or absent: off.
            var top = OptionalInt(body, "logprobs");
            if (top is < 0 or > MaxTopLogprobs)
            {
                throw new OpenAiRequestException($"'logprobs' must be between 0 and {MaxTopLogprobs}, got {top}", "logprobs");
            }

            return (top is not null, top ?? 0);
        }

        var on = OptionalBool(body, "logprobs") ?? false;
        var topLogprobs = OptionalInt(body, "top_logprobs");
        if (topLogprobs is < 0 or > MaxTopLogprobs)
        {
            throw new OpenAiRequestException($"'top_logprobs' must be between 0 and {MaxTopLogprobs}, got {topLogprobs}", "top_logprobs");
        }

        if (topLogprobs is > 0 && !on)
        {
            throw new OpenAiRequestException("'top_logprobs' requires 'logprobs' to be true", "top_logprobs");
        }

        return (on, topLogprobs ?? 0);
    }

    private static int ParseTopK(JsonElement body)
    {
        var k = OptionalInt(body, "top_k") ?? 0;
        return k switch
        {
            -1 or 0 => 0,
            > 0 => k,
            _ => throw new OpenAiRequestException($"'top_k' must be -1 or 0 (off) or a positive number of tokens, got {k}", "top_k"),
        };
    }

    private static float ParseRepetitionPenalty(JsonElement body)
    {
        var p = OptionalFloat(body, "repetition_penalty") ?? 1f;
        return p is > 0 and <= 10 ? p : throw new OpenAiRequestException($"'repetition_penalty' must be in (0, 10] (1 is off), got {p}", "repetition_penalty");
    }

    private static float RangeFloat(JsonElement body, string name, float min, float max, float fallback)
    {
        var v = OptionalFloat(body, name) ?? fallback;
        return v >= min && v <= max ? v : throw new OpenAiRequestException($"'{name}' must be between {min} and {max}, got {v}", name);
    }

    /// <summary>logit_bias: an object of token ids (as strings, OpenAI's shape) to numbers in -100..100. Ids are checked against the vocabulary later.</summary>
    private static Dictionary<int, float> ParseLogitBias(JsonElement body)
    {
        var biases = new Dictionary<int, float>();
        if (!body.TryGetProperty("logit_bias", out var lb) || lb.ValueKind == JsonValueKind.Null)
        {
            return biases;
        }

        if (lb.ValueKind != JsonValueKind.Object)
        {
            throw new OpenAiRequestException("'logit_bias' must be an object mapping token ids to biases", "logit_bias");
        }

        foreach (var p in lb.EnumerateObject())
        {
            if (!int.TryParse(p.Name, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var token))
            {
                throw new OpenAiRequestException($"'logit_bias' keys must be token ids, got '{p.Name}'", "logit_bias");
            }

            if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetDouble(out var bias) || bias is < -100 or > 100)
            {
                throw new OpenAiRequestException($"'logit_bias[{p.Name}]' must be a number between -100 and 100", "logit_bias");
            }

            biases[token] = (float)bias;
        }

        return biases;
    }

    private static (bool SkipSave, Dictionary<string, string> Tags) ParseKvTransferParams(JsonElement body)
    {
        var tags = new Dictionary<string, string>(StringComparer.Ordinal);
        if (!body.TryGetProperty("kv_transfer_params", out var kv) || kv.ValueKind == JsonValueKind.Null)
        {
            return (false, tags);
        }

        if (kv.ValueKind != JsonValueKind.Object)
        {
            throw new OpenAiRequestException("'kv_transfer_params' must be an object", "kv_transfer_params");
        }

        var skip = false;
        foreach (var p in kv.EnumerateObject())
        {
            var name = p.Name;
            if (name == "lmcache.skip_save")
            {
                skip = p.Value.ValueKind switch
                {
                    JsonValueKind.True => true,
                    JsonValueKind.False => false,
                    _ => throw new OpenAiRequestException("'kv_transfer_params.lmcache.skip_save' must be a boolean", "kv_transfer_params"),
                };
            }
            else if (name.StartsWith("lmcache.tag.", StringComparison.Ordinal) && name.Length > "lmcache.tag.".Length)
            {
                tags[name["lmcache.tag.".Length..]] = p.Value.ValueKind == JsonValueKind.String ? ReadString(p.Value, "kv_transfer_params") : p.Value.GetRawText();
            }

            // Other keys belong to other connectors (disaggregated prefill etc.): ignored, as vLLM does.
        }

        return (skip, tags);
    }

    /// <summary>
    /// Parameters that would change the output and are not implemented: a clear 400 naming the parameter, never silently
    /// ignored. A value that asks for nothing (null, an empty list, <c>"none"</c>, text-only modalities) is accepted.
    /// </summary>
    private static void RejectUnsupported(JsonElement body, bool chat)
    {
        if (!chat)
        {
            if (body.TryGetProperty("suffix", out var suffix) && suffix.ValueKind != JsonValueKind.Null &&
                !(suffix.ValueKind == JsonValueKind.String && suffix.GetString() is { Length: 0 }))
            {
                throw new OpenAiRequestException("'suffix' (insertion) is not supported", "suffix");
            }

            return;
        }

        foreach (var name in (ReadOnlySpan<string>)["tools", "functions"])
        {
            if (body.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null && !(v.ValueKind == JsonValueKind.Array && v.GetArrayLength() == 0))
            {
                throw new OpenAiRequestException($"'{name}' (function calling) is not supported by this server", name);
            }
        }

        foreach (var name in (ReadOnlySpan<string>)["tool_choice", "function_call"])
        {
            if (body.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null && !(v.ValueKind == JsonValueKind.String && v.GetString() == "none"))
            {
                throw new OpenAiRequestException($"'{name}' (function calling) is not supported by this server; only \"none\"", name);
            }
        }

        foreach (var name in (ReadOnlySpan<string>)["audio", "prediction", "web_search_options", "reasoning_effort", "verbosity"])
        {
            if (body.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null)
            {
                throw new OpenAiRequestException($"'{name}' is not supported by this server", name);
            }
        }

        if (body.TryGetProperty("modalities", out var modalities) && modalities.ValueKind != JsonValueKind.Null &&
            !(modalities.ValueKind == JsonValueKind.Array && modalities.EnumerateArray().All(m => m.ValueKind == JsonValueKind.String && m.GetString() == "text")))
        {
            throw new OpenAiRequestException("'modalities' other than [\"text\"] are not supported", "modalities");
        }
    }

    private static void RequireObject(JsonElement body)
    {
        if (body.ValueKind != JsonValueKind.Object)
        {
            throw new OpenAiRequestException("the request body must be a JSON object");
        }

        RequireValidNames(body, "");
    }

    private static string? OptionalString(JsonElement e, string name, string? where = null) =>
        !e.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null ? null
        : v.ValueKind == JsonValueKind.String ? ReadString(v, where ?? name)
        : throw new OpenAiRequestException($"'{where ?? name}' must be a string", where ?? name);

    private static bool? OptionalBool(JsonElement e, string name) =>
        !e.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null ? null
        : v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean()
        : throw new OpenAiRequestException($"'{name}' must be a boolean", name);

    private static int? OptionalInt(JsonElement e, string name) =>
        !e.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null ? null
        : v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out var i) ? i
        : throw new OpenAiRequestException($"'{name}' must be an integer", name);

    private static float? OptionalFloat(JsonElement e, string name) =>
        !e.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null ? null
        : v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out var d) && double.IsFinite(d) ? (float)d
        : throw new OpenAiRequestException($"'{name}' must be a number", name);
}
