"""Feature normalisation before the posterior: what "one unit of kernel diagonal" means.

The posterior variance ``pv(x) = σ² tr(Φ(x) A⁻¹ Φ(x)ᵀ)`` of a structure that the training
set says nothing about equals its prior diagonal ``tr(Φ(x)Φ(x)ᵀ) = ‖Φ(x)‖²_F``; a structure
*in* the training set keeps up to ``σ²`` per row. When feature norms spread over orders of
magnitude (force-NTK rows of relaxation frames with 10 eV/Å forces), the ranking is decided by
the norm, not by novelty, and ``σ²`` relative to the *mean* diagonal sits far above the typical
structure's diagonal. The modes here fix the unit:

* ``"mean_trace"`` — divide every row by ``sqrt(mean_t ‖Φ(t)‖²_F)`` over the training set
  (the original rule; outliers set the unit).
* ``"median_trace"`` — the same with the median (robust to a few huge-norm structures).
* ``"per_structure"`` — divide each structure's rows of each row group by that group's own
  Frobenius norm (a cosine kernel per block): every structure's prior diagonal is exactly
  ``n_groups`` and pv measures only how far the feature *direction* is from the training set.

Row groups: joint features (row 0 = energy, rows 1.. = force probes) are normalised per group
so that neither block dominates; ``group_weights`` then set the blocks' relative weight.
All functions are pure (numpy/JAX arrays in, arrays out) and see feature rows only.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from ntkal.posterior._chunk import FeatureChunk

__all__ = ["NORMALIZATIONS", "FeatureScale", "fit_feature_scale", "apply_feature_scale",
           "structure_traces"]

from ntkal.posterior.names import NORMALIZATIONS  # noqa: E402  (re-exported)


class FeatureScale(NamedTuple):
    """A fitted normalisation (apply the same one to training and pool features).

    Attributes:
      mode: one of :data:`NORMALIZATIONS`.
      scale: global divisor of all rows (1.0 for ``per_structure``).
      group_weights: ``(r,)`` per-row multipliers applied after normalisation (the joint
        block weights), or ``None``.
      row_groups: ``(r,)`` group id of each row (``per_structure`` normalises each group),
        or ``None`` (one group).
    """

    mode: str
    scale: float
    group_weights: Optional[np.ndarray]
    row_groups: Optional[np.ndarray]


def structure_traces(chunk: FeatureChunk, row_groups: Optional[Sequence[int]] = None) -> np.ndarray:
    """Squared Frobenius norm per structure and row group, ``(n_graph, n_groups)``; padded rows 0."""
    rows = np.asarray(chunk.rows, np.float64)
    mask = np.asarray(chunk.row_mask, bool) & (np.asarray(chunk.ids) >= 0)[:, None]
    sq = np.where(mask, np.sum(rows * rows, axis=-1), 0.0)  # (n, r)
    groups = np.zeros(rows.shape[1], int) if row_groups is None else np.asarray(row_groups)
    onehot = groups[:, None] == np.arange(groups.max() + 1)[None, :]
    return sq @ onehot


def fit_feature_scale(train: FeatureChunk, mode: str = "per_structure", *,
                      row_groups: Optional[Sequence[int]] = None,
                      group_weights: Optional[Sequence[float]] = None) -> FeatureScale:
    """Fit the normalisation of ``mode`` on training features.

    Args:
      train: training features, rows ``(n_T, r, d)``.
      mode: one of :data:`NORMALIZATIONS`.
      row_groups: ``(r,)`` group of each row (e.g. ``[0, 1, 1, ...]`` for joint features).
      group_weights: ``(n_groups,)`` weight of each group; ``None`` = ones. For the trace
        modes with joint features, ``"equalise"`` is handled by the caller (see
        :func:`ntkal.loop.scale_training_features`).

    Returns:
      A :class:`FeatureScale`.
    """
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalisation must be one of {NORMALIZATIONS}, got {mode!r}")
    r = np.shape(train.rows)[1]
    groups = None if row_groups is None else np.asarray(row_groups, int)
    if groups is not None and groups.shape != (r,):
        raise ValueError(f"row_groups has {groups.shape} entries, features have r={r} rows")
    weights = None
    if group_weights is not None:
        gw = np.asarray(group_weights, np.float64)
        weights = gw[groups] if groups is not None else np.full(r, gw[0])
    if mode == "per_structure":
        return FeatureScale(mode, 1.0, weights, groups)
    scaled = train if weights is None else train._replace(rows=np.asarray(train.rows) * weights[None, :, None])
    valid = np.asarray(train.ids) >= 0
    trace = structure_traces(scaled).sum(-1)[valid]
    if trace.size == 0:
        center = 1.0
    else:
        center = float(np.mean(trace) if mode == "mean_trace" else np.median(trace))
    return FeatureScale(mode, float(np.sqrt(max(center, 1e-30))), weights, groups)


def apply_feature_scale(chunk: FeatureChunk, fs: FeatureScale) -> FeatureChunk:
    """``chunk`` with rows normalised by ``fs`` (works on numpy or JAX arrays, keeps the device)."""
    rows = jnp.asarray(chunk.rows)
    if fs.mode == "per_structure":
        mask = jnp.asarray(chunk.row_mask, bool)
        sq = jnp.where(mask, jnp.sum(rows * rows, axis=-1), 0.0)  # (n, r)
        r = rows.shape[1]
        groups = np.zeros(r, int) if fs.row_groups is None else fs.row_groups
        onehot = jnp.asarray(groups[:, None] == np.arange(groups.max() + 1)[None, :], rows.dtype)
        per_group = sq @ onehot  # (n, G)
        per_row = per_group @ onehot.T  # (n, r): the norm² of each row's group
        rows = rows * jnp.where(per_row > 0, 1.0 / jnp.sqrt(jnp.where(per_row > 0, per_row, 1.0)), 0.0)[..., None]
    else:
        rows = rows / fs.scale
    if fs.group_weights is not None:
        rows = rows * jnp.asarray(fs.group_weights, rows.dtype)[None, :, None]
    return chunk._replace(rows=rows)
