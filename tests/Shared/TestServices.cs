namespace LMCacheSharp.Tests.Shared;

/// <summary>
/// The servers that .ci/services starts for integration tests (redis-server, a Redis cluster): their URLs come from
/// environment variables or from the file .ci/services writes. Compiled into each test project that needs it.
/// </summary>
internal static class TestServices
{
    /// <summary>The URL named <paramref name="name"/> (e.g. LMCACHE_TEST_REDIS_URL), or null when the service is not running.</summary>
    public static string? Url(string name)
    {
        if (Environment.GetEnvironmentVariable(name) is { Length: > 0 } fromEnvironment)
        {
            return fromEnvironment;
        }

        var file = Environment.GetEnvironmentVariable("LMCACHE_TEST_SERVICES_FILE") ?? "/tmp/lmcache-test-services.env";
        return File.Exists(file)
            ? File.ReadAllLines(file).Select(l => l.Split('=', 2)).Where(p => p.Length == 2 && p[0] == name).Select(p => p[1].Trim()).FirstOrDefault()
            : null;
    }
}
