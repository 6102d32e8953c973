"""Streaming shortlist: running top-``m`` of the pool by posterior variance.

The pool is an iterator of :class:`FeatureChunk`; each chunk is scored with
:func:`pv_scores` and merged into a fixed-size state holding the ``m`` best
structures so far *with their feature rows*, so batch selectors can work on
the shortlist afterwards.  Memory is ``O(d^2 + m r d + chunk)``, time
``O(n_P)``; the pool is never materialised.

Ordering is total and deterministic: valid before padded, then score
descending, then pool id ascending (ties go to the smaller id).  Hence the
shortlist does not depend on the chunking nor on the sharding.

Sharding: the chunk's graph axis is split over the 1-D pool mesh; each shard
scores its graphs with the replicated posterior, keeps its local top-``m``,
and an ``all_gather`` feeds the global merge, whose result is replicated.

The jitted merge kernel belongs to the :class:`ShortlistFns` that use it, or to the caller's
``compiled`` dict (:mod:`ntkal.cache.owned`) when several shortlists should share it.
"""

from __future__ import annotations

from typing import Callable, Iterable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ntkal.cache.owned import build_once
from ntkal.posterior._chunk import FeatureChunk
from ntkal.posterior.posterior import Posterior
from ntkal.posterior.scores import ScoreConfig, compute_dtype, posterior_arrays, pv_scores
from ntkal.posterior.sharding import POOL_AXIS, make_pool_mesh, replicated, sharded

__all__ = [
    "ShortlistState",
    "ShortlistFns",
    "streaming_shortlist",
    "shortlist_pool",
    "merge_topk",
]


class ShortlistState(NamedTuple):
    """Running top-``m`` (sorted best first)."""

    values: jnp.ndarray  # shape=(m,), float; -inf for empty slots
    ids: jnp.ndarray  # shape=(m,), int32; -1 for empty slots
    rows: jnp.ndarray  # shape=(m, r, d), float; zeros for empty slots and padded rows
    row_mask: jnp.ndarray  # shape=(m, r), bool
    n_seen: jnp.ndarray  # shape=(), int32: valid graphs streamed so far

    def as_chunk(self) -> FeatureChunk:
        """The shortlist as a :class:`FeatureChunk` (input to the selectors)."""
        return FeatureChunk(self.rows, self.row_mask, self.ids)


class ShortlistFns(NamedTuple):
    init: Callable[[int, int], ShortlistState]
    update: Callable[[FeatureChunk, ShortlistState], ShortlistState]


def merge_topk(
    state: ShortlistState, chunk: FeatureChunk, scores: jnp.ndarray, m: Optional[int] = None
) -> ShortlistState:
    """Merge scored chunk entries into the top-``m`` state (pure, jittable).

    Args:
      state: current :class:`ShortlistState` of size ``m``.
      chunk: entries to merge, ``(k, r, d)`` rows.
      scores: ``(k,)`` scores of the chunk (ignored where ``ids < 0``).
      m: output size (default ``state.values.shape[0]``).
    """
    m = state.values.shape[0] if m is None else m
    valid_new = chunk.ids >= 0
    vals = jnp.concatenate([state.values, jnp.where(valid_new, scores, -jnp.inf).astype(state.values.dtype)])
    ids = jnp.concatenate([state.ids, jnp.where(valid_new, chunk.ids, -1).astype(jnp.int32)])
    new_mask = chunk.row_mask & valid_new[:, None]
    new_rows = jnp.where(new_mask[..., None], chunk.rows.astype(state.rows.dtype), 0)
    rows = jnp.concatenate([state.rows, new_rows])
    mask = jnp.concatenate([state.row_mask, new_mask])
    invalid = ids < 0
    # lexsort: last key is primary -> invalid last, then value desc, then id asc.
    order = jnp.lexsort((ids, -vals, invalid))[:m]
    keep = ~invalid[order]
    return ShortlistState(
        jnp.where(keep, vals[order], -jnp.inf),
        jnp.where(keep, ids[order], -1),
        jnp.where(keep[:, None, None], rows[order], 0),
        mask[order] & keep[:, None],
        state.n_seen,
    )


def _local_topk(chunk: FeatureChunk, scores: jnp.ndarray, k: int) -> tuple:
    """Best ``k`` entries of a (local) chunk with the shortlist ordering."""
    invalid = chunk.ids < 0
    order = jnp.lexsort((chunk.ids, -scores, invalid))[:k]
    return FeatureChunk(chunk.rows[order], chunk.row_mask[order], chunk.ids[order]), scores[order]


def _sharded_kernel(m: int, score_config: ScoreConfig, mesh, compiled: dict | None = None):
    """Jitted ``shard_map`` merge kernel for (m, config, mesh), kept in the caller's ``compiled``
    dict (:func:`ntkal.cache.build_once`; ``None``: a new one)."""
    return build_once(compiled, ("ntkal.posterior.shortlist", m, score_config, mesh),
                      lambda: _build_sharded_kernel(m, score_config, mesh))


