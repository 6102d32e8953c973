"""SevenNet (NequIP architecture, SO(3)-equivariant, sevenn 0.9–0.13 layout) as pure JAX functions.

A port of the network of SevenNet-0 (Park et al., J. Chem. Theory Comput. 2024; the ``sevenn``
package, MIT) that reproduces its energies and forces from the converted weights
(:mod:`ntkal.models.sevennet_convert`). Features are kept per degree l as ``(n, mul, 2l+1)``
arrays (e3nn's "mul_ir" layout, channel outermost); every irrep is even (SO(3) only).

Per edge e (receiver i, sender j, r_e = x_j − x_i + shift, r = |r_e|):

- radial basis B_n(r) = (2/r_c)·sin(c_n r)/r with trained frequencies c_n, times the XPLOR cutoff
  f(r) = 1 below r_on, (r_c²−r²)²(r_c²+2r²−3r_on²)/(r_c²−r_on²)³ up to r_c, and 0 beyond (masked:
  the polynomial turns positive again past r_c);
- angular part Y_e = SH_{l≤2}(r̂_e), "component" normalisation (|Yˡ|² = 2l+1).

Per atom: h⁰ = W_emb[type]/√n_types (128 scalars); then per block t:
s = Lin_sc(h); u = Lin_1(h); w_e = MLP_t(emb_e) (8 → 64 → 64 → n_paths·mul, φ between layers,
no biases); messages m_e = Σ_paths w_e,path · √(2l3+1)·CG(u_j, Y_e) (the "uvu" tensor product);
a_i = Σ_{e→i} m_e / denominator; z = Lin_2(a) + s; gate: φ on the scalars, φ(gate scalars) times
the l = 1, 2 channels (last block: φ on all scalars). φ = 1.6791767923989418·silu (e3nn's
``normalize2mom(silu)`` constant, not e3nn-jax's, which is 0.16 % smaller). Every linear map
divides by √fan_in. Readout: e_i = (h·R₁/√128)·R₂/√64; the atomic energy is
``energy_scale``·e_i + e0[Z_i] (:mod:`ntkal.models.mlip`).

Parameters (``params["net"]``): ``radial_frequencies`` (8,), ``embedding`` (n_types, 128),
``interaction_<t>`` with ``self_connection``, ``linear_1``, ``linear_2`` (a (mul_in, mul_out) matrix per
degree, keys ``"0"``, ``"1"``, ``"2"``) and ``radial_mlp`` (``layer0..2``), and ``readout``
(``hidden`` (128, 64), ``energy`` (64, 1)). ``ModelConfig``: ``hidden_irreps`` (the block width,
``"128x0e+64x1e+32x2e"``), ``num_layers``, ``lmax``, ``num_radial``, ``radial_hidden``,
``readout_hidden``, ``cutoff``, ``energy_scale``; ``backbone_options``: ``cutoff_on`` (Å) and
``denominator`` (the message divisor, √avg_num_neigh as stored in the checkpoint).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from ntkal.data.padding import edge_mask, graph_mask, node_graph_index, node_mask
from ntkal.models.config import ModelConfig

__all__ = ["ACTIVATION_CONSTANT", "SevenNetSpec", "spec_of", "sevennet_forward", "init_sevennet_params",
           "build_sevennet_model", "param_shapes"]

#: e3nn's normalize2mom(silu) constant (a Monte-Carlo estimate with torch's seed 0), as sevenn uses it
ACTIVATION_CONSTANT = 1.6791767923989418


def _phi(x):
    return ACTIVATION_CONSTANT * jax.nn.silu(x)


class Path(NamedTuple):
    """One "uvu" tensor-product path: input degree ``l1`` of u, ``l2`` of Y, output ``l3``,
    its weight columns ``[start, start + width)``."""

    l1: int
    l2: int
    l3: int
    start: int
    width: int


class BlockSpec(NamedTuple):
    """The static shape of one interaction block.

    Attributes:
      mul_in: channels per degree of the block input.
      mul_out: channels per degree of the block output (after the gate).
      paths: the tensor-product paths in weight-column order.
      mul_tp: channels per degree of the aggregated messages (Lin_2's input).
      mul_gate_in: channels per degree of Lin_2's output (scalars include the gates).
    """

    mul_in: dict
    mul_out: dict
    paths: tuple
    mul_tp: dict
    mul_gate_in: dict

    @property
    def n_weights(self) -> int:
        return sum(p.width for p in self.paths)


class SevenNetSpec(NamedTuple):
    """Everything static about a SevenNet network (from a :class:`ModelConfig`)."""

    n_types: int
    channels: dict
    blocks: tuple
    num_radial: int
    radial_hidden: int
    readout_hidden: int
    cutoff: float
    cutoff_on: float
    denominator: float


def _mul_of(irreps: str) -> dict:
    """``"128x0e+64x1e+32x2e"`` → ``{0: 128, 1: 64, 2: 32}`` (even irreps only)."""
    out = {}
    for part in irreps.replace(" ", "").split("+"):
        mul, ir = part.split("x")
        if not ir.endswith("e"):
            raise ValueError(f"SevenNet irreps are even (SO(3)); got {irreps!r}")
        out[int(ir[:-1])] = out.get(int(ir[:-1]), 0) + int(mul)
    return dict(sorted(out.items()))


def spec_of(config: ModelConfig) -> SevenNetSpec:
    """The :class:`SevenNetSpec` of a ``backbone = "sevennet"`` config."""
    options = config.options_dict()
    missing = {"cutoff_on", "denominator"} - set(options)
    if missing:
        raise ValueError(f"a sevennet config needs backbone_options {sorted(missing)}")
    unknown = set(options) - {"cutoff_on", "denominator"}
    if unknown:
        raise ValueError(f"unknown sevennet backbone_options {sorted(unknown)} (expected cutoff_on, denominator)")
    hidden = _mul_of(config.hidden_irreps)
    scalars = {0: hidden[0]}
    blocks = []
    for t in range(config.num_layers):
        last = t == config.num_layers - 1
        mul_in = scalars if t == 0 else hidden
        mul_out = scalars if last else hidden
        lmax_out = 0 if last else config.lmax
        generated = [(l1, l2, l3) for l1 in mul_in for l2 in range(config.lmax + 1)
                     for l3 in range(abs(l1 - l2), min(l1 + l2, lmax_out) + 1)]
        ordered = sorted(generated, key=lambda p: p[2])  # stable: by output degree, then generation order
        paths, start, mul_tp = [], 0, {}
        for l1, l2, l3 in ordered:
            paths.append(Path(l1, l2, l3, start, mul_in[l1]))
            start += mul_in[l1]
            mul_tp[l3] = mul_tp.get(l3, 0) + mul_in[l1]
        gates = sum(m for l, m in mul_out.items() if l > 0)
        mul_gate_in = {0: mul_out[0] + gates, **{l: m for l, m in mul_out.items() if l > 0}}
        blocks.append(BlockSpec(mul_in, mul_out, tuple(paths), dict(sorted(mul_tp.items())), mul_gate_in))
    return SevenNetSpec(len(config.elements), hidden, tuple(blocks), config.num_radial, config.radial_hidden,
                        config.readout_hidden, float(config.cutoff), float(options["cutoff_on"]),
                        float(options["denominator"]))


def param_shapes(spec: SevenNetSpec) -> dict:
    """The ``params["net"]`` pytree of shapes (tuples)."""
    width = spec.channels[0]
    net = {"radial_frequencies": (spec.num_radial,), "embedding": (spec.n_types, width)}
    for t, block in enumerate(spec.blocks):
        net[f"interaction_{t}"] = {
            "self_connection": {str(l): (block.mul_in[l], m) for l, m in block.mul_gate_in.items() if l in block.mul_in},
            "linear_1": {str(l): (m, m) for l, m in block.mul_in.items()},
            "radial_mlp": {"layer0": (spec.num_radial, spec.radial_hidden),
                           "layer1": (spec.radial_hidden, spec.radial_hidden),
                           "layer2": (spec.radial_hidden, block.n_weights)},
            "linear_2": {str(l): (block.mul_tp[l], m) for l, m in block.mul_gate_in.items() if l in block.mul_tp},
        }
    net["readout"] = {"hidden": (width, spec.readout_hidden), "energy": (spec.readout_hidden, 1)}
    return net


def init_sevennet_params(key, spec: SevenNetSpec) -> dict:
    """Random ``params["net"]`` (unit normals; frequencies nπ/r_c), for tests and training from scratch."""
    shapes = param_shapes(spec)
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
    keys = jax.random.split(key, len(leaves))
    net = jax.tree.unflatten(treedef, [jax.random.normal(k, s, jnp.float32) for k, s in zip(keys, leaves)])
    net["radial_frequencies"] = jnp.arange(1, spec.num_radial + 1, dtype=jnp.float32) * jnp.pi / spec.cutoff
    return net


def _linear(x: dict, weights: dict, mul_out: dict, n: int, dtype) -> dict:
    """Per-degree o3.Linear: out_l = x_l·W_l/√mul_in; degrees with no input are zero."""
    out = {}
    for l, m in mul_out.items():
        w = weights.get(str(l))
        if w is None or l not in x:
            out[l] = jnp.zeros((n, m, 2 * l + 1), dtype)
        else:
            out[l] = jnp.einsum("num,uw->nwm", x[l], jnp.asarray(w, dtype)) / math.sqrt(w.shape[0])
    return out


def _radial(r, edge_ok, frequencies, spec: SevenNetSpec):
    """(n_edge, num_radial) Bessel basis times the XPLOR cutoff; 0 for masked edges."""
    rc, ron = spec.cutoff, spec.cutoff_on
    inside = edge_ok & (r < rc)
    r_safe = jnp.where(inside, r, 0.5 * rc)
    basis = (2.0 / rc) * jnp.sin(frequencies[None, :] * r_safe[:, None]) / r_safe[:, None]
    smooth = (rc * rc - r_safe ** 2) ** 2 * (rc * rc + 2 * r_safe ** 2 - 3 * ron * ron) / (rc * rc - ron * ron) ** 3
    envelope = jnp.where(r_safe < ron, 1.0, smooth)
    return jnp.where(inside[:, None], basis * envelope[:, None], 0.0)


def _spherical_harmonics(vectors, edge_ok, lmax: int) -> dict:
    """{l: (n_edge, 2l+1)} unit-vector SH, e3nn "component" normalisation, the vector labelled 1e."""
    import e3nn_jax as e3nn

    safe = jnp.where(edge_ok[:, None], vectors, jnp.asarray([1.0, 0.0, 0.0], vectors.dtype))
    irreps = "+".join(f"1x{l}e" for l in range(lmax + 1))
    sh = e3nn.spherical_harmonics(irreps, e3nn.IrrepsArray("1e", safe), normalize=True,
                                  normalization="component").array
    return {l: sh[:, l * l:(l + 1) * (l + 1)] for l in range(lmax + 1)}


def _cg(l1: int, l2: int, l3: int) -> np.ndarray:
    import e3nn_jax as e3nn

    return np.sqrt(2 * l3 + 1) * np.asarray(e3nn.clebsch_gordan(l1, l2, l3))


def _gate(z: dict, mul_out: dict) -> dict:
    """φ on the scalars; φ(gate scalars) times each l > 0 channel (gates in degree order)."""
    scalars = z[0]
    out = {0: _phi(scalars[:, :mul_out[0]])}
    start = mul_out[0]
    for l, m in mul_out.items():
        if l == 0:
            continue
        gate = _phi(scalars[:, start:start + m, 0])
        out[l] = z[l] * gate[:, :, None]
        start += m
    return out


class Forward(NamedTuple):
    """Per-atom outputs of :func:`sevennet_forward`.

    Attributes:
      node_out: (n_node,) network energy e_i (before ``energy_scale`` and e0).
      node_scalars: (n_node, 128) the last block's scalar features.
      readout_inputs: (n_node, readout_hidden) the input of the last linear map.
    """

    node_out: jax.Array
    node_scalars: jax.Array
    readout_inputs: jax.Array


def sevennet_forward(net: dict, spec: SevenNetSpec, species, vectors, senders, receivers, edge_ok) -> Forward:
    """The network on one padded graph.

    Args:
      net: ``params["net"]``.
      spec: the static shape.
      species: (n_node,) int type indices.
      vectors: (n_edge, 3) Å, r_e = x_sender − x_receiver + shift.
      senders, receivers: (n_edge,) int; messages flow sender → receiver.
      edge_ok: (n_edge,) bool, real edges.
    """
    dtype = vectors.dtype
    n = species.shape[0]
    r = jnp.sqrt(jnp.sum(jnp.where(edge_ok[:, None], vectors, 1.0) ** 2, axis=-1))
    emb = _radial(r, edge_ok, jnp.asarray(net["radial_frequencies"], dtype), spec)
    lmax = max(max(p.l2 for p in b.paths) for b in spec.blocks)
    sh = _spherical_harmonics(vectors, edge_ok, lmax)
    embedding = jnp.asarray(net["embedding"], dtype)
    h = {0: (embedding[species] / math.sqrt(spec.n_types))[:, :, None]}
    for t, block in enumerate(spec.blocks):
        p = net[f"interaction_{t}"]
        s = _linear(h, p["self_connection"], block.mul_gate_in, n, dtype)
        u = _linear(h, p["linear_1"], block.mul_in, n, dtype)
        mlp = p["radial_mlp"]
        a = _phi(emb @ jnp.asarray(mlp["layer0"], dtype) / math.sqrt(spec.num_radial))
        b = _phi(a @ jnp.asarray(mlp["layer1"], dtype) / math.sqrt(spec.radial_hidden))
        w = b @ jnp.asarray(mlp["layer2"], dtype) / math.sqrt(spec.radial_hidden)  # (n_edge, n_weights)
        u_j = {l: x[senders] for l, x in u.items()}
        messages: dict[int, list] = {}
        for path in block.paths:
            cg = jnp.asarray(_cg(path.l1, path.l2, path.l3), dtype)
            m = jnp.einsum("ecm,ek,mkq->ecq", u_j[path.l1], sh[path.l2], cg)
            messages.setdefault(path.l3, []).append(m * w[:, path.start:path.start + path.width, None])
        agg = {l: jax.ops.segment_sum(jnp.concatenate(parts, axis=1), receivers, n) / spec.denominator
               for l, parts in messages.items()}
        z = _linear(agg, p["linear_2"], block.mul_gate_in, n, dtype)
        z = {l: z[l] + s[l] for l in z}
        h = _gate(z, block.mul_out)
    scalars = h[0][:, :, 0]
    readout = net["readout"]
    hidden = scalars @ jnp.asarray(readout["hidden"], dtype) / math.sqrt(scalars.shape[1])
    out = hidden @ jnp.asarray(readout["energy"], dtype) / math.sqrt(hidden.shape[1])
    return Forward(out[:, 0], scalars, hidden)


def build_sevennet_model(config: ModelConfig):
    """An ntkal :class:`~ntkal.models.MLIP` running the SevenNet network of ``config``
    (``params = {"net": <see module docstring>, "e0": (n_elements,) eV}``)."""
    from ntkal.models.mlip import MLIP, ModelOutput, edge_vectors, species_index

    spec = spec_of(config)

    def init(key, graph: jraph.GraphsTuple):
        return {"net": init_sevennet_params(key, spec), "e0": jnp.zeros((len(config.elements),), jnp.float32)}

    def apply(params, graph: jraph.GraphsTuple):
        species = species_index(config, graph.nodes["numbers"])
        ok = edge_mask(graph)
        out = sevennet_forward(params["net"], spec, species, edge_vectors(config, graph), graph.senders,
                               graph.receivers, ok)
        mask = node_mask(graph)
        e0 = jnp.asarray(params["e0"], out.node_out.dtype)
        node_energy = jnp.where(mask, config.energy_scale * out.node_out + e0[species], 0.0)
        energy = jax.ops.segment_sum(node_energy, node_graph_index(graph), graph.n_node.shape[0])
        energy = jnp.where(graph_mask(graph), energy, 0.0)
        return ModelOutput(energy=energy, node_energy=node_energy,
                           node_scalars=jnp.where(mask[:, None], out.node_scalars, 0.0),
                           readout_inputs=jnp.where(mask[:, None], out.readout_inputs, 0.0))

    def energy(params, graph):
        return apply(params, graph).energy

    return MLIP(config=config, init=init, apply=apply, energy=energy)
