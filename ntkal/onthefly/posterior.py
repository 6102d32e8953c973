r"""The feature-space posterior of on-the-fly learning, held as a Cholesky factor.

With normalised feature rows Φ̂(t) (r × d per structure t) of the training set T and noise σ²:

.. math::

    A = \sum_{t∈T} Φ̂(t)^⊤ Φ̂(t) + σ^2 I_d = L L^⊤,
    \qquad σ^2(x) = σ^2 \operatorname{tr}\big(Φ̂(x) A^{-1} Φ̂(x)^⊤\big)
                  = σ^2 \lVert L^{-1} Φ̂(x)^⊤ \rVert_F^2 .

Adding a labelled structure adds its r rows X to A: A' = A + XᵀX. :func:`add_rows` updates L
by r rank-one Cholesky updates (O(r d²), no refactorisation and no refeaturisation of the
training set); :func:`posterior_from_rows` factorises from scratch (the reference). Both run
on the host in float64; :func:`variance` is a pure JAX function (jit/grad-friendly) for the
dynamics, in the dtype of its inputs.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

__all__ = ["CholeskyPosterior", "posterior_from_rows", "add_rows", "variance", "cholesky_update"]


class CholeskyPosterior(NamedTuple):
    """A = L Lᵀ (float64, host).

    Attributes:
      chol: (d, d) lower-triangular L.
      noise_var: σ² (relative to the feature unit, dimensionless).
      n_rows: training rows accumulated.
      n_structures: training structures accumulated.
    """

    chol: np.ndarray
    noise_var: float
    n_rows: int
    n_structures: int

    @property
    def dim(self) -> int:
        return int(self.chol.shape[0])


def _rows2d(rows) -> np.ndarray:
    rows = np.asarray(rows, np.float64)
    return rows.reshape(-1, rows.shape[-1])


def posterior_from_rows(rows, noise_var: float, *, n_structures: int | None = None,
                        dim: int | None = None) -> CholeskyPosterior:
    """Factorise A = Σ rowsᵀrows + σ²I from scratch.

    Args:
      rows: (..., d) normalised feature rows (padding rows must be zero), any leading shape.
      noise_var: σ² > 0.
      n_structures: structures the rows came from (bookkeeping; default: leading axis).
      dim: d when ``rows`` is empty.
    """
    if not noise_var > 0:
        raise ValueError(f"noise_var must be > 0, got {noise_var}")
    x = _rows2d(rows) if np.size(rows) else np.zeros((0, int(dim)))
    a = x.T @ x + noise_var * np.eye(x.shape[1])
    n_struct = int(np.shape(rows)[0]) if n_structures is None and np.ndim(rows) == 3 else (
        int(n_structures or 0))
    return CholeskyPosterior(np.linalg.cholesky(a), float(noise_var), int(np.count_nonzero(
        np.any(x != 0, axis=1))), n_struct)


def cholesky_update(chol: np.ndarray, x: np.ndarray) -> np.ndarray:
    """L' with L'L'ᵀ = L Lᵀ + x xᵀ (rank one, O(d²); L lower-triangular, float64)."""
    L = np.array(chol, np.float64, copy=True)
    x = np.array(x, np.float64, copy=True)
    d = L.shape[0]
    for k in range(d):
        lkk, xk = L[k, k], x[k]
        if xk == 0.0:
            continue
        r = np.hypot(lkk, xk)
        c, s = r / lkk, xk / lkk
        L[k, k] = r
        if k + 1 < d:
            L[k + 1:, k] = (L[k + 1:, k] + s * x[k + 1:]) / c
            x[k + 1:] = c * x[k + 1:] - s * L[k + 1:, k]
    return L


def add_rows(posterior: CholeskyPosterior, rows, *, n_structures: int = 1) -> CholeskyPosterior:
    """The posterior with the rows of newly labelled structures added (rank-r update).

    Args:
      posterior: the current posterior.
      rows: (..., d) normalised rows of the new structures (zero rows are skipped).
      n_structures: how many structures they belong to.
    """
    x = _rows2d(rows)
    if x.shape[1] != posterior.dim:
        raise ValueError(f"rows have width {x.shape[1]}, the posterior has d = {posterior.dim}")
    chol = posterior.chol
    added = 0
    for row in x:
        if np.any(row != 0):
            chol = cholesky_update(chol, row)
            added += 1
    return posterior._replace(chol=chol, n_rows=posterior.n_rows + added,
                              n_structures=posterior.n_structures + int(n_structures))


def variance(chol, noise_var, rows):
    """σ² ‖L⁻¹ rowsᵀ‖²_F: the posterior variance of one structure (scalar, pure JAX).

    Args:
      chol: (d, d) lower-triangular L (a JAX or numpy array).
      noise_var: σ².
      rows: (r, d) normalised feature rows of the structure (zero rows add nothing).
    """
    z = solve_triangular(chol, jnp.swapaxes(rows, -1, -2), lower=True)
    return noise_var * jnp.sum(z * z)
