using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace LMCacheSharp.Serving.OpenAi;

/// <summary>
/// Turns OpenAI's <c>response_format</c> into a llama.cpp GBNF grammar (root rule <c>root</c>): <c>json_object</c> to any
/// JSON object, <c>json_schema</c> through <see cref="JsonSchemaGrammar"/>; <c>text</c> (or none) to no grammar.
/// </summary>
internal static class ResponseFormatGrammar
{
    /// <summary>The grammar <paramref name="body"/>'s response_format asks for, or null; an unsupported one is a 400 naming <c>response_format</c>.</summary>
    public static string? FromRequest(JsonElement body)
    {
        const string Param = "response_format";
        if (!body.TryGetProperty(Param, out var format) || format.ValueKind == JsonValueKind.Null)
        {
            return null;
        }

        if (format.ValueKind != JsonValueKind.Object || !format.TryGetProperty("type", out var type) || type.ValueKind != JsonValueKind.String)
        {
            throw new OpenAiRequestException("'response_format' must be an object with a 'type'", Param);
        }

        switch (OpenAiRequestParser.ReadString(type, Param))
        {
            case "text":
                return null;
            case "json_object":
                return JsonSchemaGrammar.AnyObject;
            case "json_schema":
                if (!format.TryGetProperty("json_schema", out var js) || js.ValueKind != JsonValueKind.Object)
                {
                    throw new OpenAiRequestException("'response_format.json_schema' is required for type json_schema and must be an object", Param);
                }

                if (!js.TryGetProperty("schema", out var schema) || schema.ValueKind == JsonValueKind.Null)
                {
                    return JsonSchemaGrammar.AnyValue; // OpenAI: no schema means any JSON
                }

                return JsonSchemaGrammar.Convert(schema, "response_format.json_schema.schema");
            case var other:
                throw new OpenAiRequestException($"'response_format.type' must be text, json_object or json_schema, got '{other}'", Param);
        }
    }
}

/// <summary>
/// A JSON Schema to GBNF converter for a documented subset (docs/serving.md): <c>type</c> (object, array, string, number,
/// integer, boolean, null, or a list of them), <c>properties</c>, <c>required</c>, <c>additionalProperties: false</c>,
/// <c>items</c>, <c>minItems</c>/<c>maxItems</c>, <c>minLength</c>/<c>maxLength</c>, <c>enum</c>, <c>const</c>,
/// <c>anyOf</c>, <c>nullable</c>; annotations (title, description, default, examples, ...) are ignored. Any other keyword
/// is rejected (<see cref="OpenAiRequestException"/> naming <c>response_format</c> and the keyword), never ignored: a
/// grammar that admits output the schema forbids would be a silent lie.
/// Output is compact JSON (at most one space between tokens); properties come in the schema's order, required ones first.
/// Numbers have at most 16 integer, 15 fraction and 3 exponent digits, so a model cannot run forever on one number.
/// </summary>
internal sealed class JsonSchemaGrammar
{
    /// <summary>Deepest schema nesting accepted.</summary>
    public const int MaxDepth = 32;

    /// <summary>Largest minItems/maxItems/minLength/maxLength accepted (llama.cpp refuses repetitions above 2000).</summary>
    public const int MaxRepetition = 1000;

    private const string Param = "response_format";

    private const string Primitives = """
        ws ::= [ ]?
        char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})
        string ::= "\"" char* "\""
        integer ::= "-"? ("0" | [1-9] [0-9]{0,15})
        number ::= integer ("." [0-9]{1,15})? ([eE] [-+]? [0-9]{1,3})?
        boolean ::= "true" | "false"
        null ::= "null"
        value ::= object | array | string | number | boolean | null
        object ::= "{" ws (string ws ":" ws value (ws "," ws string ws ":" ws value)* ws)? "}"
        array ::= "[" ws (value (ws "," ws value)* ws)? "]"

        """;

    /// <summary>Any JSON object (<c>json_object</c>).</summary>
    public static readonly string AnyObject = "root ::= object\n" + Primitives;

    /// <summary>Any JSON value.</summary>
    public static readonly string AnyValue = "root ::= value\n" + Primitives;

    private static readonly HashSet<string> Annotations = new(StringComparer.Ordinal)
    {
        "title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly", "writeOnly",
    };

    private static readonly HashSet<string> Understood = new(StringComparer.Ordinal)
    {
        "type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems", "minLength", "maxLength",
        "enum", "const", "anyOf", "nullable",
    };

    // Compact JSON with only the escapes JSON requires, so that literals read as written in the schema.
    private static readonly JsonSerializerOptions Compact = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    private readonly StringBuilder _rules = new();
    private int _next;

