"""Public entry points: :func:`make_feature_map`, :func:`featurize`, joint weights."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ntkal.kernels.activations import make_activation_apply, make_atom_embedding_apply
from ntkal.kernels.config import KernelConfig
from ntkal.kernels.features import FeatureRows, make_ntk_apply, ntk_functions
from ntkal.kernels.split import GraphSizes, graph_sizes

__all__ = ["FeatureMap", "make_feature_map", "featurize", "default_joint_weights"]


class FeatureMap(NamedTuple):
    """A feature map as pure functions.

    Attributes:
      config: the :class:`KernelConfig`.
      dim: d, the feature width.
      num_params: P_s for NTK kinds (0 for activation kernels).
      apply_padded: ``apply_padded(params, graph, sizes, salt=None, constants=None) ->
        FeatureRows`` — jitted, pure; ``sizes`` (:class:`GraphSizes`) is static (changing it
        recompiles). ``salt`` (n_graph,) ints decorrelates probe tangents across structures. A
        hoisted sketch (see ``KernelConfig.hoist_sketch``) is drawn once by ``make_feature_map``
        and held by the map (P_s·d entries, :attr:`constants`); a streamed one is redrawn leaf
        by leaf in each call. ``constants=None`` uses the held ones; pass them explicitly to
        call the map inside another transformation (e.g. ``shard_map``) without capturing
        them as compile-time constants.
      apply: ``apply(params, graph, *, sizes=None, salt=None) -> FeatureRows`` — the same, with
        ``sizes`` chosen from a concrete chunk by :func:`graph_sizes` when omitted.
      num_rows: ``num_rows(sizes) -> r``.
      constants: the arrays the map holds (the hoisted sketch blocks) or ``None``.
    """

    config: KernelConfig
    dim: int
    num_params: int
    apply_padded: Callable
    apply: Callable
    num_rows: Callable
    constants: object = None


def make_feature_map(model, config: KernelConfig, params, *, store=None) -> FeatureMap:
    """Build the feature map of ``config.kind`` for ``model``.

    Args:
      model: an ``ntkal.models.MLIP``.
      config: a :class:`KernelConfig`.
      params: model parameters; only their structure/shapes are read here (the filter and
        sketch are resolved against them). Any params of the same structure can be passed
        to ``apply`` later.
      store: optional :class:`ntkal.cache.ProgramCache`; a hoisted sketch is then
        read from its folder instead of drawn (and drawn and written there the first time).
        The blocks are bitwise the same either way.

    Returns:
      A :class:`FeatureMap`.

    Example:
      >>> fm = make_feature_map(model, KernelConfig(kind="force_probe", num_probes=8), params)
      >>> rows, mask = fm.apply(params, chunk.graph)   # doctest: +SKIP
    """
    kind = config.kind
    if kind in ("embedding", "last_layer"):
        inner = jax.jit(make_activation_apply(model, kind, config.pool))
        shapes = jax.eval_shape(model.apply, params, _dummy_graph())
        width = (shapes.readout_inputs.shape[-1] if kind == "last_layer"
                 else shapes.node_scalars.shape[-1] * (2 if config.pool == "mean_sum" else 1))

        def apply_padded(params, graph, sizes=None, salt=None, constants=None):
            return inner(params, graph)

        return FeatureMap(config, int(width), 0, apply_padded,
                          lambda params, graph, *, sizes=None, salt=None: inner(params, graph),
                          lambda sizes=None: 1)

    if kind == "atom_embedding":
        per_atom = jax.jit(make_atom_embedding_apply(model), static_argnames=("max_atoms",))
        width = jax.eval_shape(model.apply, params, _dummy_graph()).node_scalars.shape[-1]

        def apply_padded(params, graph, sizes, salt=None, constants=None):
            return per_atom(params, graph, max_atoms=int(sizes.max_atoms))

        def apply(params, graph, *, sizes: GraphSizes | None = None, salt=None) -> FeatureRows:
            return apply_padded(params, graph, graph_sizes(graph) if sizes is None else sizes)

        return FeatureMap(config, int(width), 0, apply_padded, apply,
                          lambda sizes: int(sizes.max_atoms))

    fns = ntk_functions(model, config, params)
    inner = jax.jit(make_ntk_apply(fns, config, kind), static_argnames=("sizes",))
    # A hoisted sketch is drawn once, here, and passed to every call as an argument (not a
    # compile-time constant): drawing P_s×d normals per chunk would cost more than the
    # energy-NTK features themselves.
    blocks = None
    if fns.sketch.hoist:
        dtype = jnp.result_type(*fns.selection.take(params))

        def draw():
            return jax.jit(fns.sketch.blocks, static_argnums=0)(dtype)

        if store is None:
            blocks = draw()
        else:
            selection = fns.selection
            blocks = store.arrays(("sketch", config.sketch_kind, config.seed, config.sketch_dim,
                                   np.dtype(dtype).name, selection.indices, selection.sizes), draw)

    def apply_padded(params, graph, sizes, salt=None, constants=None):
        return inner(params, graph, sizes=sizes, salt=salt,
                     blocks=blocks if constants is None else constants)

    def apply(params, graph, *, sizes: GraphSizes | None = None, salt=None) -> FeatureRows:
        if sizes is None:
            sizes = graph_sizes(graph)
        if salt is None:  # one compilation whether or not a salt is given
            salt = np.zeros(np.shape(graph.n_node), np.uint32)
        return apply_padded(params, graph, sizes=GraphSizes(*sizes), salt=salt)

    def num_rows(sizes: GraphSizes) -> int:
        force = 3 * int(sizes.max_atoms) if (kind == "force_exact" or (
            kind == "joint" and config.joint_force == "exact")) else int(config.num_probes)
        return {"energy": 1, "force_exact": force, "force_probe": force, "joint": 1 + force}[kind]

    return FeatureMap(config, fns.sketch.dim, fns.selection.num_params, apply_padded, apply,
                      num_rows, blocks)


def _dummy_graph():
    import jraph
    n = 3
    return jraph.GraphsTuple(
        nodes={"positions": np.array([[0.0, 0, 0], [1.0, 0, 0], [0, 0, 0]]),
               "numbers": np.zeros((n,), np.int32), "forces": np.zeros((n, 3)),
               "free": np.ones((n,), bool)},
        edges={"shifts": np.zeros((2, 3))},
        globals={"energy": np.zeros(2), "has_energy": np.zeros(2, bool),
                 "has_forces": np.zeros(2, bool), "cell": np.zeros((2, 3, 3))},
        senders=np.array([0, 1], np.int32), receivers=np.array([1, 0], np.int32),
        n_node=np.array([2, 1], np.int32), n_edge=np.array([2, 0], np.int32))


def featurize(feature_map: FeatureMap, params, chunks: Iterable, *,
              salt_from_ids: bool = False) -> Iterator[tuple[np.ndarray, FeatureRows]]:
    """Stream ``(ids, FeatureRows)`` chunk by chunk (lazy; one chunk on device at a time).

    Args:
      feature_map: from :func:`make_feature_map`.
      params: model parameters.
      chunks: iterable of ``ntkal.data.Chunk`` (e.g. ``iterate_chunks(...)``).
      salt_from_ids: salt the probe tangents with each structure's stream id (independent
        probes per structure, reproducible for a given id); default: common probes.

    Yields:
      ``(ids (n_graph,) int64, FeatureRows)``; ids are -1 on padding slots.
    """
    for chunk in chunks:
        salt = np.asarray(chunk.ids) if salt_from_ids else None
        yield chunk.ids, feature_map.apply(params, chunk.graph, salt=salt)


def default_joint_weights(feature_map: FeatureMap, params, chunks: Iterable) -> KernelConfig:
    """The joint config with w_E, w_F set so the two blocks have equal average trace.

    Over the (training) structures x in ``chunks``:

    .. math::

        w_E = 1,\\qquad w_F = \\sqrt{ \\overline{‖φ_E(x)‖^2} \\,/\\, \\overline{‖Φ_F(x)‖_F^2} }

    so that mean tr K_E = mean tr K_F, the traces of the per-structure energy and force
    blocks of the joint kernel (an extensive energy would otherwise dominate a handful of
    force rows, or 3N force rows drown one energy row). The weights already in
    ``feature_map.config`` are divided out first, so any joint map can be passed.

    Args:
      feature_map: a ``kind="joint"`` map (its ``joint_force`` picks the force block).
      params: model parameters.
      chunks: iterable of ``ntkal.data.Chunk`` of the training set.

    Returns:
      ``dataclasses.replace(feature_map.config, w_energy=1.0, w_force=w_F)``; build the
      weighted map from it with :func:`make_feature_map`.
    """
    config = feature_map.config
    if config.kind != "joint":
        raise ValueError(f"default_joint_weights needs a joint feature map, got {config.kind!r}")
    e_sum = f_sum = 0.0
    count = 0
    for chunk in chunks:
        rows, mask = feature_map.apply(params, chunk.graph)
        sq = np.asarray(jnp.sum(jnp.where(mask[..., None], rows, 0.0) ** 2, axis=-1))
        real = np.asarray(mask[:, 0])
        e_sum += float(sq[real, 0].sum()) / config.w_energy ** 2
        f_sum += float(sq[real, 1:].sum()) / config.w_force ** 2
        count += int(real.sum())
    if count == 0 or f_sum <= 0.0:
        raise ValueError("no structures (or no free atoms) to set joint weights from")
    return dataclasses.replace(config, w_energy=1.0, w_force=math.sqrt(e_sum / f_sum))
