"""What labels a structure, where it runs, what happens on failure (JAX-free).

:class:`OracleConfig` is the ``[oracle]`` table of a run's TOML file::

    [oracle]
    calculator = "ase.calculators.espresso:Espresso"   # or "emt", "xtb", or function = "pkg.mod:f"
    kwargs = { pseudopotentials = { Cu = "Cu.pbe.UPF" }, kpts = [4, 4, 1] }
    executor = "dask"                                   # implied by scheduler
    scheduler = "tcp://head-node:8786"
    workers = 16                                        # calculations in flight at once
    retries = 1
    on_failure = "skip"
    store = "labels.db"

Everything here is a plain, hashable, picklable value: process pools and Dask workers receive
the config and build the calculator themselves (:func:`ntkal.labelling.oracle.build_oracle`).
Importing this module imports neither JAX nor the calculator.
"""

from __future__ import annotations

import builtins
import dataclasses
import datetime
import hashlib
import importlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["OracleConfig", "resolve_import", "EXECUTORS", "ON_FAILURE", "SHORTCUTS"]

#: ``executor`` values ("" in the constructor means "dask" if ``scheduler`` is set, else "process").
EXECUTORS = ("process", "thread", "serial", "dask")
#: ``on_failure`` values.
ON_FAILURE = ("skip", "stop")
#: ``calculator`` shortcuts → the class they build (kwargs are passed to it).
SHORTCUTS = {"emt": "ase.calculators.emt:EMT", "xtb": "tblite.ase:TBLite"}

_CALCULATION_FAILED = "ase.calculators.calculator:CalculationFailed"
_SCALARS = (str, int, float, bool, datetime.date, datetime.time)  # datetime is a date


class _FrozenMapping(tuple):
    """A mapping frozen as a key-sorted tuple of ``(key, value)`` pairs (hashable, picklable)."""

    __slots__ = ()


