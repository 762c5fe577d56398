using LMCacheSharp.Fuzz;
using SharpFuzz;

// LMCacheSharp.Fuzz TARGET [--libfuzzer | --seeds DIR | FILE...]
//   TARGET: frames, envelope or openai.
//   no option: the afl++ out-of-process loop (run under afl-fuzz with the LMCacheSharp assemblies instrumented by
//   sharpfuzz; see scripts/fuzz.sh). --libfuzzer: the libFuzzer loop (under SharpFuzz's libfuzzer-dotnet driver).
//   --seeds DIR: writes the target's valid seed inputs to DIR. FILE...: runs the target once on each file and says
//   which ones fail (to triage afl's crashes without afl).
if (args.Length == 0 || FuzzTargets.Find(args[0]) is not { } target)
{
    Console.Error.WriteLine($"usage: LMCacheSharp.Fuzz {{{string.Join('|', FuzzTargets.Names)}}} [--libfuzzer | --seeds DIR | FILE...]");
    return 2;
}

if (args.Length == 1)
{
    Fuzzer.OutOfProcess.Run(stream =>
    {
        using var copy = new MemoryStream();
        stream.CopyTo(copy);
        target(copy.GetBuffer().AsSpan(0, (int)copy.Length));
    });
    return 0;
}

if (args[1] == "--libfuzzer")
{
    Fuzzer.LibFuzzer.Run(span => target(span));
    return 0;
}

if (args[1] == "--seeds" && args.Length == 3)
{
    Directory.CreateDirectory(args[2]);
    var n = 0;
    foreach (var seed in FuzzTargets.Seeds(args[0]))
    {
        File.WriteAllBytes(Path.Join(args[2], $"seed-{n++:D3}"), seed);
    }

    Console.WriteLine($"{n} seeds written to {args[2]}");
    return 0;
}

var failed = 0;
foreach (var file in args.Skip(1))
{
    try
    {
        target(File.ReadAllBytes(file));
    }
    catch (Exception e)
    {
        failed++;
        Console.WriteLine($"{file}: {e.GetType().Name}: {e.Message}");
    }
}

Console.WriteLine($"{args.Length - 1 - failed} passed, {failed} failed");
return failed == 0 ? 0 : 1;
