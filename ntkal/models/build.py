"""``build_model``: the :class:`~ntkal.models.mlip.MLIP` of a :class:`~ntkal.models.ModelConfig`,
for every backbone: the built-in NequIP-style network (here), SevenNet-0's architecture
(:mod:`ntkal.models.sevennet`) and InstaDeep's ``mlip`` networks (:mod:`ntkal.models.mlip_adapter`)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import jraph

from ntkal.data.padding import graph_mask, node_graph_index, node_mask
from ntkal.models.config import ModelConfig
from ntkal.models.mlip import MLIP, ModelOutput, edge_vectors, species_index
from ntkal.models.nequip import NequIPNet

__all__ = ["build_model"]


@functools.lru_cache(maxsize=8)
def build_model(config: ModelConfig) -> MLIP:
    """Build the model for ``config``: the built-in NequIP-style network, or for
    ``config.backbone`` ``"mace"``/``"nequip"``/``"visnet"`` an InstaDeep ``mlip`` network through
    :func:`ntkal.models.mlip_adapter.build_mlip_model` (optional extra ``ntkal[mlip]``).

    Equal configs give the *same* :class:`MLIP` object (the last 8 configs are kept): every
    compiled program keyed on the model in its owner's dict (the fine-tuning step, jitted energy
    and forces, feature maps; :mod:`ntkal.cache.owned`) is then found again when a checkpoint
    is loaded anew, e.g. by every point of a sweep sharing one per-pool cache, instead of being
    compiled again beside the old copy (each copy holds hundreds of mapped memory regions until
    its owner is dropped: :mod:`ntkal.process_stats`). This cache keeps model objects, not
    programs: the model's own jitted ``init`` is its only compiled program.

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
        variables = net.init(key, species, edge_vectors(config, graph), graph.senders, graph.receivers)
        return {"net": variables, "e0": jnp.zeros((len(config.elements),), jnp.float32)}

    init = jax.jit(init)

    def apply(params, graph: jraph.GraphsTuple) -> ModelOutput:
        species = species_index(config, graph.nodes["numbers"])
        out = net.apply(params["net"], species, edge_vectors(config, graph), graph.senders,
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
