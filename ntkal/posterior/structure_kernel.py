"""Kernels between structures with multi-row features (``r >= 1``).

A structure ``x`` carries ``r`` feature rows ``Phi(x)`` (``r x d``; padded
rows are zero).  Distance-based selectors need a scalar kernel between
structures; two are provided (:class:`StructureKernel`):

``TRACE`` (default)
  .. math:: k(x, x') = \\operatorname{tr}(\\Phi(x)\\Phi(x')^\\top)
            = \\sum_{i=1}^{r} \\phi_i(x) \\cdot \\phi_i(x')
            = \\langle \\Phi(x), \\Phi(x') \\rangle_F

  i.e. the feature map is the flattened ``r x d`` matrix and the squared
  distance is the Frobenius norm :math:`\\|\\Phi(x) - \\Phi(x')\\|_F^2`.
  Rows are matched by index (row ``i`` of ``x`` with row ``i`` of ``x'``).
  For ``r = 1`` this is the linear kernel ``phi . phi'``; on whitened rows it
  is the trace of the ``r x r`` posterior covariance block, consistent with
  ``pv(x) = k(x, x)``.

``HS`` (Hilbert-Schmidt)
  .. math:: k(x, x') = \\langle \\Phi(x)^\\top\\Phi(x), \\Phi(x')^\\top\\Phi(x')\\rangle_{HS}
            = \\|\\Phi(x)\\Phi(x')^\\top\\|_F^2

  i.e. each structure is represented by its ``d x d`` precision
  contribution.  Invariant to permutations (and any orthogonal mixing) of a
  structure's rows, e.g. atom relabelling; for ``r = 1`` it is
  ``(phi . phi')^2``.  Costs ``O(r^2 d)`` per pair.

Squared distances are :math:`k(x,x) + k(x',x') - 2k(x,x')`, clamped at 0.
"""

from __future__ import annotations

import enum

import jax.numpy as jnp

__all__ = ["StructureKernel", "kernel_diag", "kernel_to", "kernel_cross", "sq_dist_to"]


class StructureKernel(str, enum.Enum):
    TRACE = "trace"
    HS = "hs"


def kernel_diag(x: jnp.ndarray, kind: StructureKernel) -> jnp.ndarray:
    """``k(x, x)`` for a block ``x`` of shape ``(n, r, d)`` -> ``(n,)``."""
    kind = StructureKernel(kind)
    if kind is StructureKernel.TRACE:
        return jnp.sum((x * x).reshape(x.shape[0], -1), axis=1)
    g = jnp.einsum("nrd,nsd->nrs", x, x)
    return jnp.sum(g * g, axis=(1, 2))


def kernel_to(x: jnp.ndarray, c: jnp.ndarray, kind: StructureKernel) -> jnp.ndarray:
    """``k(x_n, c)`` for ``x`` ``(n, r, d)`` and one structure ``c`` ``(r, d)`` -> ``(n,)``."""
    kind = StructureKernel(kind)
    n, r, d = x.shape
    if kind is StructureKernel.TRACE:
        return x.reshape(n, r * d) @ c.reshape(r * d)  # plain GEMV (einsum lowers poorly on CPU)
    g = x.reshape(n * r, d) @ c.T
    return jnp.sum((g * g).reshape(n, -1), axis=1)


def kernel_cross(x: jnp.ndarray, c: jnp.ndarray, kind: StructureKernel) -> jnp.ndarray:
    """``k(x_n, c_t)`` for ``x`` ``(n, r, d)`` and ``c`` ``(t, r, d)`` -> ``(n, t)`` (one matmul)."""
    kind = StructureKernel(kind)
    n, r, d = x.shape
    if kind is StructureKernel.TRACE:
        return x.reshape(n, r * d) @ c.reshape(c.shape[0], r * d).T
    g = jnp.einsum("nrd,tsd->ntrs", x, c)
    return jnp.sum(g * g, axis=(2, 3))


def sq_dist_to(x: jnp.ndarray, x_diag: jnp.ndarray, c: jnp.ndarray, kind: StructureKernel) -> jnp.ndarray:
    """Squared kernel distance from each of ``x`` ``(n, r, d)`` to ``c`` ``(r, d)``.

    Args:
      x_diag: ``(n,)`` precomputed :func:`kernel_diag` of ``x``.
    """
    c_diag = kernel_diag(c[None], kind)[0]
    return jnp.maximum(x_diag + c_diag - 2.0 * kernel_to(x, c, kind), 0.0)
