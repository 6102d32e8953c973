"""The functional MLIP protocol: ``init``/``apply``/``energy`` pure functions over pytrees.

Parameters are a dict ``{"net": <flax variables>, "e0": (n_elements,) eV}``; ``e0``
are per-element reference energies fitted by least squares (see
:func:`ntkal.models.fit_reference_energies`) and are not trained.

Per-graph energy (eV):  E_g = Σ_{i∈g} [ energy_scale · net_i + e0[Z_i] ].
Padded nodes, edges and graph slots contribute exactly zero.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from ntkal.data.padding import edge_mask
from ntkal.models.config import ModelConfig

__all__ = ["MLIP", "ModelOutput", "build_model", "forces_fn", "energy_and_forces_fn",
           "species_index", "with_positions", "count_parameters"]


class ModelOutput(NamedTuple):
    """Everything one forward pass yields.

    Attributes:
      energy: (n_graph,) eV; 0 on padding slots.
      node_energy: (n_node,) eV; 0 on padding nodes.
      node_scalars: (n_node, F) invariant node features (embedding kernel input); 0 on padding.
      readout_inputs: (n_node, H) readout-layer inputs (last-layer kernel input); 0 on padding.
    """

    energy: jax.Array
    node_energy: jax.Array
    node_scalars: jax.Array
    readout_inputs: jax.Array


class MLIP(NamedTuple):
    """A model as pure functions.

    Attributes:
      config: the frozen hyper-parameters.
      init: ``init(key, graph) -> params``.
      apply: ``apply(params, graph) -> ModelOutput``.
      energy: ``energy(params, graph) -> (n_graph,) eV``.
    """

    config: ModelConfig
    init: Callable
    apply: Callable
    energy: Callable


def species_index(config: ModelConfig, numbers) -> jax.Array:
    """Map atomic numbers (n_node,) to embedding indices; unknown/padding → 0."""
    table = np.zeros(119, np.int32)
    for k, z in enumerate(config.elements):
        table[z] = k
    return jnp.asarray(table)[numbers]


def with_positions(graph: jraph.GraphsTuple, positions) -> jraph.GraphsTuple:
    """``graph`` with node positions (n_node, 3) Å replaced."""
    return graph._replace(nodes={**graph.nodes, "positions": positions})


def edge_vectors(config: ModelConfig, graph: jraph.GraphsTuple):
    """``(n_edge, 3)`` Å: r_sender − r_receiver + shift; padding edges get a vector of length
    2·cutoff, beyond every radial basis."""
    pos = jnp.asarray(graph.nodes["positions"])
    vectors = pos[graph.senders] - pos[graph.receivers] + graph.edges["shifts"].astype(pos.dtype)
    far = jnp.asarray([2.0 * config.cutoff, 0.0, 0.0], dtype=pos.dtype)
    return jnp.where(edge_mask(graph)[:, None], vectors, far)


def forces_fn(energy: Callable) -> Callable:
    """``forces(params, graph) -> (n_node, 3) eV/Å`` = −∂(Σ_g E_g)/∂r; 0 on padding nodes."""

    def forces(params, graph):
        def total(pos):
            return jnp.sum(energy(params, with_positions(graph, pos)))
        return -jax.grad(total)(graph.nodes["positions"])

    return forces


def energy_and_forces_fn(energy: Callable) -> Callable:
    """``f(params, graph) -> (energy (n_graph,) eV, forces (n_node, 3) eV/Å)`` in one pass."""

    def energy_and_forces(params, graph):
        def total(pos):
            e = energy(params, with_positions(graph, pos))
            return jnp.sum(e), e
        grad, e = jax.grad(total, has_aux=True)(graph.nodes["positions"])
        return e, -grad

    return energy_and_forces


def count_parameters(params) -> int:
    """Number of scalar parameters in ``params["net"]``."""
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params["net"])))
