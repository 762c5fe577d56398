using System.Runtime.InteropServices;
using LLama.Native;

namespace LMCacheSharp.LlamaCpp;

/// <summary>
/// Chooses the llama.cpp shared library that LLamaSharp loads. By default LLamaSharp picks the CPU build of
/// LLamaSharp.Backend.Cpu from the application's <c>runtimes/</c> folder (by the CPU's AVX level); <see cref="Use"/> names
/// another one instead: a CUDA, Metal or Vulkan build of the llama.cpp commit LLamaSharp 0.30 binds (c0c7e147), such as the
/// libllama of the LLamaSharp.Backend.Cuda12 0.30.0 package. A build of another commit may not match LLamaSharp's
/// structures and fail in ways no check here can see.
/// </summary>
public static class LlamaNativeLibrary
{
    // Exports every llama.cpp build of the last years has and no other library does.
    private static readonly string[] RequiredExports = ["llama_backend_init", "llama_model_load_from_file", "llama_decode"];

    /// <summary>Whether LLamaSharp has loaded its native library already (from then on the choice cannot change).</summary>
    public static bool HasLoaded => NativeLibraryConfig.LLama.LibraryHasLoaded;

    /// <summary>
    /// Every problem with <paramref name="path"/> as a llama.cpp library: missing, not loadable (a missing dependency such
    /// as the CUDA runtime), or loadable but without llama.cpp's API. Empty when it is usable. Loads the library to check.
    /// </summary>
    /// <param name="path">Path of libllama.so, llama.dll or libllama.dylib.</param>
    public static IReadOnlyList<string> GetErrors(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        var full = Path.GetFullPath(path);
        if (Directory.Exists(full))
        {
            return [$"{path} is a directory; name the library file in it (e.g. {Path.Combine(path, PlatformFileName)})"];
        }

        if (!File.Exists(full))
        {
            return [$"file not found: {path}"];
        }

        IntPtr handle;
        try
        {
            handle = NativeLibrary.Load(full);
        }
        catch (Exception e) when (e is DllNotFoundException or BadImageFormatException)
        {
            // The loader's own words (dlerror's line, last in .NET's message on Unix) name the missing dependency.
            var reason = e.Message.Trim();
            reason = reason[(reason.LastIndexOf('\n') + 1)..].Trim();
            return [$"{path} cannot be loaded as a shared library: {reason}"];
        }

        var missing = RequiredExports.Where(name => !NativeLibrary.TryGetExport(handle, name, out _)).ToList();
        if (missing.Count == 0)
        {
            return []; // stays loaded: LLamaSharp loads the same file again (a reference count, not a second copy)
        }

        NativeLibrary.Free(handle);
        return [$"{path} is not a llama.cpp library (it exports no {string.Join(", ", missing)})"];
    }

    /// <summary>
    /// Makes LLamaSharp load <paramref name="path"/> instead of its default choice, with no fallback to another library.
    /// Call before the first call into llama.cpp (loading a model, creating a context); check it with
    /// <see cref="GetErrors"/> first for messages that name the problem.
    /// </summary>
    /// <param name="path">Path of libllama.so, llama.dll or libllama.dylib; ggml's libraries are loaded from its directory.</param>
    /// <exception cref="InvalidOperationException">LLamaSharp has loaded a native library already.</exception>
    public static void Use(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (HasLoaded)
        {
            throw new InvalidOperationException("llama.cpp is loaded already: choose its library before the first model is loaded");
        }

        var full = Path.GetFullPath(path);
        NativeLibraryConfig.LLama.WithLibrary(full).WithAutoFallback(false);
    }

    /// <summary>
    /// Makes LLamaSharp take its default choice (the CPU build for this CPU) from the application's own folder
    /// (<see cref="AppContext.BaseDirectory"/>, where LLamaSharp.Backend.Cpu puts runtimes/). Without it LLamaSharp looks in
    /// the current directory's runtimes/ first, so a process started in a folder that holds another build loads that one.
    /// Call before the first call into llama.cpp; does nothing once a library is loaded.
    /// </summary>
    public static void PreferApplicationFolder()
    {
        if (!HasLoaded)
        {
            NativeLibraryConfig.LLama.WithSearchDirectory(AppContext.BaseDirectory);
        }
    }

    /// <summary>The llama.cpp library's file name on this platform: libllama.so, llama.dll or libllama.dylib.</summary>
    public static string PlatformFileName =>
        OperatingSystem.IsWindows() ? "llama.dll" : OperatingSystem.IsMacOS() ? "libllama.dylib" : "libllama.so";
}
