"""The functional MLIP protocol: ``init``/``apply``/``energy`` pure functions over pytrees.

Parameters are a dict ``{"net": <flax variables>, "e0": (n_elements,) eV}``; ``e0``
are per-element reference energies fitted by least squares (see
:func:`ntkal.models.fit_reference_energies`) and are not trained.

Per-graph energy (eV):  E_g = Σ_{i∈g} [ energy_scale · net_i + e0[Z_i] ].
Padded nodes, edges and graph slots contribute exactly zero.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from ntkal.data.padding import edge_mask, graph_mask, node_graph_index, node_mask
from ntkal.models.config import ModelConfig
from ntkal.models.nequip import NequIPNet

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


def _edge_vectors(config: ModelConfig, graph: jraph.GraphsTuple):
    pos = jnp.asarray(graph.nodes["positions"])
    vectors = pos[graph.senders] - pos[graph.receivers] + graph.edges["shifts"].astype(pos.dtype)
    far = jnp.asarray([2.0 * config.cutoff, 0.0, 0.0], dtype=pos.dtype)
    return jnp.where(edge_mask(graph)[:, None], vectors, far)


@functools.lru_cache(maxsize=8)
def build_model(config: ModelConfig) -> MLIP:
    """Build the model for ``config``: the built-in NequIP-style network, or for
    ``config.backbone`` ``"mace"``/``"nequip"``/``"visnet"`` an InstaDeep ``mlip`` network through
    :func:`ntkal.models.mlip_adapter.build_mlip_model` (optional extra ``ntkal[mlip]``).

    Equal configs give the *same* :class:`MLIP` object (the last 8 configs are kept): every
    compiled program keyed on the model (the fine-tuning step, jitted energy and forces, feature
    maps) is then found again when a checkpoint is loaded anew, e.g. by every point of a sweep,
    instead of being compiled again beside the old copy (each copy holds hundreds of mapped
    memory regions until the process dies: :mod:`ntkal.process_stats`).

    Example:
      >>> model = build_model(ModelConfig(elements=(29, 78)))
      >>> params = model.init(jax.random.key(0), graph)      # doctest: +SKIP
      >>> energies = model.energy(params, graph)               # (n_graph,) eV
    """
    if config.backbone == "sevennet":
        from ntkal.models.sevennet import build_sevennet_model

        return build_sevennet_model(config)
    if config.backbone != "ntkal":
        from ntkal.models.mlip_adapter import build_mlip_model

        return build_mlip_model(config)
    net = NequIPNet(config)

    def init(key, graph: jraph.GraphsTuple):
        species = species_index(config, graph.nodes["numbers"])
        variables = net.init(key, species, _edge_vectors(config, graph), graph.senders, graph.receivers)
        return {"net": variables, "e0": jnp.zeros((len(config.elements),), jnp.float32)}

    init = jax.jit(init)

    def apply(params, graph: jraph.GraphsTuple) -> ModelOutput:
        species = species_index(config, graph.nodes["numbers"])
        out = net.apply(params["net"], species, _edge_vectors(config, graph), graph.senders,
                        graph.receivers)
        mask = node_mask(graph)
        e0 = params["e0"].astype(out.node_out.dtype)
        node_energy = jnp.where(mask, config.energy_scale * out.node_out + e0[species], 0.0)
        n_graph = graph.n_node.shape[0]
        energy = jax.ops.segment_sum(node_energy, node_graph_index(graph), n_graph)
        energy = jnp.where(graph_mask(graph), energy, 0.0)
        return ModelOutput(
            energy=energy,
            node_energy=node_energy,
            node_scalars=jnp.where(mask[:, None], out.node_scalars, 0.0),
            readout_inputs=jnp.where(mask[:, None], out.readout_inputs, 0.0),
        )

    def energy(params, graph):
        return apply(params, graph).energy

    return MLIP(config=config, init=init, apply=apply, energy=energy)


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
