// Kept out of Fleet.cs, which tests/LMCacheSharp.Router.Tests links (an assembly attribute may appear once).
[assembly: CollectionBehavior(DisableTestParallelization = true)]
