"""Size classes: pad each structure to its own class's budget, not to the largest one.

Feature maps work on per-structure subgraphs of static size (``max_atoms`` atom slots,
``max_edges`` edge slots; :func:`ntkal.kernels.split_graphs`), and every distinct size is a
compilation. Padding a whole pool of 20–230-atom structures to 230 slots wastes ~2× the work;
one class per size compiles hundreds of times. :func:`plan_size_classes` splits the sorted
atom counts into at most ``max_classes`` contiguous classes so that the total number of padded
atom slots, Σ_classes (class max atoms × members), is minimal (exact dynamic programme over
the distinct sizes, O(K·u²) for u distinct sizes). Each class's edge budget is the largest
edge count among its members.

:func:`class_chunks` then streams fixed-shape padded chunks class by class: every chunk of a
class has the same ``(n_graph, n_node, n_edge)``, so a jitted consumer compiles once per
class.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Sequence

import numpy as np

from ntkal.data.padding import batch_structures
from ntkal.data.structure import Structure

__all__ = ["SizeClasses", "plan_size_classes", "class_chunks", "padded_slots"]


class SizeClasses(NamedTuple):
    """A partition of structures into padding classes.

    Attributes:
      budgets: ``((max_atoms, max_edges), ...)`` per class, ascending in ``max_atoms``.
      class_of: (n,) int class index of each structure (input order).
    """

    budgets: tuple[tuple[int, int], ...]
    class_of: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.budgets)


def _round_up(n: int, multiple: int) -> int:
    return int(-(-int(n) // multiple) * multiple)


def plan_size_classes(n_atoms: Sequence[int], n_edges: Sequence[int], max_classes: int, *,
                      max_padding: float = 1.0, edge_multiple: int = 8) -> SizeClasses:
    """Split structures into ≤ ``max_classes`` classes of minimal total padded atom slots.

    Args:
      n_atoms: (n,) atoms per structure (≥ 1).
      n_edges: (n,) edges per structure.
      max_classes: K ≥ 1; ``1`` pads everything to the largest structure.
      max_padding: use the *fewest* classes (≤ K) whose padded atom slots are at most this
        factor of the real atoms (each class is one compilation); ``1.0`` = the K-class optimum.
      edge_multiple: class edge budgets are rounded up to this multiple (fewer distinct shapes
        across runs for the persistent compilation cache).

    Returns:
      A :class:`SizeClasses`; a class's atom budget is the largest atom count among its
      members (so ``padded_slots / real atoms`` is as small as that many classes allow).
    """
    n_atoms = np.asarray(n_atoms, np.int64)
    n_edges = np.asarray(n_edges, np.int64)
    if n_atoms.ndim != 1 or n_atoms.shape != n_edges.shape or n_atoms.size == 0:
        raise ValueError(f"n_atoms and n_edges must be equal-length non-empty 1-D arrays, got "
                         f"{n_atoms.shape} and {n_edges.shape}")
    if int(max_classes) < 1:
        raise ValueError(f"max_classes must be >= 1, got {max_classes}")
    sizes, counts = np.unique(n_atoms, return_counts=True)
    u, k_max = len(sizes), min(int(max_classes), len(sizes))
    prefix = np.concatenate([[0], np.cumsum(counts)])
    # cost[a, b] = slots of one class holding distinct sizes a..b (inclusive) = sizes[b] * members
    inf = np.iinfo(np.int64).max // 4
    best = np.full((k_max + 1, u + 1), inf, np.int64)   # best[k, b]: first b sizes in k classes
    cut = np.zeros((k_max + 1, u + 1), np.int64)
    best[0, 0] = 0
    for k in range(1, k_max + 1):
        for b in range(1, u + 1):
            a = np.arange(0, b)                              # class = sizes[a..b-1]
            cand = best[k - 1, a] + sizes[b - 1] * (prefix[b] - prefix[a])
            cand = np.where(best[k - 1, a] >= inf, inf, cand)
            j = int(np.argmin(cand))
            best[k, b], cut[k, b] = cand[j], a[j]
    k_best = int(np.argmin(best[1:, u])) + 1               # fewest classes reaching the minimum
    within = np.flatnonzero(best[1:, u] <= float(max_padding) * float(n_atoms.sum()))
    if within.size:                                        # fewer compiles, padding still in bound
        k_best = min(k_best, int(within[0]) + 1)
    bounds = []
    b = u
    for k in range(k_best, 0, -1):
        a = int(cut[k, b])
        bounds.append((a, b))
        b = a
    bounds.reverse()
    upper = np.array([sizes[b - 1] for _, b in bounds])
    class_of = np.searchsorted(upper, n_atoms, side="left").astype(np.int64)
    budgets = []
    for c, top in enumerate(upper):
        members = class_of == c
        budgets.append((int(top), _round_up(max(int(n_edges[members].max()), 1), edge_multiple)))
    return SizeClasses(tuple(budgets), class_of)


def padded_slots(plan: SizeClasses, chunk_size: int) -> int:
    """Atom slots a featurisation computes: Σ_classes chunks × chunk_size × max_atoms."""
    counts = np.bincount(plan.class_of, minlength=plan.num_classes)
    return int(sum(-(-int(n) // chunk_size) * chunk_size * m
                   for n, (m, _) in zip(counts, plan.budgets)))


def class_chunks(structures: Sequence[Structure], ids: Sequence[int], plan: SizeClasses,
                 chunk_size: int) -> Iterator[tuple[int, np.ndarray, object]]:
    """Fixed-shape padded chunks of ``structures[ids]``, class by class.

    Args:
      structures: indexable structures; ``plan.class_of`` is indexed by the same ids.
      ids: which structures (each id once), any order; within a class their order is kept.
      plan: from :func:`plan_size_classes` over ``structures``.
      chunk_size: structures per chunk.

    Yields:
      ``(class_index, chunk_ids (chunk_size + 1,) int64 with -1 on padding slots, graph)``;
      every chunk of class c has ``chunk_size + 1`` graph slots, ``chunk_size·max_atoms + 1``
      nodes and ``chunk_size·max_edges`` edges.
    """
    ids = np.asarray(ids, np.int64)
    classes = plan.class_of[ids] if ids.size else np.zeros((0,), np.int64)
    for c, (m, e) in enumerate(plan.budgets):
        members = ids[classes == c]
        for k in range(0, len(members), chunk_size):
            part = members[k:k + chunk_size]
            graph = batch_structures([structures[i] for i in part], n_graph=chunk_size + 1,
                                     n_node=chunk_size * m + 1, n_edge=chunk_size * e)
            out = np.full((chunk_size + 1,), -1, np.int64)
            out[:len(part)] = part
            yield c, out, graph