    private JsonSchemaGrammar()
    {
    }

    /// <summary>The GBNF grammar of <paramref name="schema"/>; <paramref name="where"/> names it in error messages.</summary>
    public static string Convert(JsonElement schema, string where)
    {
        var converter = new JsonSchemaGrammar();
        var root = converter.Rule(schema, where, 0);
        return "root ::= " + root + "\n" + converter._rules + Primitives;
    }

    private static OpenAiRequestException Unsupported(string where, string message) =>
        new($"'{where}': {message} (supported: see docs/serving.md, response_format)", Param);

    /// <summary>A rule name (or primitive) matching <paramref name="schema"/>.</summary>
    private string Rule(JsonElement schema, string where, int depth)
    {
        if (depth > MaxDepth)
        {
            throw Unsupported(where, $"schemas nested deeper than {MaxDepth} levels are not supported");
        }

        if (schema.ValueKind == JsonValueKind.True)
        {
            return "value";
        }

        if (schema.ValueKind != JsonValueKind.Object)
        {
            throw Unsupported(where, "a schema must be an object (or true)");
        }

        foreach (var p in schema.EnumerateObject())
        {
            if (!Understood.Contains(p.Name) && !Annotations.Contains(p.Name))
            {
                throw Unsupported(where, $"the keyword '{p.Name}' is not supported");
            }
        }

        var nullable = schema.TryGetProperty("nullable", out var n) && n.ValueKind == JsonValueKind.True;
        string body;
        if (schema.TryGetProperty("const", out var constant))
        {
            body = Literal(constant);
        }
        else if (schema.TryGetProperty("enum", out var values))
        {
            if (values.ValueKind != JsonValueKind.Array || values.GetArrayLength() == 0)
            {
                throw Unsupported(where + ".enum", "must be a non-empty list");
            }

            body = string.Join(" | ", values.EnumerateArray().Select(Literal));
        }
        else if (schema.TryGetProperty("anyOf", out var anyOf))
        {
            if (anyOf.ValueKind != JsonValueKind.Array || anyOf.GetArrayLength() == 0)
            {
                throw Unsupported(where + ".anyOf", "must be a non-empty list of schemas");
            }

            body = string.Join(" | ", anyOf.EnumerateArray().Select((s, i) => Rule(s, $"{where}.anyOf[{i}]", depth + 1)));
        }
        else if (schema.TryGetProperty("type", out var type))
        {
            var types = type.ValueKind switch
            {
                JsonValueKind.String => [type.GetString()!],
                JsonValueKind.Array when type.GetArrayLength() > 0 && type.EnumerateArray().All(t => t.ValueKind == JsonValueKind.String) =>
                    type.EnumerateArray().Select(t => t.GetString()!).ToList(),
                _ => throw Unsupported(where + ".type", "must be a type name or a non-empty list of them"),
            };
            body = string.Join(" | ", types.Distinct().Select(t => TypeRule(t, schema, where, depth)));
        }
        else
        {
            body = "value"; // {}: any JSON
        }

        if (nullable)
        {
            body += " | null";
        }

        var name = "r" + (_next++).ToString(CultureInfo.InvariantCulture);
        _rules.Append(name).Append(" ::= ").Append(body).Append('\n');
        return name;
    }

    private string TypeRule(string type, JsonElement schema, string where, int depth)
    {
        switch (type)
        {
            case "string":
                var min = Count(schema, "minLength", where) ?? 0;
                var max = Count(schema, "maxLength", where);
                if (max < min)
                {
                    throw Unsupported(where, "maxLength is below minLength");
                }

                return min == 0 && max is null ? "string" : $"\"\\\"\" char{{{min},{max?.ToString(CultureInfo.InvariantCulture)}}} \"\\\"\"";
            case "number":
                return "number";
            case "integer":
                return "integer";
            case "boolean":
                return "boolean";
            case "null":
                return "null";
            case "array":
                return ArrayRule(schema, where, depth);
            case "object":
                return ObjectRule(schema, where, depth);
            default:
                throw Unsupported(where + ".type", $"unknown type '{type}'");
        }
    }

    private string ArrayRule(JsonElement schema, string where, int depth)
    {
        var item = schema.TryGetProperty("items", out var items) ? Rule(items, where + ".items", depth + 1) : "value";
        var min = Count(schema, "minItems", where) ?? 0;
        var max = Count(schema, "maxItems", where);
        if (max < min)
        {
            throw Unsupported(where, "maxItems is below minItems");
        }

        if (max == 0)
        {
            return "\"[\" ws \"]\"";
        }

        // item (, item){min-1, max-1}; optional as a whole when min is 0.
        var restMin = Math.Max(0, min - 1);
        var restMax = max is { } m ? (m - 1).ToString(CultureInfo.InvariantCulture) : "";
        var list = $"{item} (ws \",\" ws {item}){{{restMin},{restMax}}}";
        return min == 0 ? $"\"[\" ws ({list} ws)? \"]\"" : $"\"[\" ws {list} ws \"]\"";
    }

