"""Ordered, optionally multi-process map (dataset generators, graph building).

Results come back in input order whatever the number of workers, and every
job draws its randomness from its own seed, so a dataset is identical for
``workers=1`` and ``workers=N`` (and so is its cache key). Workers are
*spawned* (not forked: the parent may hold JAX/OpenMP state) and limit their
BLAS/OpenMP pools to one thread each.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator

__all__ = ["ordered_map"]


def _init(preload: tuple[str, ...]) -> None:
    for mod in preload:
        try:
            importlib.import_module(mod)
        except ImportError:
            pass
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=1)  # worker-process-wide; the process is ours


def ordered_map(fn: Callable, items: Iterable, workers: int = 1,
                preload: tuple[str, ...] = ()) -> Iterator:
    """Lazily yield ``fn(item)`` in input order using ``workers`` processes.

    ``fn`` must be a module-level function (picklable). Stopping iteration
    early terminates the pool.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    ctx = mp.get_context("spawn")
    pool = ctx.Pool(workers, initializer=_init, initargs=(tuple(preload),))
    try:
        yield from pool.imap(fn, items, chunksize=1)
    finally:
        pool.terminate()
        pool.join()
