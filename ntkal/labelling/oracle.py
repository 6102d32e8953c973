"""An :class:`OracleConfig` → the existing :class:`~ntkal.datasets.oracles.Oracle` (runs in workers).

:func:`build_oracle` imports the calculator (or function) named by the config and wraps it in
an ``Oracle`` with a ladder of ``1 + retries`` fresh-calculator steps, so every executor —
this process, a spawned pool, a Dask worker on another machine — labels the same way.
A plain function oracle is adapted to an ASE calculator by :class:`FunctionCalculator`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from ntkal.datasets.oracles import XTB_LADDER, Oracle, RetryStep, emt_oracle, xtb_oracle
from ntkal.labelling.config import SHORTCUTS, OracleConfig, resolve_import

__all__ = ["build_oracle", "FunctionCalculator", "ladder_for"]


class FunctionCalculator(Calculator):
    """ASE calculator around ``fn(atoms, **kwargs)``.

    ``fn`` returns ``(energy, forces)`` — energy in eV, forces ``(n_atoms, 3)`` in eV/Å — or an
    ``ase.Atoms`` with those results attached (its raw, unconstrained forces are used). It gets a
    copy of the structure. A wrong return shape raises ``ValueError`` (not retried).
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, fn: Callable[..., Any], name: str = "function", **kwargs):
        super().__init__()
        self.fn = fn
        self.fn_name = name
        self.fn_kwargs = kwargs

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        out = self.fn(self.atoms.copy(), **self.fn_kwargs)
        if isinstance(out, Atoms):
            energy, forces = out.get_potential_energy(), out.get_forces(apply_constraint=False)
        elif isinstance(out, tuple) and len(out) == 2:
            energy, forces = out
        else:
            raise ValueError(f"oracle function {self.fn_name!r} must return (energy, forces) or "
                             f"ase.Atoms, got {type(out).__name__}")
        forces = np.asarray(forces, dtype=np.float64)
        if forces.shape != (len(self.atoms), 3):
            raise ValueError(f"oracle function {self.fn_name!r} returned forces of shape "
                             f"{forces.shape}, expected ({len(self.atoms)}, 3)")
        energy = float(np.asarray(energy).reshape(()))
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}


@dataclasses.dataclass(frozen=True)
class _Factory:
    """``make_calculator(**step_params)``: ``build(**kwargs, **step_params)``, step params winning."""
    build: Callable[..., Calculator]
    kwargs: dict[str, Any]

    def __call__(self, **step_params) -> Calculator:
        calc = self.build(**{**self.kwargs, **step_params})
        if not hasattr(calc, "get_property"):  # ase Calculator or BaseCalculator
            raise TypeError(f"oracle calculator {self.build!r} returned {type(calc).__name__}, "
                            f"not an ASE calculator")
        return calc


def ladder_for(config: OracleConfig) -> tuple[RetryStep, ...]:
    """``1 + retries`` steps: ``default`` then fresh calculators (``xtb``: :data:`XTB_LADDER` first)."""
    n = 1 + config.retries
    base = XTB_LADDER if config.calculator == "xtb" else (RetryStep("default"),)
    steps = list(base[:n])
    steps += [RetryStep(f"retry{i}") for i in range(len(steps), n)]
    return tuple(steps)


def _with_directories(ladder: tuple[RetryStep, ...], base: str) -> tuple[RetryStep, ...]:
    return tuple(dataclasses.replace(s, params={**s.params, "directory": os.path.join(base, f"{i}-{s.name}")})
                 for i, s in enumerate(ladder))


def build_oracle(config: OracleConfig, *, directory: str | None = None) -> Oracle:
    """The :class:`Oracle` described by ``config`` (imports the calculator here).

    Args:
      config: the oracle configuration.
      directory: if given (calculators only), step ``i`` gets ``directory=<directory>/<i>-<step>``.

    Raises:
      ImportError: the calculator/function/exception path does not resolve (clear message).
    """
    retry_on = tuple(_exception(p) for p in config.retry_on)
    ladder = ladder_for(config)
    if directory is not None and config.calculator:
        ladder = _with_directories(ladder, directory)
    kwargs = config.kwargs_dict()
    if config.function:
        fn = resolve_import(config.function, "oracle function")
        if not callable(fn):
            raise TypeError(f"oracle function {config.function!r} is not callable")
        make = _Factory(FunctionCalculator, {"fn": fn, "name": config.function, **kwargs})
        return Oracle(make, config.name, ladder=ladder, retry_on=retry_on)
    build = resolve_import(SHORTCUTS.get(config.calculator, config.calculator))
    if not callable(build):
        raise TypeError(f"oracle calculator {config.calculator!r} is not callable")
    if config.calculator == "xtb":  # tblite checks, OMP warning and the 1-thread limit
        kwargs = {"method": "GFN2-xTB", "verbosity": 0, **kwargs}
        base = xtb_oracle(kwargs["method"], ladder=ladder)
    elif config.calculator == "emt":
        base = emt_oracle()
    else:
        base = Oracle(build, config.name)
    return dataclasses.replace(base, make_calculator=_Factory(build, kwargs), name=config.name,
                               ladder=ladder, retry_on=retry_on)


def _exception(path: str) -> type[BaseException]:
    exc = resolve_import(path, "oracle retry_on")
    if not (isinstance(exc, type) and issubclass(exc, BaseException)):
        raise TypeError(f"oracle retry_on {path!r} is not an exception class")
    return exc
