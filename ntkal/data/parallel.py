"""Ordered multi-process maps: :func:`ordered_map` (dataset generators, graph building) and
:func:`structures_parallel` (neighbour lists are the host-side bottleneck).

:func:`ordered_map` gives results in input order whatever the number of workers; a job that
draws its randomness from its own seed then gives the same result for ``workers=1`` and
``workers=N`` (so a generated dataset, and its cache key, do not depend on ``workers``).
Workers are *spawned* (not forked: the parent may hold JAX/OpenMP state) and limit their
BLAS/OpenMP pools to one thread each. This module imports no JAX (only the validation and
neighbour-list modules of :mod:`ntkal.data`), so a spawned worker loads only what its jobs need.

:func:`structures_parallel` gives exactly ``[atoms_to_structure(a, ...) for a in atoms]``
(same order, same arrays), using ``workers`` spawned processes for large inputs. A structure
that fails validation is re-validated in the calling process, so the error raised is the very
:class:`~ntkal.data.InvalidStructureError` the serial path raises (file, frame, reason).
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Sequence

import ase

from ntkal.data.structure import Structure, atoms_to_structure

__all__ = ["ordered_map", "structures_parallel", "default_workers"]

#: Below this many structures the serial path is used (spawning workers costs ~1–2 s).
MIN_PARALLEL = 4000


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

    Args:
      fn: a module-level function (picklable).
      items: its arguments (picklable), consumed as the workers need them.
      workers: processes; ``1`` or fewer = in this process, no pool.
      preload: modules every worker imports when it starts.

    Stopping the iteration early (``close()`` or dropping the iterator) terminates the pool.
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


def default_workers() -> int:
    """Usable CPU cores (the scheduler's affinity mask where available)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


def _graph_batch(job):
    start, atoms, cutoff, elements, require_labels = job
    out = []
    for k, a in enumerate(atoms):
        try:
            out.append(atoms_to_structure(a, cutoff, index=start + k, elements=elements,
                                          require_labels=require_labels))
        except Exception:  # re-raised, identically, by the caller
            return start + k, out
    return None, out


def structures_parallel(atoms: Sequence[ase.Atoms], cutoff: float, *, elements=None,
                        require_labels: bool = False, workers: int | None = None,
                        batch: int = 512) -> list[Structure]:
    """Validate and graph every structure of ``atoms`` (see :func:`atoms_to_structure`).

    Args:
      atoms: the structures (a sequence: it is sliced into batches).
      cutoff: neighbour cutoff (Å).
      elements: atomic numbers the model knows.
      require_labels: every structure must carry an energy.
      workers: processes; ``None`` = :func:`default_workers`; ``1`` (or fewer than
        :data:`MIN_PARALLEL` structures) = serial, in this process.
      batch: structures per job.

    Returns:
      One :class:`~ntkal.data.Structure` per input, in input order.
    """
    workers = default_workers() if workers is None else int(workers)
    if workers <= 1 or len(atoms) < MIN_PARALLEL:
        return [atoms_to_structure(a, cutoff, index=i, elements=elements, require_labels=require_labels)
                for i, a in enumerate(atoms)]
    jobs = [(s, list(atoms[s:s + batch]), float(cutoff), elements, require_labels)
            for s in range(0, len(atoms), batch)]
    out: list[Structure] = []
    for failed, part in ordered_map(_graph_batch, jobs, workers, preload=("ntkal.data.structure",)):
        out.extend(part)
        if failed is not None:  # the serial call raises the exact error
            atoms_to_structure(atoms[failed], cutoff, index=failed, elements=elements,
                               require_labels=require_labels)
            raise RuntimeError(f"structure {failed} failed in a worker but not here")
    return out