def _freeze(value: Any, where: str) -> Any:
    """TOML/JSON value → hashable: tables become :class:`_FrozenMapping`, arrays tuples."""
    if isinstance(value, Mapping):
        items = []
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"[oracle] {where}: keys must be strings, got {k!r}")
            items.append((k, _freeze(v, f"{where}.{k}")))
        return _FrozenMapping(sorted(items))
    if isinstance(value, (list, tuple)) and not isinstance(value, _FrozenMapping):
        return tuple(_freeze(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, _FrozenMapping) or value is None or isinstance(value, _SCALARS):
        return value
    raise ValueError(f"[oracle] {where}: unsupported value {value!r} of type {type(value).__name__} "
                     f"(use TOML values: strings, numbers, booleans, dates, arrays, tables)")


def _thaw(value: Any) -> Any:
    """Inverse of :func:`_freeze`: tables back to dicts, arrays to lists."""
    if isinstance(value, _FrozenMapping):
        return {k: _thaw(v) for k, v in value}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def resolve_import(path: str, role: str = "oracle calculator") -> Any:
    """The object named by ``"package.module:Name"`` (``Name`` may be dotted: ``Class.factory``).

    A bare name without ``:`` is looked up among the builtins (``"RuntimeError"``).

    Raises:
      ImportError: with ``role`` and ``path`` in the message, e.g.
        ``"oracle calculator 'foo.bar:Baz': module foo.bar not found"``.
    """
    if ":" not in path:
        if path.isidentifier() and hasattr(builtins, path):
            return getattr(builtins, path)
        raise ImportError(f"{role} {path!r}: expected an import path 'package.module:Name'")
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ImportError(f"{role} {path!r}: expected an import path 'package.module:Name'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
            raise ImportError(f"{role} {path!r}: module {module_name} not found (is it installed, or on "
                              f"PYTHONPATH? `ntkal` also looks in the current folder)") from err
        raise ImportError(f"{role} {path!r}: importing module {module_name} failed: {err}") from err
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"{role} {path!r}: module {module_name} has no attribute {attr}") from None
    return obj


@dataclasses.dataclass(frozen=True)
class OracleConfig:
    """How structures are labelled (energy in eV, forces in eV/Å).

    Attributes:
      calculator: ``"emt"``, ``"xtb"`` (GFN2-xTB through ``tblite``; the first ``1 + retries``
        steps of :data:`~ntkal.datasets.oracles.XTB_LADDER`), or an import path
        ``"package.module:Name"`` of an ASE calculator class or of any callable returning an
        ASE ``Calculator`` (``"ase.calculators.emt:EMT"``, ``"tblite.ase:TBLite"``). It is
        called as ``Name(**kwargs)`` once per attempt (calculators are never reused).
      function: instead of ``calculator``: ``"package.module:f"`` with
        ``f(atoms, **kwargs) -> (energy_eV, forces_eV_per_A)`` (forces ``(n_atoms, 3)``) or
        ``-> ase.Atoms`` carrying those results. Exactly one of the two is set. Raise
        ``ase.calculators.calculator.CalculationFailed`` for a (retryable) failed calculation.
      kwargs: keyword arguments of the calculator / function (a TOML inline table). Stored
        frozen (tables as key-sorted pairs, arrays as tuples) so the config is hashable;
        :meth:`kwargs_dict` gives them back as dicts and lists.
      executor: ``"process"`` (a spawned process pool: isolates the calculator from the JAX
        parent, and a crashing Fortran code only breaks the pool), ``"thread"``, ``"serial"``
        (in this process, one at a time) or ``"dask"`` (a ``distributed`` cluster at
        ``scheduler``). ``""`` = ``"dask"`` if ``scheduler`` is set, else ``"process"``.
      workers: calculations in flight at once (pool size; for Dask the number of tasks
        submitted at a time — set it to the cluster's capacity). Default 1 because a DFT code
        normally parallelises itself over the whole machine (MPI/OpenMP) and two at once on one
        node only oversubscribe it; raise it for cheap single-threaded oracles or a cluster.
      scheduler: a Dask scheduler address (``"tcp://host:8786"``); implies ``executor="dask"``.
        Workers there need ntkal and the calculator installed.
      retries: extra attempts, each with a fresh calculator, after the first (default 1).
      retry_on: exception classes (import paths; builtins by bare name) that mark a failed
        calculation, which is retried and finally recorded as failed. Any other exception is
        a bug or a broken setup: it stops the run and is *not* recorded, so a rerun tries again.
      on_failure: ``"skip"`` (a structure failing every attempt is recorded as failed, returned
        as ``None`` and never offered to the oracle again) or ``"stop"`` (recorded, then
        :class:`~ntkal.datasets.LabellingError` is raised, also for failures recorded earlier).
      store: path of the label store (SQLite, ``ase.db``); ``""`` = the caller decides
        (e.g. ``<run dir>/labels.db``).
      scratch: if set (calculators only), attempt ``i`` of a structure runs with
        ``directory=<scratch>/<structure hash[:16]>/<i>-<step>``: file-based ASE calculators
        (VASP, Quantum ESPRESSO, ...) write there, so parallel workers never share files and a
        retry never restarts from a failed attempt's files. Not part of the fingerprint.
      tag: free text folded into :meth:`fingerprint`: change it when something outside this
        table changes the labels (code version, pseudopotential library, environment).
    """

    calculator: str = ""
    function: str = ""
    kwargs: tuple[tuple[str, Any], ...] = ()
    executor: str = ""
    workers: int = 1
    scheduler: str = ""
    retries: int = 1
    retry_on: tuple[str, ...] = (_CALCULATION_FAILED,)
    on_failure: str = "skip"
    store: str = ""
    scratch: str = ""
    tag: str = ""

    def __post_init__(self):
        for name in ("calculator", "function", "executor", "scheduler", "on_failure", "store",
                     "scratch", "tag"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"[oracle] {name} must be a string, got {getattr(self, name)!r}")
        if bool(self.calculator) == bool(self.function):
            raise ValueError("[oracle] set exactly one of calculator (an ASE calculator: 'emt', 'xtb' "
                             "or 'package.module:Name') and function ('package.module:f')")
        if self.calculator and self.calculator not in SHORTCUTS:
            _check_path(self.calculator, "calculator",
                        f"{', '.join(repr(s) for s in SHORTCUTS)} or an import path 'package.module:Name'")
        if self.function:
            _check_path(self.function, "function", "an import path 'package.module:f'")
        if not isinstance(self.kwargs, _FrozenMapping):
            kwargs = self.kwargs
            if isinstance(kwargs, tuple):  # pairs, e.g. from dataclasses.replace or a plain tuple
                try:
                    kwargs = dict(kwargs)
                except (TypeError, ValueError):
                    raise ValueError(f"[oracle] kwargs must be a table, got {self.kwargs!r}") from None
            if not isinstance(kwargs, Mapping):
                raise ValueError(f"[oracle] kwargs must be a table, got {self.kwargs!r}")
            object.__setattr__(self, "kwargs", _freeze(kwargs, "kwargs"))
        executor = self.executor or ("dask" if self.scheduler else "process")
        if executor not in EXECUTORS:
            raise ValueError(f"[oracle] executor must be one of {EXECUTORS}, got {self.executor!r}")
        if self.scheduler and executor != "dask":
            raise ValueError(f"[oracle] scheduler is set, so executor must be 'dask', got {executor!r}")
        if executor == "dask" and not self.scheduler:
            raise ValueError("[oracle] executor 'dask' needs scheduler = 'tcp://host:8786'")
        object.__setattr__(self, "executor", executor)
        for name, low in (("workers", 1), ("retries", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"[oracle] {name} must be an integer >= {low}, got {v!r}")
        if executor == "serial" and self.workers != 1:
            raise ValueError(f"[oracle] executor 'serial' runs one calculation at a time: workers must "
                             f"be 1, got {self.workers}")
        retry_on = self.retry_on
        if isinstance(retry_on, str) or not all(isinstance(p, str) and p for p in retry_on):
            raise ValueError(f"[oracle] retry_on must be a list of exception import paths, got {retry_on!r}")
        object.__setattr__(self, "retry_on", tuple(retry_on))
        if self.on_failure not in ON_FAILURE:
            raise ValueError(f"[oracle] on_failure must be one of {ON_FAILURE}, got {self.on_failure!r}")
        if self.scratch and self.function:
            raise ValueError("[oracle] scratch applies to calculators only (a function gets no directory)")
        if self.scratch and "directory" in self.kwargs_dict():
            raise ValueError("[oracle] set either scratch or kwargs.directory, not both")

    @property
    def target(self) -> str:
        """The calculator or function spelling (shortcut or import path)."""
        return self.calculator or self.function

    @property
    def name(self) -> str:
        """Short name stored in ``info["oracle"]`` of labelled structures."""
        return self.target

    def kwargs_dict(self) -> dict[str, Any]:
        """``kwargs`` as a fresh dict (nested tables as dicts, arrays as lists)."""
        return _thaw(self.kwargs)

    def fingerprint(self) -> str:
        """16 hex digits identifying the labels: calculator/function spelling, kwargs, tag.

        Two configs with different fingerprints never share labels in a store. Spelling is
        exact: ``"emt"`` and ``"ase.calculators.emt:EMT"``, or ``1`` and ``1.0``, are different
        oracles. Executor, workers, retries, failure policy, store and scratch do not enter.
        """
        payload = {"v": 1, "calculator": self.calculator, "function": self.function,
                   "kwargs": self.kwargs_dict(), "tag": self.tag}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """The ``[oracle]`` table (TOML/JSON-able; ``executor`` resolved)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["kwargs"] = self.kwargs_dict()
        out["retry_on"] = list(self.retry_on)
        return out

    @classmethod
    def from_dict(cls, table: Mapping[str, Any]) -> "OracleConfig":
        """Build from a TOML ``[oracle]`` table; inverse of :meth:`to_dict`.

        Raises:
          ValueError: naming the key, for unknown keys and bad values.
        """
        if not isinstance(table, Mapping):
            raise ValueError(f"[oracle] must be a table, got {table!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in table:
            if key not in names:
                raise ValueError(f"unknown key {key!r} in [oracle] (expected one of {names})")
        record = dict(table)
        if "retry_on" in record:
            if not isinstance(record["retry_on"], (list, tuple)):
                raise ValueError(f"[oracle] retry_on must be a list of exception import paths, "
                                 f"got {record['retry_on']!r}")
            record["retry_on"] = tuple(record["retry_on"])
        if "kwargs" in record and not isinstance(record["kwargs"], Mapping):
            raise ValueError(f"[oracle] kwargs must be a table, got {record['kwargs']!r}")
        return cls(**record)


def _check_path(path: str, key: str, expected: str) -> None:
    module, sep, attr = path.partition(":")
    parts = module.split(".") + attr.split(".")
    if not sep or not all(p.isidentifier() for p in parts):
        raise ValueError(f"[oracle] {key} must be {expected}, got {path!r}")
