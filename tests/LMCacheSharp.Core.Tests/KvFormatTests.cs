using LMCacheSharp.Core.Kv;

namespace LMCacheSharp.Core.Tests;

public class KvFormatTests
{
    [Fact]
    public void Bytes_per_token_does_not_wrap_when_k_plus_v_is_over_int_max()
    {
        var format = new KvFormat(1, int.MaxValue, int.MaxValue, KvDataType.F16, KvLayout.LayerKV);
        Assert.Equal(2L * int.MaxValue, format.BytesPerToken);
    }

    [Fact]
    public void A_payload_length_over_64_bits_is_clamped_never_wrapped()
    {
        // 4096 layers x 2^32 bytes x 2^31 tokens is 2^75: a wrapped product could equal a small real length.
        var format = new KvFormat(4096, int.MaxValue, int.MaxValue, KvDataType.F16, KvLayout.LayerKV);
        Assert.Equal(long.MaxValue, format.PayloadLength(int.MaxValue));
        Assert.Throws<ArgumentOutOfRangeException>(() => format.PayloadLength(-1));
    }

    [Fact]
    public void Validate_rejects_rows_over_one_gibibyte()
    {
        Assert.Throws<ArgumentException>(() => new KvFormat(1, (1 << 30) + 1, 64, KvDataType.F16, KvLayout.LayerKV).Validate());
        new KvFormat(1, 1 << 30, 1 << 30, KvDataType.F16, KvLayout.LayerKV).Validate();
    }
}
