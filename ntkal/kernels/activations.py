r"""Activation (non-NTK) feature maps: embedding and last-layer kernels.

* **embedding**: pooled invariant node features h_i (``ModelOutput.node_scalars``, the
  scalars of the last interaction block), ``pool="mean"`` → (1/N)Σ_i h_i,
  ``"sum"`` → Σ_i h_i, ``"mean_sum"`` → [mean, sum] (d = 2F).
* **last_layer**: Σ_i z_i with z_i the readout-layer inputs (``ModelOutput.readout_inputs``).
  Because E = Σ_i [s · Linear(z_i) + e0] and the readout is a bias-free linear layer,
  ∇_{W_readout} E = c · Σ_i z_i with one constant c (the energy scale times e3nn's
  1/√H path normalisation): the last-layer kernel is the readout-only energy NTK up to c²
  (tested).

* **atom_embedding**: one row per free real atom, h_i itself (no pooling): r = max_atoms rows
  per graph, masked like the force rows (real and free). With the ``total`` reduction its
  posterior variance is Σ_i σ²(h_i), the variance of a linear model of *local* (per-atom)
  energies: extensive and local like the force-NTK variance, but from one forward pass. It is
  the cascade's cheap stand-in for force-aware kernels (``AcquisitionConfig.cascade``).

``embedding`` and ``last_layer`` have r = 1 row per graph (mask = real graph). All three are
computed on the whole chunk in one forward pass (pooling is a segment sum, so padding contributes
exactly zero).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import jraph

from ntkal.data import graph_mask, node_graph_index
from ntkal.kernels.features import FeatureRows
from ntkal.kernels.split import exclusive_cumsum

__all__ = ["make_activation_apply", "make_atom_embedding_apply"]


def make_activation_apply(model, kind: str, pool: str = "mean") -> Callable:
    """``apply(params, graph) -> FeatureRows`` for ``kind`` in {"embedding", "last_layer"}."""
    if kind not in ("embedding", "last_layer"):
        raise ValueError(f"not an activation kernel: {kind!r}")

    def apply(params, graph: jraph.GraphsTuple) -> FeatureRows:
        out = model.apply(params, graph)
        n_graph = graph.n_node.shape[0]
        seg = node_graph_index(graph)
        real = graph_mask(graph)
        if kind == "last_layer":
            feats = jax.ops.segment_sum(out.readout_inputs, seg, n_graph)
        else:
            total = jax.ops.segment_sum(out.node_scalars, seg, n_graph)
            count = jnp.maximum(jnp.asarray(graph.n_node), 1).astype(total.dtype)[:, None]
            mean = total / count
            feats = {"mean": mean, "sum": total,
                     "mean_sum": jnp.concatenate([mean, total], axis=-1)}[pool]
        feats = jnp.where(real[:, None], feats, 0.0)
        return FeatureRows(feats[:, None, :], real[:, None])

    return apply


def make_atom_embedding_apply(model) -> Callable:
    """``apply(params, graph, max_atoms) -> FeatureRows`` of per-atom invariant features.

    Returns rows (n_graph, max_atoms, F): row i of graph g is the node scalars h_i of the
    graph's i-th atom; rows of padding slots, of fixed atoms (``nodes["free"]`` False) and of
    the padding graph are exactly zero and masked. ``max_atoms`` (static) must be ≥ every real
    graph's atom count.
    """

    def apply(params, graph: jraph.GraphsTuple, max_atoms: int) -> FeatureRows:
        out = model.apply(params, graph)
        n_graph = graph.n_node.shape[0]
        seg = node_graph_index(graph)
        slot = jnp.arange(seg.shape[0]) - exclusive_cumsum(jnp.asarray(graph.n_node))[seg]
        keep = graph_mask(graph)[seg] & jnp.asarray(graph.nodes["free"]).astype(bool)
        slot = jnp.where(keep, slot, max_atoms)  # out of range: dropped by the scatter
        h = jnp.where(keep[:, None], out.node_scalars, 0.0)
        rows = jnp.zeros((n_graph, max_atoms, h.shape[-1]), h.dtype).at[seg, slot].set(h, mode="drop")
        mask = jnp.zeros((n_graph, max_atoms), bool).at[seg, slot].set(keep, mode="drop")
        return FeatureRows(rows, mask)

    return apply
