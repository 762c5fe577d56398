namespace LMCacheSharp.Serving;

/// <summary>How far a step of start-up work has come (<see cref="ServingOptions.Progress"/>).</summary>
/// <param name="Stage">What is being done, e.g. "loading the model".</param>
/// <param name="Fraction">Done so far, 0..1; 1 when the stage is finished.</param>
public readonly record struct StartupProgress(string Stage, double Fraction);
