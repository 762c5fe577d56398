using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using LMCacheSharp.Serving.OpenAi;

namespace LMCacheSharp.Serving.Tests;

/// <summary>
/// Seeded mutation fuzzing of <see cref="OpenAiRequestParser"/>: every input starts from a valid /v1/completions or
/// /v1/chat/completions body (built here, plus the files under FuzzCorpus/OpenAi, where every input that ever failed is
/// kept) and is mutated in its JSON structure (values of another kind, edge numbers, lone surrogates, removed, duplicated
/// and unknown fields, nesting) and its bytes. Each input is parsed with <see cref="JsonDocument"/>, as the endpoint does,
/// then with both parsers: the only exceptions allowed are <see cref="JsonException"/> from the document and
/// <see cref="OpenAiRequestException"/> from the parser, and what a parser accepts is in range. Bounded for CI (a few
/// seconds); LMCACHE_FUZZ_ITERATIONS scales the count and LMCACHE_FUZZ_SEED picks another seed.
/// </summary>
public class OpenAiRequestParserFuzzTests
{
    private static int Seed => int.TryParse(Environment.GetEnvironmentVariable("LMCACHE_FUZZ_SEED"), out var s) ? s : 20261213;

    private static int Iterations(int baseline) =>
        double.TryParse(Environment.GetEnvironmentVariable("LMCACHE_FUZZ_ITERATIONS"), System.Globalization.CultureInfo.InvariantCulture, out var scale)
            ? Math.Max(1, (int)(baseline * scale))
            : baseline;

    [Fact]
    public void Parsers_only_ever_throw_an_OpenAi_request_exception_and_accept_only_values_in_range()
    {
        var random = new Random(Seed + 3);
        var seeds = Seeds();
        var executions = Iterations(120_000);
        var accepted = 0;
        for (var i = 0; i < executions; i++)
        {
            var input = random.Next(3) == 0 ? MutateBytes(random, seeds[random.Next(seeds.Count)]) : MutateJson(random, seeds);
            try
            {
                accepted += ParseBoth(input);
            }
            catch (Exception e) when (e is not Xunit.Sdk.XunitException)
            {
                Assert.Fail($"execution {i} (seed {Seed + 3}): {e.GetType().Name}: {e.Message}; input {Convert.ToHexString(input)}");
            }
        }

        TestContext.Current.TestOutputHelper?.WriteLine($"openai parser: {executions} executions ({accepted} bodies accepted), 0 finds");
    }

    [Fact]
    public void Every_corpus_file_parses_or_is_rejected_with_an_OpenAi_request_exception()
    {
        var files = CorpusFiles();
        Assert.NotEmpty(files);
        foreach (var file in files)
        {
            try
            {
                ParseBoth(ReadCorpusFile(file));
            }
            catch (Exception e) when (e is not Xunit.Sdk.XunitException)
            {
                Assert.Fail($"{Path.GetFileName(file)}: {e.GetType().Name}: {e.Message}");
            }
        }
    }

    /// <summary>Parses the document, then runs both parsers on it; returns how many accepted it. Throws what is unexpected.</summary>
    private static int ParseBoth(byte[] input)
    {
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(input);
        }
        catch (JsonException)
        {
            return 0; // the endpoint answers 400 "not valid JSON"
        }

        var accepted = 0;
        using (document)
        {
            try
            {
                var completion = OpenAiRequestParser.ParseCompletion(document.RootElement);
                Assert.True(completion.PromptTokens is null ? completion.Prompt is not null : completion.PromptTokens.Count > 0 && completion.Prompt.Length == 0);
                AssertInRange(completion.Parameters);
                accepted++;
            }
            catch (OpenAiRequestException e)
            {
                Assert.Equal(400, e.Status);
            }

            try
            {
                var chat = OpenAiRequestParser.ParseChat(document.RootElement);
                Assert.NotEmpty(chat.Messages);
                Assert.All(chat.Messages, m => Assert.True(m.Role is "system" or "user" or "assistant" or "tool" && m.Content is not null));
                AssertInRange(chat.Parameters);
                accepted++;
            }
            catch (OpenAiRequestException e)
            {
                Assert.Equal(400, e.Status);
            }
        }

