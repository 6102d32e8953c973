"""Posterior-variance scores of feature rows, with per-structure reductions.

For a structure with rows :math:`\\phi_1, \\dots, \\phi_r` (``d``-vectors) the
per-row posterior variance is

.. math::

   v_i = \\sigma^2 \\, \\phi_i^\\top A^{-1} \\phi_i = \\| z_i \\|^2,
   \\qquad z_i = \\sigma L^{-1} \\phi_i

(``z`` are the *whitened* rows: ``z_i . z_j`` is the posterior covariance of
rows ``i`` and ``j``).  ``pv(x) = sigma^2 tr(Phi A^{-1} Phi^T) = sum_i v_i``.

Reductions over the valid rows of one structure (padded rows never count):

* ``"total"`` -- :math:`\\sum_i v_i` (the trace, default),
* ``"mean"``  -- :math:`\\frac{1}{n_{valid}} \\sum_i v_i` (e.g. per-atom mean),
* ``"max"``   -- :math:`\\max_i v_i`.

Row groups: pass ``row_groups`` (``(r,)`` ints in ``[0, G)``) to reduce each
group separately, then combine with ``group_weights`` (``(G,)``, default
ones): ``score = sum_g w_g * reduce_{i in g} v_i``.  For joint features
(row 0 = energy, rows 1.. = forces) ``row_groups = [0, 1, 1, ...]`` with
``reduction="mean"`` gives ``pv_energy + mean_rows pv_force``; add
``row_units`` (``ScoreConfig``) to reduce over atoms (sum of an atom's x, y, z
rows) instead of over rows.

All functions here are pure ``jax.numpy`` and safe under ``jit`` and
``shard_map``; the posterior enters as an explicit array argument so it can be
replicated across devices.  Scores are ``-inf`` for padded graphs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from ntkal.posterior._chunk import FeatureChunk, masked_rows
from ntkal.posterior.posterior import Posterior

__all__ = [
    "ScoreConfig",
    "compute_dtype",
    "whiten",
    "pv_rows",
    "reduce_rows",
    "pv_scores",
    "posterior_arrays",
]

from ntkal.posterior.names import REDUCTIONS as _REDUCTIONS  # noqa: E402


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    """How per-row variances become one score per structure.

    Attributes:
      reduction: ``"total"``, ``"mean"`` or ``"max"`` (see module docstring).
      row_groups: ``None`` or a tuple of ``r`` ints in ``[0, n_groups)``.
      group_weights: ``None`` (ones) or a tuple of ``n_groups`` floats.
      row_units: ``None`` (every row its own unit) or a tuple of ``r`` unit ids
        (e.g. the atom index of each force row): the variances of a unit's
        valid rows are summed first and the reduction then runs over units,
        e.g. ``row_units = (0,0,0, 1,1,1, ...)`` with ``"mean"``/``"max"``
        gives the mean / max over atoms of the per-atom trace (x+y+z).  All
        rows of a unit must share a group; a unit counts as valid if any of
        its rows is.

    Changing any field recompiles the jitted scorers (they are static).
    """

    reduction: str = "total"
    row_groups: Optional[tuple] = None
    group_weights: Optional[tuple] = None
    row_units: Optional[tuple] = None

    def __post_init__(self):
        if self.reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {self.reduction!r}")
        if self.row_groups is not None:
            object.__setattr__(self, "row_groups", tuple(int(g) for g in self.row_groups))
            if min(self.row_groups) < 0:
                raise ValueError("row_groups must be non-negative")
        if self.group_weights is not None:
            object.__setattr__(self, "group_weights", tuple(float(w) for w in self.group_weights))
            if self.row_groups is None or len(self.group_weights) != self.n_groups:
                raise ValueError("group_weights needs row_groups with one weight per group")
        if self.row_units is not None:
            object.__setattr__(self, "row_units", tuple(int(u) for u in self.row_units))
            if min(self.row_units) < 0:
                raise ValueError("row_units must be non-negative")
            if self.row_groups is not None:
                if len(self.row_groups) != len(self.row_units):
                    raise ValueError("row_units and row_groups must both have r entries")
                seen = {}
                for u, g in zip(self.row_units, self.row_groups):
                    if seen.setdefault(u, g) != g:
                        raise ValueError(f"rows of unit {u} belong to different groups")

    @property
    def n_groups(self) -> int:
        return 1 if self.row_groups is None else max(self.row_groups) + 1


def compute_dtype(dtype=None):
    """The float dtype JAX computations run in: ``float64`` if x64 is enabled."""
    return jax.dtypes.canonicalize_dtype(np.float64 if dtype is None else dtype)


def posterior_arrays(posterior: Posterior, dtype=None):
    """``(chol_inv_T, sigma)`` as JAX arrays: the replicated posterior.

    ``chol_inv_T`` is ``(d, d)`` ``L^{-T}`` so whitened rows are
    ``sigma * rows @ chol_inv_T``.
    """
    dt = compute_dtype(dtype)
    return (
        jnp.asarray(np.ascontiguousarray(posterior.chol_inv.T), dtype=dt),
        jnp.asarray(np.sqrt(posterior.noise_var), dtype=dt),
    )


def whiten(chunk: FeatureChunk, chol_inv_t: jnp.ndarray, sigma: jnp.ndarray) -> jnp.ndarray:
    """Whitened rows ``z = sigma * L^{-1} phi``, ``(n_graph, r, d)``, padded rows 0.

    ``z(x) z(x')^T`` is the ``r x r`` posterior covariance block between ``x``
    and ``x'``.  With an empty training set (``A = sigma^2 I``), ``z = phi``.
    """
    d = chol_inv_t.shape[0]
    if chunk.rows.shape[-1] != d:
        raise ValueError(
            f"feature dimension mismatch: posterior has d={d}, rows have shape {chunk.rows.shape}"
        )
    x = masked_rows(chunk, chol_inv_t.dtype)
    n, r, _ = x.shape
    return sigma * (x.reshape(n * r, d) @ chol_inv_t).reshape(n, r, d)


@jax.jit
def pv_rows(chunk: FeatureChunk, chol_inv_t: jnp.ndarray, sigma: jnp.ndarray) -> jnp.ndarray:
    """Per-row posterior variance ``(n_graph, r)``; 0 for padded rows/graphs."""
    z = whiten(chunk, chol_inv_t, sigma)
    return jnp.sum(z * z, axis=-1)


def reduce_rows(values: jnp.ndarray, row_mask: jnp.ndarray, config: ScoreConfig) -> jnp.ndarray:
    """Reduce per-row values ``(n, r)`` to one score ``(n,)`` per structure.

    Invalid rows (``row_mask == False``) are ignored; a group without valid rows
    contributes 0.
    """
    n, r = values.shape
    groups = np.zeros(r, np.int32) if config.row_groups is None else np.asarray(config.row_groups)
    if groups.shape != (r,):
        raise ValueError(f"row_groups has {groups.shape[0]} entries but features have r={r} rows")
    if config.row_units is not None:  # sum rows into units (e.g. atoms), then reduce over units
        units = np.asarray(config.row_units)
        if units.shape != (r,):
            raise ValueError(f"row_units has {units.shape[0]} entries but features have r={r} rows")
        uniq, first = np.unique(units, return_index=True)
        to_unit = jnp.asarray(units[:, None] == uniq[None, :], values.dtype)  # (r, U)
        values = jnp.where(row_mask, values, 0) @ to_unit
        row_mask = (row_mask.astype(values.dtype) @ to_unit) > 0
        groups = groups[first]
        r = len(uniq)
    n_groups = config.n_groups
    onehot = jnp.asarray(groups[:, None] == np.arange(n_groups)[None, :])  # (r, G)
    member = row_mask[:, :, None] & onehot[None]  # (n, r, G)
    zero = jnp.zeros((), values.dtype)
    if config.reduction == "max":
        per = jnp.max(jnp.where(member, values[:, :, None], -jnp.inf), axis=1)
        per = jnp.where(jnp.isfinite(per), per, zero)
    else:
        per = jnp.sum(jnp.where(member, values[:, :, None], zero), axis=1)
        if config.reduction == "mean":
            cnt = jnp.sum(member, axis=1).astype(values.dtype)
            per = jnp.where(cnt > 0, per / jnp.maximum(cnt, 1), zero)
    weights = np.ones(n_groups) if config.group_weights is None else np.asarray(config.group_weights)
    return per @ jnp.asarray(weights, values.dtype)


@functools.partial(jax.jit, static_argnames=("config",))
def pv_scores(
    chunk: FeatureChunk,
    chol_inv_t: jnp.ndarray,
    sigma: jnp.ndarray,
    config: ScoreConfig = ScoreConfig(),
) -> jnp.ndarray:
    """Posterior-variance score per structure, ``(n_graph,)``; ``-inf`` for padded graphs.

    Args:
      chunk: :class:`FeatureChunk` with rows ``(n_graph, r, d)``.
      chol_inv_t: ``(d, d)`` ``L^{-T}`` from :func:`posterior_arrays`.
      sigma: scalar noise standard deviation.
      config: :class:`ScoreConfig` (static).

    Examples:
      >>> import numpy as np
      >>> from ntkal.posterior import fit_posterior, chunk_from_arrays
      >>> from ntkal.posterior import posterior_arrays, pv_scores
      >>> post = fit_posterior([], 2, noise_var=1.0)   # prior: pv = |phi|^2
      >>> c = chunk_from_arrays(np.array([[[3.0, 4.0]]]))
      >>> float(pv_scores(c, *posterior_arrays(post))[0])
      25.0
    """
    v = pv_rows(chunk, chol_inv_t, sigma)
    s = reduce_rows(v, chunk.row_mask, config)
    return jnp.where(chunk.ids >= 0, s, -jnp.inf)
