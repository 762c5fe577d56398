using System.Security.Cryptography;
using LLama;
using LMCacheSharp.LlamaCpp.Gguf;

namespace LMCacheSharp.LlamaCpp.Tests;

public sealed class GgufModelWriterTests
{
    [Theory]
    [InlineData(GgmlTensorType.F16)]
    [InlineData(GgmlTensorType.Q8_0)]
    public void WritesAModelLlamaCppLoadsWithTheRequestedShape(GgmlTensorType type)
    {
        var spec = new LlamaModelSpec(3, 96, 6, 2, 160, 700, 512, type, 5);
        var path = TestModels.Get(spec);
        using var model = new LlamaTestModel(path, flashAttention: false);
        var handle = model.Handle.ModelHandle;
        Assert.Equal(3, handle.LayerCount);
        Assert.Equal(96, handle.EmbeddingSize);
        Assert.Equal(6, handle.HeadCount);
        Assert.Equal(2, handle.KVHeadCount);
        Assert.Equal(700, handle.Vocab.Count);
        Assert.Equal(512, handle.ContextSize);
        Assert.Equal((ulong)spec.ParameterCount, handle.ParameterCount);
        Assert.Equal(1, (int)handle.Vocab.BOS!.Value);
        Assert.Equal(2, (int)handle.Vocab.EOS!.Value);
    }

    [Theory]
    [InlineData("Hello world, the quick brown fox!")]
    [InlineData("Ünïcödé, emoji 🦙 and CJK 漢字 fall back to byte tokens.")]
    [InlineData("tabs\tand\nnewlines   and  spaces")]
    public void AnyTextTokenizesAndDetokenizesBack(string text)
    {
        using var model = new LlamaTestModel(TestModels.Get(TestModels.Mha(GgmlTensorType.F16)), flashAttention: false);
        var tokens = model.Context.Tokenize(text, addBos: false);
        Assert.NotEmpty(tokens);
        Assert.DoesNotContain(tokens, t => (int)t == GgufModelWriter.UnknownToken);
        var decoder = new StreamingTokenDecoder(model.Context);
        decoder.AddRange(tokens);
        Assert.Equal(text, decoder.Read().TrimStart(' '));
    }

    [Fact]
    public void TheSameSpecAndSeedGiveTheSameBytesAndAnotherSeedDoesNot()
    {
        var dir = Directory.CreateTempSubdirectory("lmcache-gguf-").FullName;
        try
        {
            var spec = new LlamaModelSpec(1, 64, 2, 2, 64, 300, 256, GgmlTensorType.Q8_0, 1);
            var a = Path.Combine(dir, "a.gguf");
            var b = Path.Combine(dir, "b.gguf");
            var c = Path.Combine(dir, "c.gguf");
            var reported = new List<(long Done, long Total)>();
            var length = GgufModelWriter.Write(spec, a, (done, total) => reported.Add((done, total)));
            GgufModelWriter.Write(spec, b);
            GgufModelWriter.Write(spec with { Seed = 2 }, c);
            Assert.Equal(new FileInfo(a).Length, length);
            Assert.Equal(length, reported[^1].Done);
            Assert.Equal(Hash(a), Hash(b));
            Assert.NotEqual(Hash(a), Hash(c));
            Assert.Empty(Directory.GetFiles(dir, "*.tmp-*"));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void ThePresetsHaveTheDocumentedSizes()
    {
        Assert.InRange(LlamaModelSpec.FromPreset("bench").ParameterCount, 200_000_000, 240_000_000);
        Assert.InRange(LlamaModelSpec.FromPreset("tiny").ParameterCount, 50_000, 500_000);
        Assert.Empty(LlamaModelSpec.FromPreset("small", GgmlTensorType.Q8_0).GetErrors());
        Assert.Throws<ArgumentException>(() => LlamaModelSpec.FromPreset("huge"));
    }

    [Fact]
    public void BadShapesAreRefusedWithClearMessages()
    {
        var errors = new LlamaModelSpec(0, 100, 3, 2, 50, 100, 8, GgmlTensorType.Q8_0).GetErrors();
        Assert.Contains(errors, e => e.Contains("--layers", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.Contains("--kv-heads", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.Contains("--vocab", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.Contains("--ctx", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.Contains("q8_0", StringComparison.Ordinal));
        Assert.Throws<ArgumentException>(() => GgufModelWriter.Write(new LlamaModelSpec(1, 64, 3, 1, 64, 300, 64), Path.Combine(Path.GetTempPath(), "never.gguf")));
    }

    private static string Hash(string path)
    {
        using var s = File.OpenRead(path);
        return Convert.ToHexString(SHA256.HashData(s));
    }
}