def _build_sharded_kernel(m: int, score_config: ScoreConfig, mesh):
    """The jitted ``shard_map`` merge kernel (not yet compiled)."""

    def _kernel(state, chunk, chol_inv_t, sigma):
        scores = pv_scores(chunk, chol_inv_t, sigma, score_config)
        k = min(m, chunk.ids.shape[0])
        top_chunk, top_scores = _local_topk(chunk, scores, k)
        g = lambda x: jax.lax.all_gather(x, POOL_AXIS, tiled=True)
        gathered = FeatureChunk(g(top_chunk.rows), g(top_chunk.row_mask), g(top_chunk.ids))
        n_new = jax.lax.psum(jnp.sum(chunk.ids >= 0).astype(jnp.int32), POOL_AXIS)
        new = merge_topk(state, gathered, g(top_scores), m)
        return new._replace(n_seen=state.n_seen + n_new)

    state_spec = ShortlistState(*(replicated(),) * 5)
    chunk_spec = FeatureChunk(*(sharded(POOL_AXIS),) * 3)
    return jax.jit(
        jax.shard_map(
            _kernel,
            mesh=mesh,
            in_specs=(state_spec, chunk_spec, replicated(), replicated()),
            out_specs=state_spec,
            check_vma=False,
        )
    )


def streaming_shortlist(
    posterior: Posterior,
    m: int,
    *,
    score_config: ScoreConfig = ScoreConfig(),
    mesh=None,
    dtype=None,
    compiled: dict | None = None,
) -> ShortlistFns:
    """Factory for the sharded streaming top-``m`` by posterior variance.

    Args:
      posterior: :class:`Posterior` (replicated on every device).
      m: shortlist size (static; changing it recompiles).
      score_config: :class:`ScoreConfig` reduction of per-row variances.
      mesh: 1-D pool mesh (default :func:`make_pool_mesh` over all devices).
      dtype: compute dtype (default float64 if JAX x64 is enabled else float32).
      compiled: a dict owned by the caller that keeps the jitted merge kernel for other
        shortlists of the same ``m``, ``score_config`` and mesh (:mod:`ntkal.cache.owned`);
        ``None``: the returned functions own a kernel of their own.

    Returns:
      :class:`ShortlistFns`:

      * ``init(r, d) -> ShortlistState`` (empty),
      * ``update(chunk, state) -> state``: scores the chunk (padded to a
        multiple of the device count) and merges it.  Device arrays stay on
        device; the sharded kernel inside is jitted once per chunk shape.
    """
    if m <= 0:
        raise ValueError(f"shortlist size m must be positive, got {m}")
    mesh = make_pool_mesh() if mesh is None else mesh
    n_dev = mesh.devices.size
    dt = compute_dtype(dtype)
    chol_inv_t, sigma = posterior_arrays(posterior, dt)
    d = posterior.dim

    kernel = _sharded_kernel(m, score_config, mesh, compiled)

    def init(r: int, d_: int) -> ShortlistState:
        if d_ != d:
            raise ValueError(f"feature dimension mismatch: posterior has d={d}, shortlist asked for d={d_}")
        return ShortlistState(
            jnp.full((m,), -jnp.inf, dt),
            jnp.full((m,), -1, jnp.int32),
            jnp.zeros((m, r, d), dt),
            jnp.zeros((m, r), bool),
            jnp.zeros((), jnp.int32),
        )

    def update(chunk: FeatureChunk, state: ShortlistState) -> ShortlistState:
        shape = tuple(np.shape(chunk.rows))
        if len(shape) != 3 or shape[-1] != d:
            raise ValueError(
                f"feature dimension mismatch: posterior has d={d}, chunk rows have shape {shape}"
            )
        if shape[1] != state.rows.shape[1]:
            raise ValueError(f"row count mismatch: shortlist has r={state.rows.shape[1]}, chunk has r={shape[1]}")
        # stay on device when the feature map produced device arrays: pad with jnp
        n = shape[0]
        pad = max(n_dev, -(-n // n_dev) * n_dev) - n
        rows = jnp.asarray(chunk.rows, dt)
        mask = jnp.asarray(chunk.row_mask, bool)
        ids = jnp.asarray(chunk.ids, jnp.int32)
        if pad:
            rows = jnp.pad(rows, ((0, pad), (0, 0), (0, 0)))
            mask = jnp.pad(mask, ((0, pad), (0, 0)))
            ids = jnp.pad(ids, (0, pad), constant_values=-1)
        return kernel(state, FeatureChunk(rows, mask, ids), chol_inv_t, sigma)

    return ShortlistFns(init, update)


def shortlist_pool(
    pool: Iterable[FeatureChunk],
    posterior: Posterior,
    m: int,
    *,
    score_config: ScoreConfig = ScoreConfig(),
    mesh=None,
    dtype=None,
    compiled: dict | None = None,
) -> ShortlistState:
    """Stream ``pool`` through the scorer and return the top-``m`` state.

    If the pool has fewer than ``m`` valid structures the remaining slots are
    empty (``ids == -1``). ``compiled``: see :func:`streaming_shortlist` (without it, every
    call compiles its own kernel).

    Raises:
      ValueError: empty pool (no valid structure), feature-dimension mismatch.
    """
    fns = streaming_shortlist(posterior, m, score_config=score_config, mesh=mesh, dtype=dtype,
                              compiled=compiled)
    state = None
    for chunk in pool:
        if state is None:
            r = np.shape(chunk.rows)[1] if np.ndim(chunk.rows) == 3 else None
            if r is None:
                raise ValueError(f"chunk rows must be (n_graph, r, d), got shape {np.shape(chunk.rows)}")
            state = fns.init(r, posterior.dim)
        state = fns.update(chunk, state)
    if state is None or int(state.n_seen) == 0:
        raise ValueError("empty pool: the pool iterator yielded no valid structure")
    return state
