"""Label a batch: store first, compute only what is missing, store each result as it lands.

:func:`label_structures` looks every structure up in the :class:`LabelStore`, submits the
missing ones (each distinct structure once) to an executor at most ``config.workers`` at a
time, and writes every result — label or recorded failure — to the store the moment it
completes, so an interrupted batch loses nothing already computed. On a failure with policy
``"stop"``, or an unexpected exception in a worker, nothing more is submitted, the calculations
in flight are awaited and stored, then the error is raised.

:func:`label_one` is the worker: it builds the oracle from the (picklable) config wherever it
runs and labels one structure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait

from ase import Atoms

from ntkal.datasets._errors import LabellingError
from ntkal.datasets.oracles import LabellingFailure
from ntkal.labelling.config import OracleConfig
from ntkal.labelling.executor import make_executor
from ntkal.labelling.oracle import build_oracle
from ntkal.labelling.store import LabelStore, structure_hash, with_labels

__all__ = ["LabelOutcome", "label_structures", "label_one", "as_oracle"]


@dataclasses.dataclass(frozen=True, eq=False)
class LabelOutcome:
    """Result of :func:`label_structures`, aligned with its input.

    Attributes:
      atoms: per input position, a labelled copy (energy eV, raw forces ``(n_atoms, 3)`` eV/Å in
        a SinglePointCalculator; constraints, tags and ``info`` of the input kept) or ``None``
        where labelling failed.
      failures: one :class:`~ntkal.datasets.LabellingFailure` per failed input position
        (``index`` = that position), in input order.
      from_store: input positions labelled from the store.
      computed: input positions labelled by the oracle in this call (a structure listed twice
        is computed once and counts twice).
      failed: input positions that failed (now or in an earlier run).
        ``from_store + computed + failed == len(atoms)``.
    """
    atoms: list[Atoms | None]
    failures: list[LabellingFailure]
    from_store: int
    computed: int
    failed: int

    @property
    def indices(self) -> list[int]:
        """Input positions that were labelled."""
        return [i for i, a in enumerate(self.atoms) if a is not None]

    @property
    def labelled(self) -> list[Atoms]:
        """The labelled structures, in input order, without the failures."""
        return [a for a in self.atoms if a is not None]


def label_one(config: OracleConfig, atoms: Atoms, index: int = 0) -> Atoms | LabellingFailure:
    """Worker: label ``atoms`` with the oracle of ``config`` (built here, ``1 + retries``
    attempts). Returns a labelled copy or a :class:`LabellingFailure` with ``index``; raises
    on exceptions outside ``config.retry_on``."""
    directory = os.path.join(config.scratch, structure_hash(atoms)[:16]) if config.scratch else None
    return build_oracle(config, directory=directory).label_one(atoms, index)


def label_structures(atoms_list: Sequence[Atoms], config: OracleConfig, store: LabelStore, *,
                     executor: Executor | None = None, progress: bool = False) -> LabelOutcome:
    """Label ``atoms_list`` with the oracle of ``config``, reusing and filling ``store``.

    Args:
      atoms_list: structures (positions Å); existing labels on them are ignored.
      config: the oracle; its fingerprint keys the store.
      store: where labels and failures are looked up and recorded (written only here).
      executor: run calculations here; default: :func:`make_executor(config)
        <ntkal.labelling.executor.make_executor>`, opened only if something must be computed.
      progress: show a tqdm bar over the structures computed.

    Returns:
      :class:`LabelOutcome`, in input order whatever the completion order.

    Raises:
      LabellingError: policy ``"stop"`` and a structure failed (now or in an earlier run); the
        failure and every completed label are stored first.
      Exception: the first exception outside ``config.retry_on`` raised by a worker (not
        recorded as a failure, so a rerun tries that structure again), after the calculations
        in flight were stored.
    """
    atoms_list = list(atoms_list)
    fp = config.fingerprint()
    out: list[Atoms | None] = [None] * len(atoms_list)
    failures: dict[int, LabellingFailure] = {}
    groups: dict[str, list[int]] = {}  # structure hash → input positions, to compute
    from_store = 0
    for i, atoms in enumerate(atoms_list):
        key = structure_hash(atoms)
        if key in groups:
            groups[key].append(i)
            continue
        hit = store.get(atoms, fp)
        if hit is not None:
            out[i] = hit
            from_store += 1
            continue
        record = store.failure(atoms, fp)
        if record is None:
            groups[key] = [i]
            continue
        failures[i] = LabellingFailure(i, record.attempts, record.error)
        if config.on_failure == "stop":
            raise LabellingError(i, record.attempts, f"(recorded in {store.path}) {record.error}")

    computed = 0
    if groups:
        scope = contextlib.nullcontext(executor) if executor is not None else make_executor(config)
        with scope as ex:
            computed = _compute(ex, atoms_list, groups, config, fp, store, out, failures, progress)
    return LabelOutcome(out, [failures[i] for i in sorted(failures)], from_store, computed, len(failures))


def _compute(ex: Executor, atoms_list: list[Atoms], groups: dict[str, list[int]], config: OracleConfig,
             fp: str, store: LabelStore, out: list, failures: dict, progress: bool) -> int:
    """Submit ``groups`` at most ``config.workers`` at a time, storing results as they complete;
    fills ``out`` and ``failures`` and returns the number of input positions computed."""
    todo = iter(groups.values())
    pending: dict[Future, list[int]] = {}
    fatal: BaseException | None = None
    stop: LabellingFailure | None = None
    computed = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(groups), desc=f"labelling ({config.name})", unit="structure")
    try:
        while True:
            while fatal is None and stop is None and len(pending) < config.workers:
                idx = next(todo, None)
                if idx is None:
                    break
                # a copy: drops any attached calculator, which may not pickle
                pending[ex.submit(label_one, config, atoms_list[idx[0]].copy(), idx[0])] = idx
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                idx = pending.pop(future)
                first = atoms_list[idx[0]]
                if bar is not None:
                    bar.update(1)
                try:
                    result = future.result()
                except Exception as err:
                    if fatal is None:
                        err.add_note(f"while labelling structure {idx[0]} with oracle {config.name!r}")
                        fatal = err
                    continue
                if isinstance(result, LabellingFailure):
                    store.put_failure(first, fp, result.error, result.attempts)
                    for j in idx:
                        failures[j] = LabellingFailure(j, result.attempts, result.error)
                    if config.on_failure == "stop" and stop is None:
                        stop = failures[idx[0]]
                    continue
                results = result.calc.results
                labelled = with_labels(first, results["energy"], results["forces"], result.info)
                store.put(labelled, fp)
                for j in idx:
                    out[j] = labelled if j == idx[0] else with_labels(
                        atoms_list[j], results["energy"], results["forces"], result.info)
                computed += len(idx)
    finally:
        if bar is not None:
            bar.close()
    if fatal is not None:
        raise fatal
    if stop is not None:
        raise LabellingError(stop.index, stop.attempts, stop.error)
    return computed


def as_oracle(config: OracleConfig, store: LabelStore, *, executor: Executor | None = None,
              progress: bool = False) -> Callable[[Sequence[Atoms]], LabelOutcome]:
    """``oracle(atoms_list) -> LabelOutcome``: :func:`label_structures` with everything but the
    structures fixed (one call per active-learning round). Pass a long-lived ``executor`` (from
    :func:`~ntkal.labelling.executor.make_executor`) to keep a pool or cluster across rounds."""
    return functools.partial(label_structures, config=config, store=store, executor=executor,
                             progress=progress)