    private string ObjectRule(JsonElement schema, string where, int depth)
    {
        var hasProperties = schema.TryGetProperty("properties", out var properties) && properties.ValueKind != JsonValueKind.Null;
        if (schema.TryGetProperty("additionalProperties", out var additional) && additional.ValueKind != JsonValueKind.False &&
            !(additional.ValueKind == JsonValueKind.True && !hasProperties))
        {
            throw Unsupported(where + ".additionalProperties", "only false is supported (or true with no properties)");
        }

        if (!hasProperties)
        {
            return additional.ValueKind == JsonValueKind.False ? "\"{\" ws \"}\"" : "object";
        }

        if (properties.ValueKind != JsonValueKind.Object)
        {
            throw Unsupported(where + ".properties", "must be an object");
        }

        var required = new HashSet<string>(StringComparer.Ordinal);
        if (schema.TryGetProperty("required", out var req))
        {
            if (req.ValueKind != JsonValueKind.Array || !req.EnumerateArray().All(r => r.ValueKind == JsonValueKind.String))
            {
                throw Unsupported(where + ".required", "must be a list of property names");
            }

            required.UnionWith(req.EnumerateArray().Select(r => r.GetString()!));
        }

        var pairs = new List<(string Name, string Pair)>();
        foreach (var p in properties.EnumerateObject())
        {
            var value = Rule(p.Value, $"{where}.properties.{p.Name}", depth + 1);
            pairs.Add((p.Name, $"{Literal(JsonValue.Create(p.Name).ToJsonString(Compact))} ws \":\" ws {value}"));
        }

        var missing = required.FirstOrDefault(r => pairs.All(p => p.Name != r));
        if (missing is not null)
        {
            throw Unsupported(where + ".required", $"'{missing}' is required but not among the properties");
        }

        var mandatory = pairs.Where(p => required.Contains(p.Name)).Select(p => p.Pair).ToList();
        var optional = pairs.Where(p => !required.Contains(p.Name)).Select(p => p.Pair).ToList();
        var sb = new StringBuilder("\"{\" ws ");
        if (mandatory.Count > 0)
        {
            sb.Append(string.Join(" ws \",\" ws ", mandatory));
            foreach (var o in optional)
            {
                sb.Append(" (ws \",\" ws ").Append(o).Append(")?");
            }
        }
        else if (optional.Count > 0)
        {
            // None required: the first present property has no comma before it. Alternatives by which one comes first.
            var alternatives = new List<string>();
            for (var i = 0; i < optional.Count; i++)
            {
                var alt = new StringBuilder(optional[i]);
                for (var j = i + 1; j < optional.Count; j++)
                {
                    alt.Append(" (ws \",\" ws ").Append(optional[j]).Append(")?");
                }

                alternatives.Add(alt.ToString());
            }

            sb.Append("((").Append(string.Join(") | (", alternatives)).Append("))?");
        }

        sb.Append(" ws \"}\"");
        return sb.ToString();
    }

    private static int? Count(JsonElement schema, string name, string where)
    {
        if (!schema.TryGetProperty(name, out var v))
        {
            return null;
        }

        return v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out var n) && n is >= 0 and <= MaxRepetition
            ? n
            : throw Unsupported(where + "." + name, $"must be an integer between 0 and {MaxRepetition}");
    }

    /// <summary>A GBNF literal matching exactly the compact JSON text of <paramref name="value"/>.</summary>
    private static string Literal(JsonElement value) => Literal(JsonNode.Parse(value.GetRawText())?.ToJsonString(Compact) ?? "null");

    /// <summary>A GBNF string literal matching exactly <paramref name="text"/>.</summary>
    private static string Literal(string text)
    {
        var sb = new StringBuilder("\"");
        foreach (var c in text)
        {
            switch (c)
            {
                case '"':
                    sb.Append("\\\"");
                    break;
                case '\\':
                    sb.Append("\\\\");
                    break;
                case '\n':
                    sb.Append("\\n");
                    break;
                case '\r':
                    sb.Append("\\r");
                    break;
                case '\t':
                    sb.Append("\\t");
                    break;
                case < ' ':
                    sb.Append("\\x").Append(((int)c).ToString("X2", CultureInfo.InvariantCulture));
                    break;
                default:
                    sb.Append(c);
                    break;
            }
        }

        return sb.Append('"').ToString();
    }
}
