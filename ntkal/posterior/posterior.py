"""Gaussian-process posterior in feature space, accumulated chunk by chunk.

With feature kernel :math:`k(x, x') = \\Phi(x)\\Phi(x')^\\top` (blocks of
``r x r`` for structures with ``r`` rows), weight prior :math:`w \\sim N(0, I)`
and observation noise :math:`\\sigma^2`, the posterior covariance of the
outputs of a candidate :math:`x` given training rows :math:`T` is

.. math::

   \\Sigma(x) = k(x,x) - k(x,T)(K_{TT} + \\sigma^2 I)^{-1} k(T,x)
             = \\sigma^2 \\, \\Phi(x) A^{-1} \\Phi(x)^\\top,
   \\qquad A = \\sum_{t \\in T} \\Phi(t)^\\top \\Phi(t) + \\sigma^2 I_d

(Woodbury).  ``A`` is ``d x d`` and is accumulated chunk by chunk in numpy
(``float64`` by default, independent of JAX's x64 flag); only its Cholesky
factor ``L`` (``A = L L^T``) and ``L^{-1}`` are stored.  Nothing of size
``n_T x n_P`` or ``n_P x n_P`` is ever formed.

Stages follow the ``(init, update, finalize)`` pattern::

    fns = feature_posterior(noise_var=1e-2)
    state = fns.init(d)
    for chunk in train_chunks:
        state = fns.update(chunk, state)
    post = fns.finalize(state)          # -> Posterior
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable, Iterable, NamedTuple

import numpy as np
from scipy.linalg import solve_triangular  # scipy is a dependency of jax

from ntkal.posterior._chunk import FeatureChunk

__all__ = [
    "PosteriorConfig",
    "PrecisionState",
    "Posterior",
    "PosteriorFns",
    "feature_posterior",
    "fit_posterior",
    "cholesky_with_jitter",
    "evidence_noise_var",
]


@dataclasses.dataclass(frozen=True)
class PosteriorConfig:
    """Hyperparameters of the feature-space posterior.

    Attributes:
      noise_var: observation noise variance :math:`\\sigma^2` (> 0), in the
        squared units of the targets (e.g. eV^2 for energies).
      dtype: numpy dtype of the ``d x d`` accumulation and factorisation.
      jitter: first relative jitter tried when the Cholesky fails; it is
        multiplied by 10 on each retry (absolute jitter = ``jitter * mean(diag A)``).
      max_tries: number of jittered retries before giving up.
    """

    noise_var: float = 1e-2
    dtype: type = np.float64
    jitter: float = 1e-10
    max_tries: int = 8

    def __post_init__(self):
        if not self.noise_var > 0:
            raise ValueError(f"noise_var must be > 0, got {self.noise_var}")


class PrecisionState(NamedTuple):
    """Running sum ``A = sum Phi^T Phi + sigma^2 I``."""

    precision: np.ndarray  # shape=(d, d), dtype=config.dtype
    n_rows: int  # number of valid training rows accumulated
    n_graphs: int  # number of valid training structures accumulated


class Posterior(NamedTuple):
    """Factorised posterior, small enough to replicate on every device.

    Attributes:
      chol: ``(d, d)`` lower Cholesky factor ``L`` of ``A`` (possibly jittered).
      chol_inv: ``(d, d)`` ``L^{-1}``; whitened rows are ``sigma * L^{-1} phi``.
      noise_var: :math:`\\sigma^2`.
      jitter: absolute jitter that was added to the diagonal (0 if none).
      n_rows: number of training rows in ``A``.
    """

    chol: np.ndarray
    chol_inv: np.ndarray
    noise_var: float
    jitter: float
    n_rows: int

    @property
    def dim(self) -> int:
        return self.chol.shape[0]


class PosteriorFns(NamedTuple):
    init: Callable[[int], PrecisionState]
    update: Callable[[FeatureChunk, PrecisionState], PrecisionState]
    finalize: Callable[[PrecisionState], Posterior]


def cholesky_with_jitter(a: np.ndarray, *, jitter: float = 1e-10, max_tries: int = 8):
    """Cholesky factor of a symmetric PSD matrix, adding diagonal jitter on failure.

    Returns:
      ``(L, added)``: lower factor and the absolute jitter added (0.0 if none).
      A ``RuntimeWarning`` states the jitter whenever it is nonzero.

    Raises:
      np.linalg.LinAlgError: if all ``max_tries`` retries fail.
    """
    try:
        return np.linalg.cholesky(a), 0.0
    except np.linalg.LinAlgError:
        pass
    scale = float(np.mean(np.abs(np.diag(a)))) or 1.0
    eye = np.eye(a.shape[0], dtype=a.dtype)
    rel = jitter
    for _ in range(max_tries):
        added = rel * scale
        try:
            chol = np.linalg.cholesky(a + added * eye)
        except np.linalg.LinAlgError:
            rel *= 10.0
            continue
        warnings.warn(
            f"Cholesky of the {a.shape[0]}x{a.shape[0]} posterior precision failed; "
            f"added jitter {added:.3e} to the diagonal ({rel:.1e} x mean diagonal).",
            RuntimeWarning,
            stacklevel=3,
        )
        return chol, added
    raise np.linalg.LinAlgError(
        f"Cholesky failed even with jitter {rel / 10 * scale:.3e} after {max_tries} tries"
    )


def feature_posterior(noise_var: float = 1e-2, **config_kwargs) -> PosteriorFns:
    """Factory for the chunked feature-space posterior.

    Args:
      noise_var: :math:`\\sigma^2`.
      **config_kwargs: other :class:`PosteriorConfig` fields.

    Returns:
      :class:`PosteriorFns` ``(init, update, finalize)``:

      * ``init(d) -> PrecisionState`` with ``A = sigma^2 I_d``;
      * ``update(chunk, state) -> state`` adds ``sum Phi^T Phi`` over the
        chunk's valid rows of valid graphs (``O(n r d^2)``);
      * ``finalize(state) -> Posterior`` factorises ``A`` (jitter retry).

    Examples:
      >>> import numpy as np
      >>> from ntkal.posterior import feature_posterior, chunk_from_arrays
      >>> fns = feature_posterior(noise_var=0.1)
      >>> s = fns.update(chunk_from_arrays(np.ones((2, 1, 3))), fns.init(3))
      >>> fns.finalize(s).dim
      3
    """
    cfg = PosteriorConfig(noise_var=noise_var, **config_kwargs)

    def init(d: int) -> PrecisionState:
        if d <= 0:
            raise ValueError(f"feature dimension must be positive, got {d}")
        return PrecisionState(np.eye(d, dtype=cfg.dtype) * cfg.dtype(cfg.noise_var), 0, 0)

    def update(chunk: FeatureChunk, state: PrecisionState) -> PrecisionState:
        rows = np.asarray(chunk.rows)
        d = state.precision.shape[0]
        if rows.ndim != 3 or rows.shape[-1] != d:
            raise ValueError(
                f"feature dimension mismatch: posterior has d={d}, chunk rows have shape {rows.shape}"
            )
        valid_g = np.asarray(chunk.ids) >= 0
        keep = np.asarray(chunk.row_mask, bool) & valid_g[:, None]
        x = rows[keep].astype(cfg.dtype, copy=False)  # (n_valid_rows, d)
        return PrecisionState(
            state.precision + x.T @ x, state.n_rows + x.shape[0], state.n_graphs + int(valid_g.sum())
        )

    def finalize(state: PrecisionState) -> Posterior:
        a = 0.5 * (state.precision + state.precision.T)
        chol, added = cholesky_with_jitter(a, jitter=cfg.jitter, max_tries=cfg.max_tries)
        eye = np.eye(a.shape[0], dtype=cfg.dtype)
        chol_inv = _solve_lower(chol, eye)
        return Posterior(chol, chol_inv, float(cfg.noise_var), float(added), state.n_rows)

    return PosteriorFns(init, update, finalize)


def fit_posterior(
    train_chunks: Iterable[FeatureChunk], d: int, *, noise_var: float = 1e-2, **config_kwargs
) -> Posterior:
    """Accumulate ``A`` over an iterable of training chunks and factorise it.

    An empty iterable gives the prior (``A = sigma^2 I``).
    """
    fns = feature_posterior(noise_var, **config_kwargs)
    state = fns.init(d)
    for chunk in train_chunks:
        state = fns.update(chunk, state)
    return fns.finalize(state)


def _solve_lower(lower: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve ``L X = B`` for lower-triangular ``L``."""
    return solve_triangular(lower, b, lower=True)


