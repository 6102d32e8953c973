r"""The feature-space posterior of on-the-fly learning, held as a Cholesky factor.

With normalised feature rows Φ̂(t) (r × d per structure t) of the training set T and noise σ²:

.. math::

    A = \sum_{t∈T} Φ̂(t)^⊤ Φ̂(t) + σ^2 I_d = L L^⊤,
    \qquad σ^2(x) = σ^2 \operatorname{tr}\big(Φ̂(x) A^{-1} Φ̂(x)^⊤\big)
                  = σ^2 \lVert L^{-1} Φ̂(x)^⊤ \rVert_F^2 .

Adding a labelled structure adds its r rows X to A: A' = A + XᵀX. :func:`add_rows` updates L
by r rank-one Cholesky updates (O(r d²), vectorised; no refactorisation and no refeaturisation of the
training set); :func:`posterior_from_rows` factorises from scratch (the reference). Both run
on the host in float64; :func:`variance` is a pure JAX function (jit/grad-friendly) for the
dynamics, in the dtype of its inputs.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular
from scipy.linalg import solve_triangular as solve_triangular_np  # scipy comes with jax

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
    if n_structures is None:
        n_structures = np.shape(rows)[0] if np.ndim(rows) == 3 else 0
    n_rows = np.count_nonzero(np.any(x != 0, axis=1))
    a = x.T @ x + noise_var * np.eye(x.shape[1])
    return CholeskyPosterior(np.linalg.cholesky(a), float(noise_var), int(n_rows), int(n_structures))


def cholesky_update(chol: np.ndarray, x: np.ndarray) -> np.ndarray:
    """L' with L'L'ᵀ = L Lᵀ + x xᵀ (rank one, O(d²), vectorised; L lower-triangular, float64).

    With w = L⁻¹x, L Lᵀ + x xᵀ = L (I + w wᵀ) Lᵀ and the Cholesky factor of I + w wᵀ is known in
    closed form: with t_0 = 1 and t_j = 1 + Σ_{i≤j} w_i², its diagonal is α_j = √(t_j / t_{j−1})
    and its entry (i, j), i > j, is w_i β_j with β_j = w_j / √(t_j t_{j−1}). Hence column j of L'
    is α_j L[:, j] + β_j Σ_{i>j} w_i L[:, i]: one triangular solve and a cumulative sum.
    """
    L = np.asarray(chol, np.float64)
    w = solve_triangular_np(L, np.asarray(x, np.float64), lower=True, check_finite=False)
    t = 1.0 + np.cumsum(w * w)
    t_prev = np.empty_like(t)
    t_prev[0], t_prev[1:] = 1.0, t[:-1]
    alpha = np.sqrt(t / t_prev)
    beta = w / np.sqrt(t * t_prev)
    prefix = np.cumsum(L * w, axis=1)
    return L * alpha + (prefix[:, -1:] - prefix) * beta


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
