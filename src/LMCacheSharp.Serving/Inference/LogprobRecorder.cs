namespace LMCacheSharp.Serving.Inference;

/// <summary>One of the most likely tokens at a position, with its log probability.</summary>
/// <param name="Token">The token id.</param>
/// <param name="Logprob">Natural log of its probability under the model's raw distribution.</param>
public readonly record struct TopLogprob(int Token, float Logprob);

/// <summary>The log probability of one generated token, with the most likely alternatives at its position.</summary>
/// <param name="Token">The generated token id.</param>
/// <param name="Logprob">Natural log of its probability under the model's raw distribution (before logit_bias, penalties,
/// grammar, top-k/top-p/min-p and temperature: OpenAI's and vLLM's default).</param>
/// <param name="TextOffset">Characters of generated text before this token (UTF-16 code units of the completion text).</param>
/// <param name="Top">The most likely tokens at this position, most likely first (as many as asked for; empty when none).</param>
public readonly record struct TokenLogprob(int Token, float Logprob, int TextOffset, TopLogprob[] Top);

/// <summary>
/// Computes a request's logprobs on the inference thread: a log-softmax over the whole vocabulary of the logits the token
/// was sampled from, and the top alternatives by a partial selection (no sort of the vocabulary). Entries wait until the
/// text they produced has been released by the stop-string filter, so a stream's logprobs arrive with their text and the
/// tokens of a stop string are never reported.
/// </summary>
internal sealed class LogprobRecorder(int top)
{
    private readonly List<TokenLogprob> _pending = [];
    private readonly int[] _topIds = new int[top];
    private readonly float[] _topLogits = new float[top];
    private float _logSum;
    private int _found;

    /// <summary>Reads the distribution at one position: call before sampling from <paramref name="logits"/>.</summary>
    public void Prepare(ReadOnlySpan<float> logits)
    {
        var max = float.NegativeInfinity;
        foreach (var l in logits)
        {
            max = Math.Max(max, l);
        }

        double sum = 0;
        foreach (var l in logits)
        {
            sum += Math.Exp(l - max);
        }

        _logSum = max + (float)Math.Log(sum);

        // Top-k by insertion into a small sorted array: O(vocab x k) worst case, k <= 20, no allocation.
        _found = 0;
        for (var t = 0; t < logits.Length; t++)
        {
            var l = logits[t];
            if (_found == _topIds.Length && (_found == 0 || l <= _topLogits[_found - 1]))
            {
                continue;
            }

            var at = Math.Min(_found, _topIds.Length - 1);
            while (at > 0 && _topLogits[at - 1] < l)
            {
                _topLogits[at] = _topLogits[at - 1];
                _topIds[at] = _topIds[at - 1];
                at--;
            }

            _topLogits[at] = l;
            _topIds[at] = t;
            _found = Math.Min(_found + 1, _topIds.Length);
        }
    }

    /// <summary>Records the token sampled at the position last <see cref="Prepare"/>d.</summary>
    public void Record(int token, ReadOnlySpan<float> logits, int textOffset)
    {
        var alternatives = _found == 0 ? [] : new TopLogprob[_found];
        for (var i = 0; i < alternatives.Length; i++)
        {
            alternatives[i] = new TopLogprob(_topIds[i], _topLogits[i] - _logSum);
        }

        _pending.Add(new TokenLogprob(token, logits[token] - _logSum, textOffset, alternatives));
    }

    /// <summary>Takes the entries whose text starts before <paramref name="releasedChars"/> (all of them when null); null when there are none.</summary>
    public TokenLogprob[]? Take(int? releasedChars)
    {
        var n = 0;
        while (n < _pending.Count && (releasedChars is not { } r || _pending[n].TextOffset < r))
        {
            n++;
        }

        if (n == 0)
        {
            return null;
        }

        var taken = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_pending)[..n].ToArray();
        _pending.RemoveRange(0, n);
        return taken;
    }
}
