r"""NTK feature maps of an MLIP: energy, force (exact and probe) and joint rows.

For a structure x with N atoms, parameters θ (selected subset θ_s, see
:mod:`ntkal.kernels.filters`) and a sketch S ∈ R^{P_s×d} (:mod:`ntkal.kernels.sketch`):

.. math::

    φ_E(x) &= Sᵀ ∇_{θ_s} E(x)                                   &∈ R^{1×d}   \\
    Φ_F(x) &= -Sᵀ ∂(∇_{θ_s} E)/∂r                               &∈ R^{3N×d}  \\
    Φ_F^{(k)}(x) &= [t_jᵀ Φ_F(x) / \sqrt{k}]_{j=1..k},\ t_j ∈ \{±1\}^{3N}   &∈ R^{k×d}  \\
    Φ_J(x) &= [w_E φ_E ; w_F Φ_F]

Row layouts (``FeatureRows.rows`` is ``(n_graph, r, d)``, ``row_mask`` ``(n_graph, r)``):

* ``energy``: r = 1; mask = real graph.
* ``force_exact``: r = 3·max_atoms; row ``3 i + α`` (i = atom index within its structure,
  α = x, y, z) is −Sᵀ∂(∇_θE)/∂r_{iα}, i.e. the NTK feature of the force component
  F_{iα} = −∂E/∂r_{iα}. Mask = real atom that is free (``nodes["free"]``); fixed-atom and
  padding rows are exactly zero.
* ``force_probe``: r = k; row j = −Sᵀ∂(∇_θE)/∂r · t_j / √k with t_j independent ±1 on the
  free real coordinates and 0 elsewhere, so E[Σ_j row_jᵀ row_j] = Φ_Fᵀ Φ_F (masked).
  Tangent entries of atom i of a graph with salt s are drawn from
  ``fold_in(fold_in(key, s), i)``, so they do not depend on the chunk's composition or
  padding. Without a salt every graph has s = 0: all structures share the same tangents
  (common random numbers, which steadies rankings); ``featurize(..., salt_from_ids=True)``
  salts with stream ids for independent probes per structure.
* ``joint``: r = 1 + r_F, the energy row first.

``max_atoms`` is a static per-chunk budget (:func:`ntkal.kernels.graph_sizes`). Every
feature is computed on the structure's own padded subgraph (:func:`split_graphs`), so no
feature depends on what else is in the chunk or how it is padded.

Derivative directions are evaluated ``direction_batch_size`` at a time (probe tangents with
``lax.map(batch_size=...)``; exact rows by a while loop over batches of the *free real*
coordinates only, so padding atom slots and fixed atoms cost nothing); graphs
``graph_batch_size`` at a time (``None`` = vmap). The last graph slot of a chunk (always
padding) is skipped.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import jraph

from ntkal.kernels.config import ForceFormulation, KernelConfig
from ntkal.kernels.filters import ParamSelection, select_params
from ntkal.kernels.sketch import Sketch, make_sketch
from ntkal.kernels.split import GraphSizes, split_graphs
from ntkal.models import with_positions

__all__ = ["FeatureRows", "NTKFunctions", "ntk_functions", "batched_map"]


class FeatureRows(NamedTuple):
    """Feature rows of one chunk.

    Attributes:
      rows: (n_graph, r, d) features; rows with ``row_mask`` False are exactly zero.
      row_mask: (n_graph, r) bool, True for meaningful rows.
    """

    rows: jax.Array
    row_mask: jax.Array


def batched_map(f: Callable, xs, batch_size: int | None):
    """``vmap(f)(xs)`` when ``batch_size`` is None or ≥ len(xs), else ``lax.map`` in batches."""
    n = jax.tree_util.tree_leaves(xs)[0].shape[0]
    if batch_size is None or batch_size >= n:
        return jax.vmap(f)(xs)
    return jax.lax.map(f, xs, batch_size=batch_size)


class NTKFunctions(NamedTuple):
    """Per-structure NTK building blocks (on one two-slot subgraph from ``split_graphs``).

    Attributes:
      selection: the parameter subset θ_s.
      sketch: the sketch S.
      energy_row: ``(params, lg, blocks) -> (d,)`` = Sᵀ∇_θE.
      directional: ``(params, lg, t, blocks) -> (d,)`` = −Sᵀ ∂(∇_θE)/∂r · t for a position
        tangent t (max_atoms + 1, 3), by the configured formulation (JVP or VJP).
      jacobian: ``(params, lg, blocks) -> (max_atoms + 1, 3, d)`` = −Sᵀ∂(∇_θE)/∂r by
        ``jax.jacfwd`` (the reference).
      row_and_directional: ``(params, lg, t, blocks) -> ((d,), (d,))`` = (Sᵀ∇_θE,
        −Sᵀ ∂(∇_θE)/∂r · t) from one forward-over-reverse pass: the primal of the JVP *is* the
        energy row, so the joint probe map gets its energy row for free.
    """

    selection: ParamSelection
    sketch: Sketch
    energy_row: Callable
    directional: Callable
    jacobian: Callable
    row_and_directional: Callable


def ntk_functions(model, config: KernelConfig, params) -> NTKFunctions:
    """The per-structure derivative functions for ``model`` and ``config``."""
    selection = select_params(params, config.param_filter)
    sketch = make_sketch(selection, config.sketch_dim, kind=config.sketch_kind, seed=config.seed,
                         hoist=config.hoist_sketch)

    def energy_of(theta, p, lg):
        return model.energy(selection.put(p, theta), lg)[0]

    def energy_row(p, lg, blocks):
        grads = jax.grad(energy_of)(selection.take(p), p, lg)
        return sketch.project(grads, blocks)

    def row_at(p, lg, blocks):
        return lambda pos: energy_row(p, with_positions(lg, pos), blocks)

    def row_and_directional(p, lg, t, blocks):
        pos = jnp.asarray(lg.nodes["positions"])
        row, slope = jax.jvp(row_at(p, lg, blocks), (pos,), (t.astype(pos.dtype),))
        return row, -slope

    def directional_jvp(p, lg, t, blocks):
        return row_and_directional(p, lg, t, blocks)[1]

    def directional_vjp(p, lg, t, blocks):
        pos = jnp.asarray(lg.nodes["positions"])

        def slope(theta):
            def e(r):
                return energy_of(theta, p, with_positions(lg, r))
            return jnp.vdot(jax.grad(e)(pos), t.astype(pos.dtype))

        return -sketch.project(jax.grad(slope)(selection.take(p)), blocks)

    def jacobian(p, lg, blocks):
        pos = jnp.asarray(lg.nodes["positions"])
        jac = jax.jacfwd(row_at(p, lg, blocks))(pos)  # (d, n, 3)
        return -jnp.moveaxis(jac, 0, -1)

    formulation = ForceFormulation(config.formulation)
    directional = directional_vjp if formulation is ForceFormulation.VJP else directional_jvp
    return NTKFunctions(selection, sketch, energy_row, directional, jacobian, row_and_directional)


def _force_mask(lg, m: int):
    """(m,) bool: atom slot is a real, free atom of the subgraph."""
    return (jnp.arange(m) < lg.n_node[0]) & jnp.asarray(lg.nodes["free"])[:m].astype(bool)


def make_ntk_apply(fns: NTKFunctions, config: KernelConfig, kind: str) -> Callable:
    """``apply(params, graph, sizes, salt=None, blocks=None) -> FeatureRows`` for an NTK
    ``kind`` (jittable; ``sizes`` static). ``blocks``: precomputed sketch blocks
    (``sketch.blocks(dtype)``), drawn inside the call when omitted."""
    formulation = ForceFormulation(config.formulation)
    k = int(config.num_probes)
    probe_key = jax.random.fold_in(jax.random.key(config.seed), 0x9E3779B9 & 0x7FFFFFFF)

    def energy_rows(p, lg, blocks):
        row = fns.energy_row(p, lg, blocks)
        return row[None, :], (lg.n_node[0] > 0)[None]

    def exact_rows(p, lg, blocks, m):
        mask = _force_mask(lg, m)
        row_mask = jnp.repeat(mask, 3)
        if formulation is ForceFormulation.JACFWD:
            rows = fns.jacobian(p, lg, blocks)[:m].reshape(3 * m, -1)
            return jnp.where(row_mask[:, None], rows, 0.0), row_mask
        dtype = lg.nodes["positions"].dtype
        # Only the free real coordinates are differentiated: their indices come first in
        # `order`, and a while loop runs ceil(n_dirs / B) steps of B directions each.
        n_rows = 3 * m
        batch = n_rows if config.direction_batch_size is None else min(
            int(config.direction_batch_size), n_rows)
        steps = -(-n_rows // batch)
        order = jnp.nonzero(row_mask, size=steps * batch, fill_value=n_rows)[0]
        n_dirs = jnp.sum(row_mask)

        def one(index):
            t = jax.nn.one_hot(index, 3 * (m + 1), dtype=dtype)
            return fns.directional(p, lg, t.reshape(m + 1, 3), blocks)

        def body(state):
            step, rows = state
            idx = jax.lax.dynamic_slice(order, (step * batch,), (batch,))
            new = jax.vmap(one)(idx)
            return step + 1, rows.at[idx].set(new, mode="drop")

        rows = jnp.zeros((n_rows, fns.sketch.dim), jnp.result_type(dtype, *fns.selection.take(p)))
        _, rows = jax.lax.while_loop(lambda st: st[0] * batch < n_dirs, body, (0, rows))
        return rows, row_mask

    def probe_rows(p, lg, blocks, m, salt, with_energy=False):
        """Probe rows (k, d) and mask; with ``with_energy`` also the energy row (d,) — from
        the primal of the same JVP passes when the formulation is JVP."""
        key = jax.random.fold_in(probe_key, salt)
        dtype = lg.nodes["positions"].dtype
        t = jax.vmap(lambda i: jax.random.rademacher(jax.random.fold_in(key, i), (k, 3), dtype))(
            jnp.arange(m))                                    # (m, k, 3)
        t = jnp.where(_force_mask(lg, m)[:, None, None], t, 0.0)
        t = jnp.concatenate([jnp.moveaxis(t, 1, 0), jnp.zeros((k, 1, 3), dtype)], axis=1)
        erow = None
        if formulation is ForceFormulation.JACFWD:
            rows = jnp.einsum("nad,jna->jd", fns.jacobian(p, lg, blocks), t)
        elif formulation is ForceFormulation.JVP and with_energy:
            primal, rows = batched_map(lambda tj: fns.row_and_directional(p, lg, tj, blocks), t,
                                       config.direction_batch_size)
            erow = primal[0]
        else:
            rows = batched_map(lambda tj: fns.directional(p, lg, tj, blocks), t,
                               config.direction_batch_size)
        if with_energy and erow is None:
            erow = fns.energy_row(p, lg, blocks)
        rows = rows / math.sqrt(k)
        real = jnp.broadcast_to(lg.n_node[0] > 0, (k,))
        rows = jnp.where(real[:, None], rows, 0.0)
        return (rows, real, erow) if with_energy else (rows, real)

    def per_graph(p, blocks, m, lg, salt):
        if kind == "energy":
            return energy_rows(p, lg, blocks)
        force_kind = kind if kind != "joint" else "force_" + config.joint_force
        if kind == "joint" and force_kind == "force_probe":
            frows, fmask, erow = probe_rows(p, lg, blocks, m, salt, with_energy=True)
            erow, emask = erow[None, :], (lg.n_node[0] > 0)[None]
        else:
            if force_kind == "force_exact":
                frows, fmask = exact_rows(p, lg, blocks, m)
            else:
                frows, fmask = probe_rows(p, lg, blocks, m, salt)
            if kind != "joint":
                return frows, fmask
            erow, emask = energy_rows(p, lg, blocks)
        w_e = jnp.asarray(config.w_energy, erow.dtype)
        w_f = jnp.asarray(config.w_force, frows.dtype)
        return (jnp.concatenate([w_e * erow, w_f * frows]), jnp.concatenate([emask, fmask]))

    def apply(params, graph: jraph.GraphsTuple, sizes: GraphSizes, salt=None, blocks=None):
        local = split_graphs(graph, sizes)
        leaves = fns.selection.take(params)
        dtype = jnp.result_type(*leaves)
        if blocks is not None:
            blocks = [jnp.asarray(b).astype(dtype) for b in blocks]
        elif fns.sketch.hoist:
            blocks = fns.sketch.blocks(dtype)
        m = int(sizes.max_atoms)
        n_graph = graph.n_node.shape[0]
        salt = (jnp.zeros((n_graph,), jnp.uint32) if salt is None
                else jnp.asarray(salt).astype(jnp.uint32))
        # The last slot of every chunk is padding (ntkal.data layout): never differentiated.
        real = jax.tree_util.tree_map(lambda x: x[:-1], (local, salt))
        rows, mask = batched_map(lambda xs: per_graph(params, blocks, m, xs[0], xs[1]), real,
                                 config.graph_batch_size)
        rows = jnp.concatenate([rows, jnp.zeros_like(rows[:1])])
        mask = jnp.concatenate([mask, jnp.zeros_like(mask[:1])])
        return FeatureRows(rows, mask)

    return apply
