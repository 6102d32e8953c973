"""Label structures with any oracle, anywhere, remembering every label.

- :class:`OracleConfig` (``[oracle]`` TOML table; JAX-free): which calculator or function,
  its kwargs, executor (process / thread / serial / Dask), workers, retries, failure policy.
- :class:`LabelStore`: an ``ase.db`` SQLite file of labels and failures keyed by
  :func:`structure_hash` and the oracle fingerprint.
- :func:`make_executor`: the executor of a config (context manager).
- :func:`label_structures` / :func:`as_oracle`: store first, compute the rest, store each result
  as it completes → :class:`LabelOutcome`.

Energies in eV, forces ``(n_atoms, 3)`` in eV/Å, positions in Å. Submodules are imported on
first use: ``from ntkal.labelling import OracleConfig`` imports neither ASE's database nor JAX.
"""

from __future__ import annotations

from ntkal._lazy import lazy_attributes

_WHERE = {
    "OracleConfig": "ntkal.labelling.config",
    "resolve_import": "ntkal.labelling.config",
    "EXECUTORS": "ntkal.labelling.config",
    "ON_FAILURE": "ntkal.labelling.config",
    "SHORTCUTS": "ntkal.labelling.config",
    "build_oracle": "ntkal.labelling.oracle",
    "FunctionCalculator": "ntkal.labelling.oracle",
    "LabelStore": "ntkal.labelling.store",
    "FailureRecord": "ntkal.labelling.store",
    "LabelStoreError": "ntkal.labelling.store",
    "structure_hash": "ntkal.labelling.store",
    "with_labels": "ntkal.labelling.store",
    "make_executor": "ntkal.labelling.executor",
    "SerialExecutor": "ntkal.labelling.executor",
    "LabelOutcome": "ntkal.labelling.label",
    "label_structures": "ntkal.labelling.label",
    "label_one": "ntkal.labelling.label",
    "as_oracle": "ntkal.labelling.label",
}

__all__ = list(_WHERE)

__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
