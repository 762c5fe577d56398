using System.IO.Compression;
using System.Xml.Linq;

namespace LMCacheSharp.Cli.Tests;

/// <summary>The library packages .ci/run packs (artifacts/packages): their metadata, readme, symbols and dependencies.</summary>
public sealed class LibraryPackageTests
{
    public static TheoryData<string> Libraries =>
        ["LMCacheSharp.Core", "LMCacheSharp.Protocol", "LMCacheSharp.Remote", "LMCacheSharp.LlamaCpp", "LMCacheSharp.Serving", "LMCacheSharp.Server"];

    [Theory]
    [MemberData(nameof(Libraries))]
    public void Each_library_packs_with_its_readme_license_repository_docs_and_symbols(string id)
    {
        var (path, version) = Artifacts.RequirePackage(id);
        using var package = ZipFile.OpenRead(path);
        var nuspec = Nuspec(package, id);
        XNamespace ns = nuspec.Root!.Name.Namespace;
        var metadata = nuspec.Root.Element(ns + "metadata")!;
        Assert.Equal(id, metadata.Element(ns + "id")?.Value);
        Assert.Equal("MIT", metadata.Element(ns + "license")?.Value);
        Assert.Equal("LMCacheSharp contributors", metadata.Element(ns + "authors")?.Value);
        Assert.False(string.IsNullOrWhiteSpace(metadata.Element(ns + "description")?.Value));
        Assert.Equal("README.md", metadata.Element(ns + "readme")?.Value);
        Assert.NotNull(package.GetEntry("README.md"));
        var repository = metadata.Element(ns + "repository");
        Assert.NotNull(repository);
        Assert.Equal("git", repository.Attribute("type")?.Value);
        Assert.Matches("^[0-9a-f]{40}$", repository.Attribute("commit")?.Value ?? ""); // the exact source, from git
        Assert.NotNull(package.GetEntry($"lib/net10.0/{id}.dll"));
        Assert.NotNull(package.GetEntry($"lib/net10.0/{id}.xml")); // doc comments for users' IntelliSense
        Assert.DoesNotContain(package.Entries, e => e.FullName.EndsWith(".so", StringComparison.Ordinal) || e.FullName.EndsWith(".dll", StringComparison.Ordinal) && !e.FullName.StartsWith("lib/", StringComparison.Ordinal));

        var symbols = Path.ChangeExtension(path, ".snupkg");
        Assert.True(File.Exists(symbols), $"no symbol package {symbols}");
        using var snupkg = ZipFile.OpenRead(symbols);
        Assert.NotNull(snupkg.GetEntry($"lib/net10.0/{id}.pdb"));
        Assert.False(string.IsNullOrEmpty(version));
    }

    [Fact]
    public void LlamaCpp_passes_the_cpu_backend_on_with_the_build_files_that_copy_its_native_libraries()
    {
        var (path, _) = Artifacts.RequirePackage("LMCacheSharp.LlamaCpp");
        using var package = ZipFile.OpenRead(path);
        var nuspec = Nuspec(package, "LMCacheSharp.LlamaCpp");
        var backend = nuspec.Descendants().Single(e => e.Name.LocalName == "dependency" && e.Attribute("id")?.Value == "LLamaSharp.Backend.Cpu");
        // LLamaSharp.Backend.Cpu copies runtimes/ through its build/ props: a consumer that excluded Build would get no llama.cpp.
        Assert.DoesNotContain("Build", backend.Attribute("exclude")?.Value ?? "", StringComparison.Ordinal);
    }

    private static XDocument Nuspec(ZipArchive package, string id)
    {
        using var stream = package.GetEntry(id + ".nuspec")!.Open();
        return XDocument.Load(stream);
    }
}