        return accepted;
    }

    private static void AssertInRange(GenerationParameters p)
    {
        Assert.True(p.MaxTokens is null or >= 1, $"max_tokens {p.MaxTokens}");
        Assert.True(p.Temperature is >= 0 and <= 2, $"temperature {p.Temperature}");
        Assert.True(p.TopP is > 0 and <= 1, $"top_p {p.TopP}");
        Assert.True(p.Stop.Count <= OpenAiRequestParser.MaxStopStrings && p.Stop.All(s => s.Length > 0), "stop");
        Assert.True(p.CacheSalt is null || p.CacheSalt.Length > 0, "cache_salt");
        Assert.All(p.Tags, t => Assert.True(t.Key.Length > 0 && t.Value is not null));
    }

    /// <summary>Valid bodies of both endpoints (every field the parser reads, each shape it takes), plus the corpus files.</summary>
    private static List<byte[]> Seeds()
    {
        string[] bodies =
        [
            """{"model":"tiny","prompt":"Once upon a time","max_tokens":16,"temperature":0}""",
            """{"model":"tiny","prompt":["The cache"],"max_tokens":8,"top_p":0.9,"seed":42,"stop":["\n","."],"echo":true}""",
            """{"prompt":[1,2,3,4,5,6,7,8],"max_tokens":4,"stream":true,"stream_options":{"include_usage":true},"ignore_eos":true}""",
            """{"prompt":[[11,12,13]],"n":1,"best_of":1,"user":"u","cache_salt":"tenant-a","stop":"END"}""",
            """{"model":"tiny","prompt":"x","kv_transfer_params":{"lmcache.skip_save":true,"lmcache.tag.user":"alice","lmcache.tag.n":3,"other":{}}}""",
            """{"model":"tiny","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Hi"}],"max_tokens":10}""",
            """{"messages":[{"role":"developer","content":"d"},{"role":"user","content":[{"type":"text","text":"part one"},{"type":"text","text":" two"}]},{"role":"assistant","content":null,"tool_calls":[]},{"role":"tool","content":"42","tool_call_id":"c1"}]}""",
            """{"messages":[{"role":"user","content":"caf\u00e9 \ud83d\ude00"}],"max_completion_tokens":32,"temperature":1.5,"top_p":1,"stream":true,"stream_options":{"include_usage":false},"stop":["a","b","c","d"],"kv_transfer_params":{"lmcache.skip_save":false,"lmcache.tag.team":"x"},"seed":-1,"logprobs":false}""",
        ];
        var seeds = bodies.Select(b => Encoding.UTF8.GetBytes(b)).ToList();
        seeds.AddRange(CorpusFiles().Select(ReadCorpusFile));
        return seeds;
    }

    private static readonly string[] Names =
    [
        "model", "prompt", "messages", "role", "content", "type", "text", "max_tokens", "max_completion_tokens", "temperature", "top_p",
        "seed", "stop", "stream", "stream_options", "include_usage", "cache_salt", "kv_transfer_params", "lmcache.skip_save",
        "lmcache.tag.", "lmcache.tag.x", "n", "best_of", "user", "ignore_eos", "echo", "", "é",
    ];

    /// <summary>Field names as JSON text, including escapes that decode to invalid UTF-16 (JsonNode cannot write those).</summary>
    private static readonly string[] RawNames = [.. Names.Select(n => JsonSerializer.Serialize(n)), "\"\\ud800\"", "\"\\udfff\\ud800\"", "\"lmcache.tag.\\udc00\"", "\"\\u006dodel\""];

    /// <summary>JSON values the parser must cope with anywhere: every kind, edge numbers, invalid text, deep nesting.</summary>
    private static JsonNode? RandomValue(Random random, int depth = 0) => random.Next(depth > 2 ? 17 : 21) switch
    {
        0 => null,
        1 => JsonValue.Create(random.Next(2) == 0),
        2 => JsonValue.Create(random.Next(-3, 40)),
        3 => JsonValue.Create(new[] { int.MinValue, int.MaxValue, -1, 0, 1, 2, 4, 5 }[random.Next(8)]),
        4 => JsonNode.Parse(new[] { "2147483648", "-2147483649", "9223372036854775808", "1e309", "-1e309", "1e-400", "-0", "0.0", "1.0", "2.0000001", "1E2", "4294967296", "0.5e1" }[random.Next(13)]),
        5 => JsonValue.Create(random.NextDouble() * 4 - 1),
        6 => JsonValue.Create(""),
        7 => JsonValue.Create(new[] { "system", "user", "assistant", "tool", "developer", "text", "image_url", "lmcache.tag.", "\n" }[random.Next(9)]),
        8 => JsonValue.Create(LonePlaceholders[random.Next(LonePlaceholders.Length)]),
        9 => JsonValue.Create(new string('x', random.Next(1, 3000))),
        10 => new JsonArray(),
        11 => new JsonObject(),
        12 => new JsonArray(Enumerable.Range(0, random.Next(1, 8)).Select(_ => (JsonNode?)JsonValue.Create(random.Next(-5, 100))).ToArray()),
        13 => new JsonArray(Enumerable.Range(0, random.Next(1, 7)).Select(_ => (JsonNode?)JsonValue.Create(random.Next(3) == 0 ? "" : "s")).ToArray()),
        14 => new JsonArray(new JsonObject { ["type"] = "text", ["text"] = RandomValue(random, depth + 1) }),
        15 => new JsonArray(new JsonObject { ["role"] = RandomValue(random, depth + 1), ["content"] = RandomValue(random, depth + 1) }),
        16 => new JsonObject { [Names[random.Next(Names.Length)]] = RandomValue(random, depth + 1) },
        17 => new JsonArray(RandomValue(random, depth + 1)),
        18 => new JsonArray(RandomValue(random, depth + 1), RandomValue(random, depth + 1)),
        19 => new JsonObject { ["include_usage"] = RandomValue(random, depth + 1), ["lmcache.skip_save"] = RandomValue(random, depth + 1) },
        _ => new JsonArray(new JsonArray(RandomValue(random, depth + 1))),
    };

    /// <summary>Escapes that decode to invalid UTF-16, which JsonNode cannot write: written as placeholders, replaced in the text.</summary>
    private static readonly string[] LoneEscapes = ["\\ud800", "a\\udc00b", "\\ud83d", "\\udfff\\ud800", "\\u0000"];

    private static readonly string[] LonePlaceholders = [.. LoneEscapes.Select((_, i) => $"\u0001LONE{i}\u0001")];

    /// <summary>One to four structural mutations of a parsed seed: a value replaced, a field removed or added, nodes moved.</summary>
    private static byte[] MutateJson(Random random, List<byte[]> seeds)
    {
        try
        {
            return MutateJsonNodes(random, seeds);
        }
        catch (Exception e) when (e is InvalidOperationException or ArgumentException)
        {
            // A seed holding invalid UTF-16 or UTF-8 text (a corpus case), which JsonNode can neither enumerate nor write.
            return MutateBytes(random, seeds[random.Next(seeds.Count)]);
        }
    }

    private static byte[] MutateJsonNodes(Random random, List<byte[]> seeds)
    {
        JsonNode? root;
        try
        {
            root = JsonNode.Parse(seeds[random.Next(seeds.Count)]);
        }
        catch (JsonException)
        {
            return [.. seeds[random.Next(seeds.Count)]];
        }

        for (var m = random.Next(1, 5); m > 0; m--)
        {
            var all = new List<JsonNode>();
            Collect(root, all);
            if (all.Count == 0)
            {
                root = RandomValue(random);
                continue;
            }

            var target = all[random.Next(all.Count)];
            switch (random.Next(6))
            {
                case 0 when target.Parent is JsonObject parent: // replace a field's value
                    parent[target.GetPropertyName()] = RandomValue(random);
                    break;
                case 1 when target.Parent is JsonObject parent: // remove a field
                    parent.Remove(target.GetPropertyName());
                    break;
                case 2 when target is JsonObject o: // add a field, known or not
                    o[Names[random.Next(Names.Length)]] = RandomValue(random);
                    break;
                case 3 when target is JsonArray a: // add, remove or replace an element
                    if (a.Count > 0 && random.Next(2) == 0)
                    {
                        a.RemoveAt(random.Next(a.Count));
                    }
                    else
                    {
                        a.Insert(random.Next(a.Count + 1), RandomValue(random));
                    }

                    break;
                case 4 when target.Parent is JsonArray parent: // replace an element
                    parent[parent.IndexOf(target)] = RandomValue(random);
                    break;
                case 5: // wrap the whole body
                    root = random.Next(2) == 0 ? new JsonArray(root) : new JsonObject { ["body"] = root };
                    break;
            }
        }

        var text = root?.ToJsonString() ?? "null";

        for (var i = 0; i < LoneEscapes.Length; i++)
        {
            text = text.Replace($"\\u0001LONE{i}\\u0001", LoneEscapes[i], StringComparison.Ordinal);
        }

        var bytes = Encoding.UTF8.GetBytes(text);
        return random.Next(4) == 0 ? DuplicateField(random, bytes) : bytes;
    }

    private static void Collect(JsonNode? node, List<JsonNode> all)
    {
        if (node is null)
        {
            return;
        }

        all.Add(node);
        if (node is JsonObject o)
        {
            foreach (var (_, value) in o.ToList())
            {
                Collect(value, all);
            }
        }
        else if (node is JsonArray a)
        {
            foreach (var value in a.ToList())
            {
                Collect(value, all);
            }
        }
    }

    /// <summary>Inserts a field, often a duplicate, right after an object's opening brace (JsonNode cannot hold duplicates).</summary>
    private static byte[] DuplicateField(Random random, byte[] json)
    {
        var braces = Enumerable.Range(0, json.Length).Where(i => json[i] == '{').ToList();
        if (braces.Count == 0)
        {
            return json;
        }

        var at = braces[random.Next(braces.Count)] + 1;
        var field = $"{RawNames[random.Next(RawNames.Length)]}:{RandomValue(random)?.ToJsonString() ?? "null"},";
        if (json.Length > at && json[at] == '}')
        {
            field = field[..^1];
        }

        return [.. json.AsSpan(0, at), .. Encoding.UTF8.GetBytes(field), .. json.AsSpan(at)];
    }

    private static readonly byte[][] Tokens =
        [.. new[] { "\"", "\\", "\\u", "\\ud800", "{", "}", "[", "]", ":", ",", "null", "-", "e9", "0", "1e999", "\"\":", "\xC3", "\xED\xA0\x80", "\xFF" }
            .Select(t => t.Select(c => (byte)c).ToArray())];

    /// <summary>One to four byte-level mutations: bit flips, random bytes, JSON tokens and invalid UTF-8 inserted, truncation.</summary>
    private static byte[] MutateBytes(Random random, byte[] seed)
    {
        var data = new List<byte>(seed);
        for (var m = random.Next(1, 5); m > 0; m--)
        {
            var at = data.Count == 0 ? 0 : random.Next(data.Count);
            switch (random.Next(6))
            {
                case 0 when data.Count > 0:
                    data[at] ^= (byte)(1 << random.Next(8));
                    break;
                case 1 when data.Count > 0:
                    data[at] = (byte)random.Next(256);
                    break;
                case 2 when data.Count > 0:
                    data.RemoveRange(at, Math.Min(data.Count - at, random.Next(1, 9)));
                    break;
                case 3 when data.Count > 0:
                    data.RemoveRange(at, data.Count - at);
                    break;
                default:
                    data.InsertRange(at, Tokens[random.Next(Tokens.Length)]);
                    break;
            }
        }

        return [.. data];
    }

    /// <summary>FuzzCorpus/OpenAi next to this file in the source tree (found from the test binaries upwards).</summary>
    private static string CorpusDirectory
    {
        get
        {
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            {
                var corpus = Path.Join(dir.FullName, "tests", "LMCacheSharp.Serving.Tests", "FuzzCorpus", "OpenAi");
                if (Directory.Exists(corpus))
                {
                    return corpus;
                }
            }

            throw new DirectoryNotFoundException("tests/LMCacheSharp.Serving.Tests/FuzzCorpus/OpenAi not found above " + AppContext.BaseDirectory);
        }
    }

    private static string[] CorpusFiles() =>
        [.. Directory.GetFiles(CorpusDirectory).Where(f => f.EndsWith(".json", StringComparison.Ordinal) || f.EndsWith(".hex", StringComparison.Ordinal)).Order(StringComparer.Ordinal)];

    /// <summary>A <c>.json</c> file is the body as is; a <c>.hex</c> file is the body's bytes in hex (for bodies that are not UTF-8).</summary>
    private static byte[] ReadCorpusFile(string file) =>
        file.EndsWith(".hex", StringComparison.Ordinal) ? Convert.FromHexString(File.ReadAllText(file).Trim()) : File.ReadAllBytes(file);
}
