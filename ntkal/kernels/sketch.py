r"""Seeded random sketches S ∈ R^{P_s×d}, applied leaf by leaf.

.. math::

    Sᵀ g = \sum_{\ell \in \text{selected leaves}} S_\ell^{\top} \operatorname{vec}(g_\ell),
    \qquad S_\ell = \text{draw}(\text{fold\_in}(\text{key}, \ell), (p_\ell, d)) / \sqrt{d}

with entries N(0, 1) (``"gaussian"``) or ±1 (``"rademacher"``), so E[S Sᵀ] = I and
E[(Sᵀg)·(Sᵀg')] = g·g'. The block of leaf ℓ depends only on (key, ℓ, its shape, d), where
ℓ is the leaf's index in the *full* ``params["net"]`` — the same leaf gets the same block
whatever the filter. The whole P_s×d matrix never has to exist at once: with
``hoist=False`` each block is drawn inside the projection (so inside every direction step
of the force features), holding one leaf's block at a time.

``d=None`` is the identity ("unsketched", d = P_s): the gradient leaves are flattened and
concatenated in selection order.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from ntkal.kernels.filters import ParamSelection

__all__ = ["Sketch", "make_sketch", "HOIST_MAX_ENTRIES"]

#: ``hoist_sketch=None`` keeps all blocks in memory when P_s·d is at most this many entries.
HOIST_MAX_ENTRIES = 2**26


class Sketch(NamedTuple):
    """A sketch as pure functions.

    Attributes:
      dim: d (= P_s when unsketched).
      blocks: ``blocks(dtype) -> list`` of the (p_ℓ, d) blocks (or ``None`` when unsketched);
        call once inside a jitted function and pass the result to ``project``.
      project: ``project(grads, blocks=None) -> (d,)`` — ``grads`` is the list of selected
        gradient leaves (no batch axis; vmap it). With ``blocks=None`` the blocks are drawn
        on the fly, leaf by leaf.
      hoist: whether feature maps should draw the blocks once per call.
    """

    dim: int
    blocks: Callable
    project: Callable
    hoist: bool


def make_sketch(selection: ParamSelection, sketch_dim: int | None, *, kind: str = "gaussian",
                seed: int = 0, hoist: bool | None = None) -> Sketch:
    """Build the sketch for ``selection``.

    Args:
      selection: the parameter subset θ_s (see :func:`ntkal.kernels.select_params`).
      sketch_dim: d, or ``None`` for the identity.
      kind: ``"gaussian"`` or ``"rademacher"``.
      seed: PRNG seed of the blocks.
      hoist: see :class:`ntkal.kernels.KernelConfig` (``hoist_sketch``).

    Returns:
      A :class:`Sketch`.
    """
    if sketch_dim is None:
        def project(grads, blocks=None):
            return jnp.concatenate([jnp.ravel(g) for g in grads])
        return Sketch(dim=selection.num_params, blocks=lambda dtype: None, project=project,
                      hoist=False)

    d = int(sketch_dim)
    if hoist is None:
        hoist = selection.num_params * d <= HOIST_MAX_ENTRIES
    key = jax.random.key(seed)
    scale = 1.0 / math.sqrt(d)

    def block(index, size, dtype):
        k = jax.random.fold_in(key, index)
        if kind == "gaussian":
            return jax.random.normal(k, (size, d), dtype) * jnp.asarray(scale, dtype)
        if kind == "rademacher":
            return jax.random.rademacher(k, (size, d), dtype) * jnp.asarray(scale, dtype)
        raise ValueError(f"unknown sketch kind {kind!r}")

    def blocks(dtype):
        return [block(i, s, dtype) for i, s in zip(selection.indices, selection.sizes)]

    def project(grads, blocks=None):
        dtype = grads[0].dtype
        out = jnp.zeros((d,), dtype)
        for n, (i, s, g) in enumerate(zip(selection.indices, selection.sizes, grads)):
            b = blocks[n] if blocks is not None else block(i, s, dtype)
            out = out + jnp.ravel(g) @ b
        return out

    return Sketch(dim=d, blocks=blocks, project=project, hoist=bool(hoist))
