"""Feature chunks: the only data type the acquisition layer consumes.

A feature map (energy, force, joint NTK features, last-layer embeddings, ...)
yields the pool and the training set as an iterator of :class:`FeatureChunk`.
Acquisition knows nothing about what the rows mean; it only relies on

* ``rows``      -- ``(n_graph, r, d)`` float: ``r`` feature rows per structure
  (``r = 1`` energy features, ``r = 3N`` force features padded to a maximum,
  ``r = 1 + 3N`` joint features),
* ``row_mask``  -- ``(n_graph, r)`` bool: ``False`` marks a padded row,
* ``ids``       -- ``(n_graph,)`` int: pool ids, ``-1`` marks a padded graph
  slot.  Graph validity is ``ids >= 0``.

Padded rows and padded graphs never affect any score: every consumer zeroes
them with :func:`masked_rows` before use.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np
import jax.numpy as jnp

__all__ = [
    "FeatureChunk",
    "Selection",
    "chunk_from_arrays",
    "iterate_chunks",
    "masked_rows",
    "graph_mask",
    "pad_chunk",
]


class FeatureChunk(NamedTuple):
    """One chunk of feature rows.

    Attributes:
      rows: ``(n_graph, r, d)`` float feature rows.
      row_mask: ``(n_graph, r)`` bool; ``False`` = padded row.
      ids: ``(n_graph,)`` int pool ids; ``-1`` = padded graph slot.
    """

    rows: jnp.ndarray
    row_mask: jnp.ndarray
    ids: jnp.ndarray


class Selection(NamedTuple):
    """Result of a batch selector.

    Attributes:
      indices: ``(budget,)`` int32 positions into the candidate chunk.
      ids: ``(budget,)`` int pool ids of the picks (``candidates.ids[indices]``).
      scores: ``(budget,)`` float per-pick score at the time of picking (the
        selector's own criterion: posterior variance, squared distance, ...).
    """

    indices: jnp.ndarray
    ids: jnp.ndarray
    scores: jnp.ndarray


def graph_mask(chunk: FeatureChunk) -> jnp.ndarray:
    """Valid-graph mask ``(n_graph,)`` bool (``ids >= 0``)."""
    return chunk.ids >= 0


def masked_rows(chunk: FeatureChunk, dtype=None) -> jnp.ndarray:
    """Rows with padded rows and padded graphs set to exactly zero.

    Args:
      chunk: a :class:`FeatureChunk`.
      dtype: optional dtype to cast to.

    Returns:
      ``(n_graph, r, d)`` array.
    """
    rows = chunk.rows if dtype is None else chunk.rows.astype(dtype)
    keep = chunk.row_mask & (chunk.ids >= 0)[:, None]
    return jnp.where(keep[..., None], rows, jnp.zeros((), rows.dtype))


def chunk_from_arrays(rows, row_mask=None, ids=None) -> FeatureChunk:
    """Build a :class:`FeatureChunk` from arrays, filling defaults.

    Args:
      rows: ``(n, r, d)`` or ``(n, d)`` (treated as ``r = 1``).
      row_mask: ``(n, r)`` bool, default all ``True``.
      ids: ``(n,)`` int, default ``arange(n)``.

    Raises:
      ValueError: on inconsistent shapes.
    """
    rows = np.asarray(rows)
    if rows.ndim == 2:
        rows = rows[:, None, :]
    if rows.ndim != 3:
        raise ValueError(f"rows must have shape (n, r, d) or (n, d), got {rows.shape}")
    n, r, _ = rows.shape
    row_mask = np.ones((n, r), bool) if row_mask is None else np.asarray(row_mask, bool)
    ids = np.arange(n, dtype=np.int32) if ids is None else np.asarray(ids, np.int32)
    if row_mask.shape != (n, r):
        raise ValueError(f"row_mask shape {row_mask.shape} != {(n, r)}")
    if ids.shape != (n,):
        raise ValueError(f"ids shape {ids.shape} != {(n,)}")
    return FeatureChunk(rows, row_mask, ids)


def pad_chunk(chunk: FeatureChunk, n_graph: int) -> FeatureChunk:
    """Pad a chunk along the graph axis to ``n_graph`` slots (numpy, not jitted).

    Padded slots get zero rows, ``row_mask = False`` and ``ids = -1``.
    """
    rows, mask, ids = (np.asarray(x) for x in chunk)
    n = rows.shape[0]
    if n > n_graph:
        raise ValueError(f"chunk has {n} graphs > capacity {n_graph}")
    if n == n_graph:
        return FeatureChunk(rows, mask, ids)
    extra = n_graph - n
    return FeatureChunk(
        np.concatenate([rows, np.zeros((extra,) + rows.shape[1:], rows.dtype)]),
        np.concatenate([mask, np.zeros((extra,) + mask.shape[1:], bool)]),
        np.concatenate([ids, -np.ones((extra,), ids.dtype)]),
    )


def iterate_chunks(
    rows, row_mask=None, ids=None, *, chunk_size: int
) -> Iterator[FeatureChunk]:
    """Split in-memory arrays into fixed-capacity chunks (last one padded).

    Handy for tests and benchmarks; real pools come from a file-backed
    iterator producing the same :class:`FeatureChunk` objects.

    Args:
      rows: ``(n, r, d)`` feature rows.
      row_mask: ``(n, r)`` bool or ``None``.
      ids: ``(n,)`` int or ``None`` (``arange(n)``).
      chunk_size: graphs per chunk; every yielded chunk has exactly this many
        slots so a jitted consumer compiles once.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    full = chunk_from_arrays(rows, row_mask, ids)
    n = full.rows.shape[0]
    for start in range(0, n, chunk_size):
        sl = slice(start, min(start + chunk_size, n))
        yield pad_chunk(FeatureChunk(full.rows[sl], full.row_mask[sl], full.ids[sl]), chunk_size)
