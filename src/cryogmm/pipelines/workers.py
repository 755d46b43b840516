"""Worker processes (the ab initio restarts, the refinement's batches), started before they are needed.

A spawned worker takes about half a second to start Python, import cryogmm and load the compiled
restart kernels from numba's cache; `cryogmm abinitio` and `cryogmm demo` therefore start their
workers first, and the workers get ready while the main process imports its own modules and
reads or simulates the images. This module imports only the standard library, so that starting
the pool costs the main process nothing to speak of.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


class WorkerPool:
    """`workers` spawned processes, started now; each imports `module` and runs its `warm_up()`.

    Spawned, not forked: the parent's numba threads (OpenMP) do not survive a fork. The cores are
    shared out between the workers, BLAS included: its threads, read from the environment when a
    worker imports numpy, would otherwise spin against the other worker's (2.5 times slower
    restarts measured on 2 cores). A context manager: leaving it waits for the workers to end
    (`close`); `end` terminates them at once (Ctrl-C, a failed restart, bad input).
    """

    def __init__(self, workers: int, module: str = "cryogmm.pipelines.abinitio") -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        threads = max(1, (os.cpu_count() or 1) // workers)
        saved = {name: os.environ.get(name) for name in _THREAD_VARIABLES}
        os.environ.update({name: str(threads) for name in _THREAD_VARIABLES})
        try:
            self.executor = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=init_worker, initargs=(threads, module))
            # the executor spawns a worker at each submit while it has fewer than `workers`: all are
            # started (with this environment) before it is restored
            with sigint_ignored():
                for _ in range(workers):
                    self.executor.submit(_ready)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def submit(self, function, *args, **kwargs):
        with sigint_ignored():
            return self.executor.submit(function, *args, **kwargs)

    def end(self) -> None:
        """Terminate the workers now (SIGTERM) and wait for them; a second Ctrl-C cannot break it off."""
        with sigint_ignored():
            end_workers(self.executor)
            self.executor.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self.executor.shutdown(wait=True)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        if kind is None:
            self.close()
        else:
            self.end()
        return False


def _ready() -> None:
    """A task that makes the executor start a worker."""


def init_worker(n_threads: int, module: str | None = None) -> None:
    """A worker's set-up: SIGINT ignored, `n_threads` numba threads, `module` imported and its
    `warm_up()` run if it has one."""
    # Ctrl-C is for the main process, which ends the workers (a terminal sends SIGINT to all)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import numba
    from tqdm.auto import tqdm

    # tqdm's default lock is a multiprocessing lock, a named semaphore that a worker ended by
    # SIGTERM could not release ("leaked semaphore objects"); a worker draws no bars
    tqdm.set_lock(threading.RLock())
    numba.set_num_threads(min(n_threads, numba.config.NUMBA_NUM_THREADS))
    if module is not None:
        warm_up = getattr(importlib.import_module(module), "warm_up", None)
        if warm_up is not None:
            warm_up()


@contextlib.contextmanager
def sigint_ignored():
    """SIGINT ignored in this process for the duration (main thread only; elsewhere a no-op).

    Processes started meanwhile keep it ignored from their first instruction (an ignored signal
    stays ignored across exec), so Ctrl-C cannot interrupt a spawned worker while it imports,
    before `init_worker` runs. A Ctrl-C that falls in these few milliseconds is lost.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def end_workers(executor) -> None:
    """Terminate the worker processes of a ProcessPoolExecutor at once (SIGTERM); before Python
    3.14 the executor offers this only through its private `_processes`."""
    terminate = getattr(executor, "terminate_workers", None)  # Python 3.14+
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        if process.is_alive():
            process.terminate()
