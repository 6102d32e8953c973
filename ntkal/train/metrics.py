"""Energy and force error metrics accumulated exactly over padded batches.

Besides dataset-wide MAE/RMSE, :func:`evaluate` reports tail statistics of the
per-structure force MAE (95th percentile and maximum over structures), so that a
method that lowers the average error by sacrificing a few hard structures shows up.
"""

from __future__ import annotations

from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from ntkal.data.padding import node_graph_index
from ntkal.models.mlip import energy_and_forces_fn
from ntkal.train.loss import label_masks

__all__ = ["make_error_sums_fn", "evaluate", "per_structure_force_mae", "METRIC_NAMES"]

#: Keys of the dict returned by :func:`evaluate` (units in the names: eV, eV/atom, eV/Å).
METRIC_NAMES = ("energy_mae_per_atom", "energy_rmse_per_atom", "energy_mae", "energy_rmse",
                "force_mae", "force_rmse", "n_structures", "n_force_components",
                "force_mae_p95", "force_mae_max")

#: Keys of the per-graph ((n_graph,)-shaped) entries of the dict returned by the sums function.
PER_GRAPH_KEYS = ("f_abs_graph", "n_f_graph")


def make_error_sums_fn(energy: Callable):
    """``sums(params, graph) -> dict`` of error sums and counts for one padded batch.

    Scalar entries (summed over the batch): ``e_abs``/``e_sq`` (eV, eV²),
    ``ea_abs``/``ea_sq`` (eV/atom, (eV/atom)²) and ``n_e`` over energy-labelled graphs;
    ``f_abs``/``f_sq`` (eV/Å, (eV/Å)²) and ``n_f`` over the Cartesian force components
    of free atoms of force-labelled graphs.

    Per-graph entries, shape (n_graph,): ``f_abs_graph`` — Σ|ΔF| over each graph's free
    force components (eV/Å); ``n_f_graph`` — the number of those components (3 × free
    atoms; 0 for padding slots and graphs without force labels).
    """
    energy_and_forces = energy_and_forces_fn(energy)

    def sums(params, graph: jraph.GraphsTuple):
        e_pred, f_pred = energy_and_forces(params, graph)
        gmask, fmask, n_atoms = label_masks(graph)
        de = jnp.where(gmask, e_pred - graph.globals["energy"], 0.0)
        df = jnp.where(fmask[:, None], f_pred - graph.nodes["forces"], 0.0)
        n_graph = graph.n_node.shape[0]
        node_graph = node_graph_index(graph)
        f_abs_graph = jax.ops.segment_sum(jnp.sum(jnp.abs(df), axis=1), node_graph, n_graph)
        n_f_graph = 3 * jax.ops.segment_sum(fmask.astype(jnp.int32), node_graph, n_graph)
        return {
            "e_abs": jnp.sum(jnp.abs(de)), "e_sq": jnp.sum(de**2),
            "ea_abs": jnp.sum(jnp.abs(de / n_atoms)), "ea_sq": jnp.sum((de / n_atoms) ** 2),
            "n_e": jnp.sum(gmask),
            "f_abs": jnp.sum(jnp.abs(df)), "f_sq": jnp.sum(df**2), "n_f": 3 * jnp.sum(fmask),
            "f_abs_graph": f_abs_graph, "n_f_graph": n_f_graph,
        }

    return sums


def per_structure_force_mae(f_abs_graph, n_f_graph) -> np.ndarray:
    """Per-structure force MAE (eV/Å) of the graphs that have force components.

    Args:
      f_abs_graph: (n_graph,) Σ|ΔF| per graph (eV/Å).
      n_f_graph: (n_graph,) number of free force components per graph.

    Returns:
      (n_with_forces,) mean |ΔF| of each graph with ``n_f_graph > 0``, in input order.
    """
    f_abs_graph = np.asarray(f_abs_graph, dtype=float)
    n_f_graph = np.asarray(n_f_graph)
    if f_abs_graph.shape != n_f_graph.shape or f_abs_graph.ndim != 1:
        raise ValueError(f"expected two (n_graph,) arrays, got shapes {f_abs_graph.shape} "
                         f"and {n_f_graph.shape}")
    keep = n_f_graph > 0
    return f_abs_graph[keep] / n_f_graph[keep]


def evaluate(sums_fn: Callable, params, graphs: Iterable[jraph.GraphsTuple]) -> dict[str, float]:
    """Energy/force MAE and RMSE over all labelled graphs in ``graphs``, plus force tails.

    Args:
      sums_fn: a (jitted) function from :func:`make_error_sums_fn`.
      params: model parameters.
      graphs: padded batches.

    Returns:
      Dict with keys :data:`METRIC_NAMES`: energy errors per structure (eV) and per
      atom (eV/atom); force errors over the Cartesian components of free atoms (eV/Å);
      ``force_mae_p95`` / ``force_mae_max``: the 95th percentile (numpy's default linear
      interpolation) and the maximum over structures of the per-structure force MAE
      (eV/Å; structures without force components are excluded). Independent of how the
      structures are split into batches. Metrics without any label are NaN.
    """
    total: dict[str, float] = {}
    per_structure: list[np.ndarray] = []
    for graph in graphs:
        out = jax.device_get(sums_fn(params, graph))
        for k, v in out.items():
            if k not in PER_GRAPH_KEYS:
                total[k] = total.get(k, 0.0) + float(v)
        per_structure.append(per_structure_force_mae(out["f_abs_graph"], out["n_f_graph"]))
    n_e, n_f = total.get("n_e", 0.0), total.get("n_f", 0.0)
    f_mae = np.concatenate(per_structure) if per_structure else np.zeros((0,))

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
        "force_mae_p95": float(np.percentile(f_mae, 95)) if f_mae.size else float("nan"),
        "force_mae_max": float(np.max(f_mae)) if f_mae.size else float("nan"),
    }
