"""Labelling oracles: wrap any ASE calculator, retry SCF failures, never drop.

An oracle turns unlabelled structures into labelled copies
(``label(atoms_list) -> list[Atoms]``), attaching energy (eV) and raw forces
(n_atoms, 3) eV/Å (constraints *not* applied) through a
:class:`~ase.calculators.singlepoint.SinglePointCalculator`.

Retry ladder. Each structure is tried with the steps of ``oracle.ladder`` in
order; every step builds a *fresh* calculator ``make_calculator(**params)``.
For GFN2-xTB (:func:`xtb_oracle`) the ladder is the one measured on 35k
T1x-like calls (see the module notes):

1. ``default``  - GFN2-xTB defaults;
2. ``fresh``    - a fresh calculator (clears a poisoned SCF guess);
3. ``damped``   - ``mixer_damping=0.2``, ``max_iterations=500``;
4. ``hot``      - additionally ``electronic_temperature=1000`` K. Energies shift
   by ~0.2 eV, so frames labelled here carry ``info["labelling_flag"] =
   "electronic_temperature_1000K"``; filter them if that matters.

A structure that fails every step is *reported*: :meth:`Oracle.label` raises
:class:`LabellingError` (with its index), :meth:`Oracle.label_with_failures`
returns it in a failures list. Non-finite energies or forces count as failures.

Threads: tblite's default OpenMP threading was measured ~1000x slower on small
molecules (17x on a loaded 2-core box). Oracles with ``max_threads`` set
(:func:`xtb_oracle` uses 1) run each calculation inside
``threadpoolctl.threadpool_limits(max_threads)`` - scoped to the call, no
global mutation. Without ``threadpoolctl`` set ``OMP_NUM_THREADS=1`` in the
environment *before* ``tblite`` is imported (``experiments/generate_data.py``
does); :func:`xtb_oracle` then warns if it is not set. Nothing here mutates
the environment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, CalculationFailed
from ase.calculators.singlepoint import SinglePointCalculator

from ntkal.datasets._errors import LabellingError

__all__ = ["Oracle", "RetryStep", "LabellingFailure", "LabelResult", "emt_oracle",
           "xtb_oracle", "calculator_oracle", "XTB_LADDER"]


@dataclasses.dataclass(frozen=True)
class RetryStep:
    """One rung of the retry ladder.

    Attributes:
      name: reported in ``info["labelling_attempt"]`` and in failures.
      params: keyword overrides passed to ``make_calculator``.
      flag: if set, stored in ``info["labelling_flag"]`` of frames labelled here.
    """
    name: str
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    flag: str | None = None


@dataclasses.dataclass(frozen=True)
class LabellingFailure:
    """A structure no ladder step could label: input ``index``, steps tried, last error."""
    index: int
    attempts: tuple[str, ...]
    error: str


class LabelResult(NamedTuple):
    """Output of :meth:`Oracle.label_with_failures`.

    Attributes:
      atoms: labelled copies, in input order, of the structures that succeeded.
      indices: their positions in the input list.
      failures: one :class:`LabellingFailure` per structure that did not.
    """
    atoms: list[Atoms]
    indices: list[int]
    failures: list[LabellingFailure]


_CONTROLLER = []  # lazily built threadpoolctl.ThreadpoolController (enumerating libs is ~5 ms)


@contextlib.contextmanager
def _thread_limit(n: int | None):
    """Scoped BLAS/OpenMP thread limit (no-op if ``n`` is None or no threadpoolctl)."""
    if n is None:
        yield
        return
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        ThreadpoolController = None
    if ThreadpoolController is None:
        yield
        return
    if not _CONTROLLER:
        _CONTROLLER.append(ThreadpoolController())
    with _CONTROLLER[0].limit(limits=n):
        yield


XTB_LADDER: tuple[RetryStep, ...] = (
    RetryStep("default"),
    RetryStep("fresh"),
    RetryStep("damped", {"mixer_damping": 0.2, "max_iterations": 500}),
    RetryStep("hot", {"mixer_damping": 0.2, "max_iterations": 500,
                      "electronic_temperature": 1000.0}, flag="electronic_temperature_1000K"),
)


@dataclasses.dataclass(frozen=True)
class Oracle:
    """Labels structures with fresh ASE calculators and a retry ladder.

    Attributes:
      make_calculator: ``make_calculator(**params) -> Calculator``; called once
        per ladder step per structure (calculators are never shared).
      name: stored in ``info["oracle"]``.
      ladder: retry steps, tried in order.
      retry_on: exception types treated as (retryable) SCF failures; anything
        else propagates immediately (a bug, not a convergence problem).
      compute_forces: False for energy-only labels.
      max_threads: if set, BLAS/OpenMP pools are limited to this many threads
        during each calculation (needs ``threadpoolctl``; no-op without it).
    """
    make_calculator: Callable[..., Calculator]
    name: str
    ladder: tuple[RetryStep, ...] = (RetryStep("default"), RetryStep("fresh"))
    retry_on: tuple[type[BaseException], ...] = (CalculationFailed,)
    compute_forces: bool = True
    max_threads: int | None = None

    def label_one(self, atoms: Atoms, index: int = 0) -> Atoms | LabellingFailure:
        """Label one structure; returns a labelled copy or a failure record."""
        with _thread_limit(self.max_threads):
            return self._label_one(atoms, index)

    def _label_one(self, atoms: Atoms, index: int) -> Atoms | LabellingFailure:
        tried: list[str] = []
        last = ""
        for step in self.ladder:
            tried.append(step.name)
            work = atoms.copy()
            work.calc = self.make_calculator(**dict(step.params))
            try:
                e = float(work.get_potential_energy())
                f = work.get_forces(apply_constraint=False) if self.compute_forces else None
            except self.retry_on as err:
                last = f"{type(err).__name__}: {err}"
                continue
            if not np.isfinite(e) or (f is not None and not np.all(np.isfinite(f))):
                last = "non-finite energy or forces"
                continue
            out = atoms.copy()
            kw = {"energy": e, "free_energy": e}
            if f is not None:
                kw["forces"] = np.array(f, dtype=np.float64)
            out.calc = SinglePointCalculator(out, **kw)
            out.info["oracle"] = self.name
            out.info["labelling_attempt"] = step.name
            if step.flag is not None:
                out.info["labelling_flag"] = step.flag
            return out
        return LabellingFailure(index, tuple(tried), last)

    def label_with_failures(self, atoms_list: Sequence[Atoms]) -> LabelResult:
        """Label every structure, collecting (not raising) unrecoverable failures."""
        done, idx, failures = [], [], []
        with _thread_limit(self.max_threads):
            results = [self._label_one(a, i) for i, a in enumerate(atoms_list)]
        for i, r in enumerate(results):
            if isinstance(r, LabellingFailure):
                failures.append(r)
            else:
                done.append(r)
                idx.append(i)
        return LabelResult(done, idx, failures)

    def label(self, atoms_list: Sequence[Atoms]) -> list[Atoms]:
        """Label every structure; returns labelled copies in input order.

        Raises:
          LabellingError: for the first structure that fails every ladder step.
        """
        out = []
        with _thread_limit(self.max_threads):
            for i, a in enumerate(atoms_list):
                r = self._label_one(a, i)
                if isinstance(r, LabellingFailure):
                    raise LabellingError(r.index, r.attempts, r.error)
                out.append(r)
        return out

    __call__ = label


def calculator_oracle(make_calculator: Callable[..., Calculator], name: str, *,
                      ladder: tuple[RetryStep, ...] | None = None,
                      retry_on: tuple[type[BaseException], ...] = (CalculationFailed,),
                      compute_forces: bool = True, max_threads: int | None = None) -> Oracle:
    """Oracle around any ASE calculator factory (e.g. a user's DFT calculator).

    Example:
      >>> from ase.calculators.emt import EMT
      >>> oracle = calculator_oracle(lambda **kw: EMT(), "emt")
    """
    kw = {} if ladder is None else {"ladder": ladder}
    return Oracle(make_calculator, name, retry_on=retry_on, compute_forces=compute_forces,
                  max_threads=max_threads, **kw)


def emt_oracle() -> Oracle:
    """ASE's EMT (Al Cu Ag Au Ni Pd Pt; toy H C N O). Deterministic, never fails."""
    from ase.calculators.emt import EMT

    return Oracle(lambda **kw: EMT(**kw), "emt", ladder=(RetryStep("default"),))


def _make_tblite(method: str, **params) -> Calculator:
    from tblite.ase import TBLite

    return TBLite(method=method, verbosity=0, **params)


def xtb_oracle(method: str = "GFN2-xTB", *, ladder: tuple[RetryStep, ...] = XTB_LADDER) -> Oracle:
    """GFN2-xTB through ``tblite.ase.TBLite`` with the documented retry ladder.

    Raises:
      ImportError: if ``tblite`` is not installed (``pip install ntkal[xtb]``).
    """
    import importlib.util

    if importlib.util.find_spec("tblite") is None:
        raise ImportError("xtb_oracle needs tblite: pip install 'ntkal[xtb]' (tblite>=0.4)")
    import tblite.ase  # noqa: F401  (loads its OpenMP runtime so threadpoolctl can limit it)

    has_tpc = importlib.util.find_spec("threadpoolctl") is not None
    if not has_tpc and os.environ.get("OMP_NUM_THREADS") != "1":
        warnings.warn("OMP_NUM_THREADS is not 1: tblite's OpenMP threading is very slow on small "
                      "molecules; export OMP_NUM_THREADS=1 before importing tblite", stacklevel=2)
    return Oracle(lambda **kw: _make_tblite(method, **kw), method, ladder=ladder, max_threads=1)
