using System.Text;

namespace LMCacheSharp.Router.Tests;

public sealed class UsageTapTests
{
    private const string Stream =
        "data: {\"choices\":[{\"text\":\"a\"}]}\n\n" +
        "data: {\"choices\":[{\"text\":\"\",\"finish_reason\":\"length\"}],\"timings\":{}}\n\n" +
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":40,\"completion_tokens\":2,\"prompt_tokens_details\":{\"cached_tokens\":32}}}\n\n" +
        "data: [DONE]\n\n";

    [Fact]
    public async Task A_streams_usage_chunk_is_found_however_the_writes_split_it_and_the_bytes_pass_unchanged()
    {
        var bytes = Encoding.UTF8.GetBytes(Stream);
        for (var split = 0; split <= bytes.Length; split++)
        {
            using var client = new MemoryStream();
            var tap = new UsageTap(client, streamed: true);
            await tap.WriteAsync(bytes.AsMemory(0, split));
            await tap.WriteAsync(bytes.AsMemory(split));
            Assert.Equal((40, 32), tap.ReadUsage());
            Assert.Equal(bytes, client.ToArray());
        }
    }

    [Fact]
    public async Task Only_the_end_of_a_long_stream_is_kept()
    {
        using var client = new MemoryStream();
        var tap = new UsageTap(client, streamed: true);
        var filler = Encoding.UTF8.GetBytes("data: {\"choices\":[{\"text\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}]}\n\n");
        for (var i = 0; i < 2000; i++)
        {
            await tap.WriteAsync(filler);
        }

        await tap.WriteAsync(Encoding.UTF8.GetBytes(Stream));
        Assert.Equal((40, 32), tap.ReadUsage());
        Assert.Equal(2000 * filler.Length + Stream.Length, client.Length);
    }

    [Fact]
    public async Task A_non_streamed_body_is_parsed_whole_and_a_stream_without_usage_has_none()
    {
        using var client = new MemoryStream();
        var whole = new UsageTap(client, streamed: false);
        var json = Encoding.UTF8.GetBytes("{\"id\":\"x\",\"usage\":{\"prompt_tokens\":7,\"prompt_tokens_details\":{\"cached_tokens\":3}}}");
        await whole.WriteAsync(json.AsMemory(0, 10));
        await whole.WriteAsync(json.AsMemory(10));
        Assert.Equal((7, 3), whole.ReadUsage());

        var none = new UsageTap(client, streamed: true);
        await none.WriteAsync(Encoding.UTF8.GetBytes("data: {\"choices\":[]}\n\ndata: [DONE]\n\n"));
        Assert.Null(none.ReadUsage());
        var broken = new UsageTap(client, streamed: false);
        await broken.WriteAsync(Encoding.UTF8.GetBytes("{\"usage\": "));
        Assert.Null(broken.ReadUsage());
    }
}
