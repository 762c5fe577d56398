using System.Text.Json;
using LMCacheSharp.Serving.OpenAi;

namespace LMCacheSharp.Serving.Tests;

public sealed class JsonSchemaGrammarTests
{
    private static string Convert(string schema) => JsonSchemaGrammar.Convert(JsonDocument.Parse(schema).RootElement, "s");

    [Fact]
    public void An_object_lists_required_properties_first_then_optional_ones_each_behind_a_comma()
    {
        var g = Convert("""{"type":"object","properties":{"note":{"type":"string"},"age":{"type":"integer"}},"required":["age"]}""");
        Assert.StartsWith("root ::= r2\n", g, StringComparison.Ordinal);
        Assert.Contains("""r2 ::= "{" ws "\"age\"" ws ":" ws r1 (ws "," ws "\"note\"" ws ":" ws r0)? ws "}" """.TrimEnd(), g, StringComparison.Ordinal);
        Assert.Contains("r0 ::= string\n", g, StringComparison.Ordinal);
        Assert.Contains("r1 ::= integer\n", g, StringComparison.Ordinal);
    }

    [Fact]
    public void An_object_with_no_required_property_takes_any_subset_in_order()
    {
        var g = Convert("""{"type":"object","properties":{"a":{"type":"boolean"},"b":{"type":"null"}}}""");
        Assert.Contains("""(("\"a\"" ws ":" ws r0 (ws "," ws "\"b\"" ws ":" ws r1)?) | ("\"b\"" ws ":" ws r1))?""", g, StringComparison.Ordinal);
    }

    [Fact]
    public void Enum_const_nullable_anyOf_and_bounded_strings_and_arrays_become_alternatives_and_repetitions()
    {
        Assert.Contains("""r0 ::= "\"red\"" | "\"gr\\\"een\"" | "1" | "null" """.TrimEnd(), Convert("""{"enum":["red","gr\"een",1,null]}"""), StringComparison.Ordinal);
        Assert.Contains("""r0 ::= "{\"a\":[1,2]}" """.TrimEnd(), Convert("""{"const":{"a": [1, 2]}}"""), StringComparison.Ordinal);
        Assert.Contains("r0 ::= string | null\n", Convert("""{"type":"string","nullable":true}"""), StringComparison.Ordinal);
        Assert.Contains("r0 ::= string | null\n", Convert("""{"type":["string","null"]}"""), StringComparison.Ordinal);
        Assert.Contains("r2 ::= r0 | r1\n", Convert("""{"anyOf":[{"type":"integer"},{"type":"boolean"}]}"""), StringComparison.Ordinal);
        Assert.Contains("""r0 ::= "\"" char{2,5} "\"" """.TrimEnd(), Convert("""{"type":"string","minLength":2,"maxLength":5}"""), StringComparison.Ordinal);
        Assert.Contains("""r1 ::= "[" ws r0 (ws "," ws r0){0,2} ws "]" """.TrimEnd(), Convert("""{"type":"array","items":{"type":"number"},"minItems":1,"maxItems":3}"""),
            StringComparison.Ordinal);
        Assert.Contains("""r1 ::= "[" ws (r0 (ws "," ws r0){0,} ws)? "]" """.TrimEnd(), Convert("""{"type":"array","items":{"type":"number"}}"""), StringComparison.Ordinal);
        Assert.StartsWith("root ::= r0\nr0 ::= value\n", Convert("""{"title":"anything","description":"annotations are ignored"}"""), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("""{"type":"string","pattern":"^a+$"}""", "'pattern'")]
    [InlineData("""{"type":"string","format":"date"}""", "'format'")]
    [InlineData("""{"type":"integer","minimum":3}""", "'minimum'")]
    [InlineData("""{"$ref":"#/$defs/x"}""", "'$ref'")]
    [InlineData("""{"oneOf":[{"type":"integer"}]}""", "'oneOf'")]
    [InlineData("""{"type":"object","properties":{"a":{"type":"string"}},"additionalProperties":true}""", "additionalProperties")]
    [InlineData("""{"type":"object","properties":{"a":{"type":"string"}},"required":["b"]}""", "'b' is required")]
    [InlineData("""{"type":"date"}""", "unknown type")]
    [InlineData("""{"type":"string","maxLength":100000}""", "maxLength")]
    [InlineData("""{"type":"array","minItems":3,"maxItems":2}""", "maxItems is below minItems")]
    [InlineData("""{"enum":[]}""", "non-empty")]
    [InlineData("""[1]""", "must be an object")]
    public void Schemas_outside_the_subset_are_rejected_naming_response_format_and_the_keyword(string schema, string message)
    {
        var e = Assert.Throws<OpenAiRequestException>(() => Convert(schema));
        Assert.Equal("response_format", e.Param);
        Assert.Contains(message, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Nesting_deeper_than_the_limit_is_rejected()
    {
        var schema = string.Concat(Enumerable.Repeat("""{"type":"array","items":""", JsonSchemaGrammar.MaxDepth + 2)) + "{}" +
            new string('}', JsonSchemaGrammar.MaxDepth + 2);
        var e = Assert.Throws<OpenAiRequestException>(() => Convert(schema));
        Assert.Contains("nested deeper", e.Message, StringComparison.Ordinal);
    }
}
