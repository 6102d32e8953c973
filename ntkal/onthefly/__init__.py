"""On-the-fly active learning: uncertainty-biased MD that labels what the model does not know.

* :mod:`ntkal.onthefly.posterior` — the feature-space posterior as a Cholesky factor, rank-r updates.
* :mod:`ntkal.onthefly.potential` — energy, forces, σ² and biased forces of one system, compiled once.
* :mod:`ntkal.onthefly.dynamics` — Langevin (BAOAB) state and step, pure functions.
* :mod:`ntkal.onthefly.config` — ``ntkal md`` configs (JAX-free).
* :mod:`ntkal.onthefly.run` — the driver: threshold, labels, fine-tunes, restarts, resume.
* :mod:`ntkal.onthefly.ase_calculator` — the same potential as an ASE calculator for ASE dynamics.

Names are imported on first use (``from ntkal.onthefly import load_md_spec`` loads no JAX).
"""

from __future__ import annotations

from ntkal._lazy import lazy_attributes

_WHERE = {
    "CholeskyPosterior": "ntkal.onthefly.posterior", "posterior_from_rows": "ntkal.onthefly.posterior",
    "add_rows": "ntkal.onthefly.posterior", "variance": "ntkal.onthefly.posterior",
    "cholesky_update": "ntkal.onthefly.posterior",
    "Evaluation": "ntkal.onthefly.potential", "SystemGraph": "ntkal.onthefly.potential",
    "UncertainPotential": "ntkal.onthefly.potential",
    "MDState": "ntkal.onthefly.dynamics", "LangevinParams": "ntkal.onthefly.dynamics",
    "langevin_params": "ntkal.onthefly.dynamics", "langevin_step": "ntkal.onthefly.dynamics",
    "maxwell_boltzmann": "ntkal.onthefly.dynamics",
    "MDConfig": "ntkal.onthefly.config", "UncertaintyConfig": "ntkal.onthefly.config",
    "LabelRule": "ntkal.onthefly.config", "OnTheFlySpec": "ntkal.onthefly.config",
    "load_md_spec": "ntkal.onthefly.config", "MDConfigError": "ntkal.onthefly.config",
    "run_md": "ntkal.onthefly.run", "MDResult": "ntkal.onthefly.run",
    "OnTheFlyCalculator": "ntkal.onthefly.ase_calculator",
}

__all__ = list(_WHERE)

__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
