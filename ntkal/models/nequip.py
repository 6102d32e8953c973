"""An E(3)-equivariant message-passing network (NequIP family) in e3nn-jax + flax.

Per interaction block, with edge vector r_ij (Å), Y = spherical harmonics of r̂_ij,
B = Bessel basis × polynomial envelope of |r_ij|:

    m_i = Σ_j  W(B(|r_ij|)) ⊙ ( Linear(h_j) ⊗ Y(r̂_ij) ) / sqrt(avg_num_neighbors)
    h_i ← Gate(Linear(m_i)) + Linear_{species_i}(h_i)

Readout: scalars of the last block → Linear → SiLU (these activations are the
"last-layer" features) → Linear → per-atom energy.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ntkal.models.config import ModelConfig

__all__ = ["NequIPNet", "NetOutput"]


class NetOutput(NamedTuple):
    """Per-node outputs of the network (before scaling and reference energies).

    Attributes:
      node_out: (n_node,) dimensionless per-atom energy output.
      node_scalars: (n_node, F) invariant node features of the last block (embedding).
      readout_inputs: (n_node, H) input of the final linear readout layer.
    """

    node_out: jax.Array
    node_scalars: jax.Array
    readout_inputs: jax.Array


class Interaction(nn.Module):
    config: ModelConfig
    num_species: int

    @nn.compact
    def __call__(self, h, species, sh, basis, senders, receivers):
        import e3nn_jax as e3nn  # imported when a model is traced (1+ s), not when it is built

        cfg = self.config
        target = e3nn.Irreps(cfg.hidden_irreps)
        n_node = h.shape[0]
        self_connection = e3nn.flax.Linear(target, num_indexed_weights=self.num_species,
                                           force_irreps_out=True, name="self_connection")(species, h)
        y = e3nn.flax.Linear(h.irreps, name="pre_linear")(h)
        messages = e3nn.tensor_product(y[senders], sh, filter_ir_out=target)
        messages = messages.regroup()
        weights = e3nn.flax.MultiLayerPerceptron(
            (cfg.radial_hidden, messages.irreps.num_irreps), act=jax.nn.silu,
            output_activation=False, name="radial_mlp")(basis)
        messages = messages * weights
        aggregated = e3nn.scatter_sum(messages, dst=receivers, output_size=n_node)
        aggregated = aggregated / jnp.sqrt(cfg.avg_num_neighbors)
        scalars = target.filter(keep=["0e"])
        nonscalars = target.filter(drop=["0e", "0o"])
        z = e3nn.flax.Linear(
            e3nn.Irreps(f"{scalars.num_irreps + nonscalars.num_irreps}x0e") + nonscalars,
            force_irreps_out=True, name="post_linear")(aggregated)
        z = e3nn.gate(z, even_act=jax.nn.silu, even_gate_act=jax.nn.sigmoid)
        return z + self_connection


class NequIPNet(nn.Module):
    """The network on a padded graph; see the module docstring.

    Call with ``species`` (n_node,) int32 element indices, ``vectors`` (n_edge, 3) Å
    (padded edges must be placed beyond the cutoff), ``senders``/``receivers``.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, species, vectors, senders, receivers) -> NetOutput:
        import e3nn_jax as e3nn  # imported when a model is traced (1+ s), not when it is built

        cfg = self.config
        num_species = len(cfg.elements)
        lengths = jnp.linalg.norm(vectors, axis=-1)
        sh = e3nn.spherical_harmonics(list(range(cfg.lmax + 1)),
                                      e3nn.IrrepsArray("1o", vectors / lengths[:, None]),
                                      normalize=False, normalization="component")
        envelope = e3nn.poly_envelope(cfg.envelope_power - 1, 2)(lengths / cfg.cutoff)
        envelope = jnp.where(lengths < cfg.cutoff, envelope, 0.0)
        basis = e3nn.bessel(lengths, cfg.num_radial, cfg.cutoff) * envelope[:, None]

        onehot = jax.nn.one_hot(species, num_species, dtype=vectors.dtype)
        h = e3nn.IrrepsArray(f"{num_species}x0e", onehot)
        scalars_irreps = e3nn.Irreps(cfg.hidden_irreps).filter(keep=["0e"])
        h = e3nn.flax.Linear(scalars_irreps, name="embedding")(h)
        for layer in range(cfg.num_layers):
            h = Interaction(cfg, num_species, name=f"interaction_{layer}")(
                h, species, sh, basis, senders, receivers)
        node_scalars = h.filter(keep=["0e"])
        hidden = e3nn.flax.Linear(f"{cfg.readout_hidden}x0e", name="readout_hidden")(node_scalars)
        hidden = jax.nn.silu(hidden.array)
        out = e3nn.flax.Linear("0e", name="readout")(e3nn.IrrepsArray(f"{cfg.readout_hidden}x0e", hidden))
        return NetOutput(node_out=out.array[:, 0], node_scalars=node_scalars.array,
                         readout_inputs=hidden)
