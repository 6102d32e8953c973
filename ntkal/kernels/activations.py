r"""Activation (non-NTK) feature maps: embedding and last-layer kernels.

* **embedding**: pooled invariant node features h_i (``ModelOutput.node_scalars``, the
  scalars of the last interaction block), ``pool="mean"`` → (1/N)Σ_i h_i,
  ``"sum"`` → Σ_i h_i, ``"mean_sum"`` → [mean, sum] (d = 2F).
* **last_layer**: Σ_i z_i with z_i the readout-layer inputs (``ModelOutput.readout_inputs``).
  Because E = Σ_i [s · Linear(z_i) + e0] and the readout is a bias-free linear layer,
  ∇_{W_readout} E = c · Σ_i z_i with one constant c (the energy scale times e3nn's
  1/√H path normalisation): the last-layer kernel is the readout-only energy NTK up to c²
  (tested).

Both have r = 1 row per graph (mask = real graph) and are computed on the whole chunk in
one forward pass (pooling is a segment sum, so padding contributes exactly zero).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import jraph

from ntkal.data import graph_mask, node_graph_index
from ntkal.kernels.features import FeatureRows

__all__ = ["make_activation_apply"]


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
