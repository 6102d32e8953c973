"""Weighted energy (per atom) + force loss on a padded batch."""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import jraph
import optax

from ntkal.data.padding import graph_mask, node_graph_index, node_mask
from ntkal.models.mlip import energy_and_forces_fn

__all__ = ["make_loss_fn", "label_masks"]


def label_masks(graph: jraph.GraphsTuple):
    """Masks of what is a label in ``graph``.

    Returns:
      ``(energy_mask (n_graph,) bool, force_mask (n_node,) bool, n_atoms (n_graph,) float)``:
      graphs with an energy label; free real atoms of graphs with force labels;
      atom counts (≥1 to keep divisions finite on padding).
    """
    gmask = graph_mask(graph) & graph.globals["has_energy"]
    node_graph = node_graph_index(graph)
    fmask = node_mask(graph) & graph.nodes["free"] & graph.globals["has_forces"][node_graph]
    n_atoms = jnp.maximum(graph.n_node, 1).astype(jnp.result_type(float))
    return gmask, fmask, n_atoms


def make_loss_fn(energy: Callable, *, energy_weight: float = 1.0, force_weight: float = 10.0,
                 force_huber_delta: float = 0.0):
    """``loss(params, graph) -> (loss, aux)``.

    .. math::
       L = w_E \\frac{1}{|G|}\\sum_{g∈G} \\Big(\\frac{\\hat E_g − E_g}{N_g}\\Big)^2
         + w_F \\frac{1}{3|A|}\\sum_{i∈A} \\sum_{c=1}^{3} ρ(\\hat F_{ic} − F_{ic})

    with G the labelled graphs and A the free atoms of graphs with force labels
    (units: (eV/atom)² and (eV/Å)²); ρ(e) = e² (``force_huber_delta`` = 0) or, with δ > 0,
    twice the Huber function: e² for |e| ≤ δ and 2δ|e| − δ² beyond. ``aux`` holds the summed
    *squared* errors and counts (whatever ρ is) so that callers can average over many batches
    exactly.
    """
    energy_and_forces = energy_and_forces_fn(energy)

    def loss(params, graph):
        e_pred, f_pred = energy_and_forces(params, graph)
        gmask, fmask, n_atoms = label_masks(graph)
        e_err = jnp.where(gmask, (e_pred - graph.globals["energy"]) / n_atoms, 0.0)
        f_err = jnp.where(fmask[:, None], f_pred - graph.nodes["forces"], 0.0)
        n_e = jnp.sum(gmask)
        n_f = 3 * jnp.sum(fmask)
        e_sse = jnp.sum(e_err**2)
        f_sse = jnp.sum(f_err**2)
        if force_huber_delta == 0:
            f_loss = f_sse
        else:  # twice optax's Huber (0.5 e² inside δ): equal to e² up to δ
            f_loss = 2.0 * jnp.sum(optax.losses.huber_loss(f_err, delta=force_huber_delta))
        value = (energy_weight * e_sse / jnp.maximum(n_e, 1)
                 + force_weight * f_loss / jnp.maximum(n_f, 1))
        return value, {"e_sse": e_sse, "n_e": n_e, "f_sse": f_sse, "n_f": n_f}

    return loss