def evidence_noise_var(rows: np.ndarray, targets: np.ndarray, *,
                       grid: np.ndarray | None = None) -> float:
    """σ² (relative to the prior weight variance) that maximises the marginal likelihood.

    Model: ``y = Φ w + ε`` with ``w ~ N(0, s I_d)`` and ``ε ~ N(0, σ_n² I)``; with
    λ = σ_n²/s the evidence, with ``s`` profiled out (``ŝ = yᵀ(ΦΦᵀ + λI)⁻¹y / n``), is

    .. math:: \\log p(y) = -\\tfrac{n}{2}\\log ŝ - \\tfrac12 \\log|ΦΦᵀ + λ I| + \\mathrm{const},

    evaluated through one eigendecomposition of the ``n x n`` Gram matrix for every λ of
    ``grid`` (default ``10^-9 … 10^1``, 101 points). The returned λ is the ``noise_var`` of
    :func:`fit_posterior` for features scaled like ``rows``.

    Args:
      rows: ``(n, d)`` feature rows of the labelled structures (one target each).
      targets: ``(n,)`` residuals to explain (e.g. label − prediction of the model whose
        gradients the rows are), in the same scaling as the rows.

    Returns:
      λ from ``grid`` (float).
    """
    rows = np.asarray(rows, np.float64)
    y = np.asarray(targets, np.float64).reshape(-1)
    if rows.ndim != 2 or rows.shape[0] != y.shape[0]:
        raise ValueError(f"rows must be (n, d) with one target each; got {rows.shape} and {y.shape}")
    if y.shape[0] < 2 or not np.all(np.isfinite(y)) or not np.any(y):
        raise ValueError("need at least 2 finite, not all-zero targets to choose σ² by evidence")
    grid = np.logspace(-9, 1, 101) if grid is None else np.asarray(grid, np.float64)
    mu, u = np.linalg.eigh(rows @ rows.T)
    mu = np.maximum(mu, 0.0)
    proj = (u.T @ y) ** 2
    n = y.shape[0]
    s_hat = (proj[None, :] / (mu[None, :] + grid[:, None])).sum(1) / n
    log_ev = -0.5 * n * np.log(s_hat) - 0.5 * np.log(mu[None, :] + grid[:, None]).sum(1)
    return float(grid[int(np.argmax(log_ev))])
