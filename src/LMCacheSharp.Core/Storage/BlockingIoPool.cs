using System.Collections.Concurrent;

namespace LMCacheSharp.Core.Storage;

/// <summary>
/// A few dedicated threads for blocking file I/O, so that an async caller never ties up a thread-pool thread (or the
/// inference thread) while a disk read or write runs. Work waits in a queue for a free thread; a work item whose caller
/// cancelled before it started is skipped. Work that already started runs to its end (a read hands its result to the
/// caller, who then owns it).
/// </summary>
internal sealed class BlockingIoPool : IDisposable
{
    private readonly BlockingCollection<Action> _work = [];
    private readonly Thread[] _threads;

    /// <summary>Starts <paramref name="threads"/> background threads named <paramref name="name"/>.</summary>
    public BlockingIoPool(string name, int threads)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(threads, 1);
        _threads = new Thread[threads];
        for (var i = 0; i < threads; i++)
        {
            _threads[i] = new Thread(Loop) { IsBackground = true, Name = $"{name}-{i}" };
            _threads[i].Start();
        }
    }

    /// <summary>Runs <paramref name="work"/> on one of the pool's threads.</summary>
    public Task<T> RunAsync<T>(Func<T> work, CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        var done = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        void Run()
        {
            if (cancellationToken.IsCancellationRequested)
            {
                done.TrySetCanceled(cancellationToken);
                return;
            }

            try
            {
                done.TrySetResult(work());
            }
            catch (Exception e)
            {
                done.TrySetException(e);
            }
        }

        try
        {
            _work.Add(Run, CancellationToken.None);
        }
        catch (InvalidOperationException)
        {
            throw new ObjectDisposedException(nameof(BlockingIoPool));
        }

        return done.Task;
    }

    /// <summary>Lets queued work finish, then stops the threads.</summary>
    public void Dispose()
    {
        _work.CompleteAdding();
        foreach (var thread in _threads)
        {
            thread.Join(TimeSpan.FromSeconds(10));
        }

        _work.Dispose();
    }

    private void Loop()
    {
        foreach (var item in _work.GetConsumingEnumerable())
        {
            item();
        }
    }
}
