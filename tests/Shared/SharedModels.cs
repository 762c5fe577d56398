using System.Security.Cryptography;

namespace LMCacheSharp.Tests.Shared;

/// <summary>The trained models in ../shared/models (beside the repository), found at run time and checked by sha256; never copied into the project.</summary>
internal static class SharedModels
{
    public const string Stories260KSha256 = "270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d";

    /// <summary>../shared/models/stories260K.gguf when present with the right sha256, else null and why.</summary>
    public static string? Stories260K(out string reason)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (!File.Exists(Path.Combine(dir.FullName, "LMCacheSharp.slnx")))
            {
                continue;
            }

            var path = Path.GetFullPath(Path.Combine(dir.FullName, "..", "shared", "models", "stories260K.gguf"));
            if (!File.Exists(path))
            {
                reason = $"stories260K.gguf not found at {path}";
                return null;
            }

            using var stream = File.OpenRead(path);
            var sha = Convert.ToHexStringLower(SHA256.HashData(stream));
            if (sha != Stories260KSha256)
            {
                reason = $"{path} has sha256 {sha}, expected {Stories260KSha256}";
                return null;
            }

            reason = "";
            return path;
        }

        reason = "repository root (LMCacheSharp.slnx) not found above " + AppContext.BaseDirectory;
        return null;
    }
}
