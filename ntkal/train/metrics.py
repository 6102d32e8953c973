"""Energy and force error metrics accumulated exactly over padded batches."""

from __future__ import annotations

from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from ntkal.models.mlip import energy_and_forces_fn
from ntkal.train.loss import label_masks

__all__ = ["make_error_sums_fn", "evaluate", "METRIC_NAMES"]

#: Keys of the dict returned by :func:`evaluate` (units in the names: eV, eV/atom, eV/Å).
METRIC_NAMES = ("energy_mae_per_atom", "energy_rmse_per_atom", "energy_mae", "energy_rmse",
                "force_mae", "force_rmse", "n_structures", "n_force_components")


def make_error_sums_fn(energy: Callable):
    """``sums(params, graph) -> dict`` of absolute/squared error sums and counts for one batch."""
    energy_and_forces = energy_and_forces_fn(energy)

    def sums(params, graph: jraph.GraphsTuple):
        e_pred, f_pred = energy_and_forces(params, graph)
        gmask, fmask, n_atoms = label_masks(graph)
        de = jnp.where(gmask, e_pred - graph.globals["energy"], 0.0)
        df = jnp.where(fmask[:, None], f_pred - graph.nodes["forces"], 0.0)
        return {
            "e_abs": jnp.sum(jnp.abs(de)), "e_sq": jnp.sum(de**2),
            "ea_abs": jnp.sum(jnp.abs(de / n_atoms)), "ea_sq": jnp.sum((de / n_atoms) ** 2),
            "n_e": jnp.sum(gmask),
            "f_abs": jnp.sum(jnp.abs(df)), "f_sq": jnp.sum(df**2), "n_f": 3 * jnp.sum(fmask),
        }

    return sums


def evaluate(sums_fn: Callable, params, graphs: Iterable[jraph.GraphsTuple]) -> dict[str, float]:
    """Energy/force MAE and RMSE over all labelled graphs in ``graphs``.

    Args:
      sums_fn: a (jitted) function from :func:`make_error_sums_fn`.
      params: model parameters.
      graphs: padded batches.

    Returns:
      Dict with keys :data:`METRIC_NAMES`: energy errors per structure (eV) and per
      atom (eV/atom); force errors over the Cartesian components of free atoms (eV/Å).
      Metrics without any label are NaN.
    """
    total: dict[str, float] = {}
    for graph in graphs:
        for k, v in jax.device_get(sums_fn(params, graph)).items():
            total[k] = total.get(k, 0.0) + float(v)
    n_e, n_f = total.get("n_e", 0.0), total.get("n_f", 0.0)

    def mean(key, n):
        return total[key] / n if n else float("nan")

    return {
        "energy_mae_per_atom": mean("ea_abs", n_e),
        "energy_rmse_per_atom": float(np.sqrt(mean("ea_sq", n_e))),
        "energy_mae": mean("e_abs", n_e),
        "energy_rmse": float(np.sqrt(mean("e_sq", n_e))),
        "force_mae": mean("f_abs", n_f),
        "force_rmse": float(np.sqrt(mean("f_sq", n_f))),
        "n_structures": int(n_e),
        "n_force_components": int(n_f),
    }
