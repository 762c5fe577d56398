namespace LMCacheSharp.Router;

/// <summary>What one instance holds of a request's prompt, and its load, as a <see cref="ICacheLocator"/> found it.</summary>
/// <param name="Instance">The instance.</param>
/// <param name="Answered">False when it did not answer in time or failed: then nothing is known and it counts as holding nothing.</param>
/// <param name="CachedTokens">Leading prompt tokens in the instance's own memory tier.</param>
/// <param name="PromptTokens">The prompt's tokens as the instance tokenizes it (0 when not answered).</param>
/// <param name="Load">Its load at the time of the answer, or null.</param>
public readonly record struct CacheReport(RouterInstance Instance, bool Answered, int CachedTokens, int PromptTokens, InstanceLoad? Load);

/// <summary>
/// Where a request's prompt is cached, and how loaded each instance is: what kv-aware routing decides on. Without a
/// controller the router asks the instances themselves (<see cref="InstanceCacheLocator"/>: POST /lookup to each); a
/// controller's directory (<c>--controller URL</c>) is another implementation of the same question.
/// </summary>
public interface ICacheLocator
{
    /// <summary>
    /// One report per candidate, in the candidates' order. Never throws for an instance that fails or is slow: its report is
    /// not answered. Cancellation still throws.
    /// </summary>
    Task<IReadOnlyList<CacheReport>> LocateAsync(RoutingRequest request, IReadOnlyList<RouterInstance> candidates, CancellationToken cancellationToken);
}
