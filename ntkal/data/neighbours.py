"""Periodic radius-graph neighbour lists, edge-for-edge equal to ASE's.

:func:`neighbour_list` returns exactly the pairs of
``ase.neighborlist.neighbor_list("ijSd", atoms, cutoff, self_interaction=False)``
(same ``i``, ``j``, integer image shifts ``S`` and distances), but builds them with
`vesin <https://github.com/Luthaf/vesin>`_ (C++ cell list): 16–145× faster than
ASE on 20–230-atom slabs, molecules and small bulk cells at cutoffs 4–5 Å, i.e.
≈ 0.3–2 ms instead of 8–40 ms per structure on one CPU core (``benchmarks/neighbours.py``).
matscipy is nearly as fast but fails on zero cell vectors (molecules without a cell).
Mixed periodicity (e.g. slabs with ``pbc=(True, True, False)``), cells smaller than
the cutoff (self-images), triclinic and rotated cells and zero cell vectors along
non-periodic directions are all supported by vesin ≥ 0.5.8 (per-direction ``periodic``
since 0.4.0) and are checked against ASE in ``tests/test_neighbours.py``.

To make the edge set *identical* to ASE's rather than equal up to rounding at the
cutoff, vesin is asked for pairs within a slightly larger radius, the pairs at the
cutoff (relative 1e-8) are re-measured with ASE's own formula,
``|r_j − r_i + S·cell|``, and all are filtered with ASE's strict ``d < cutoff``.
Distances elsewhere are vesin's (equal to ASE's to ~1e-15 Å).

When vesin is missing, too old or fails, ASE is used instead (same result).
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
from ase.geometry import complete_cell
from ase.neighborlist import primitive_neighbor_list

__all__ = ["neighbour_list", "vesin_available", "Backend"]

Backend = Literal["auto", "vesin", "ase"]

#: Oldest vesin with correct mixed-periodicity handling (0.5.8 fixed rotated boxes
#: with mixed pbc and non-periodic dimensions with all-negative coordinates).
_MIN_VESIN = (0, 5, 8)

#: vesin is queried with ``cutoff * (1 + _CANDIDATE_SLACK)`` so that no pair that
#: ASE's arithmetic puts just inside the cutoff is lost to rounding; pairs within
#: this relative distance of the cutoff are re-measured the ASE way.
_CANDIDATE_SLACK = 1e-8


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit()) or "0"
        parts.append(int(digits))
    return tuple(parts)


def _load_vesin():
    """The ``vesin`` module if importable and recent enough, else ``None``."""
    try:
        import vesin  # also tries torch/cupy, so imported on first use only
    except (ImportError, OSError):  # OSError: its shared library failed to load
        return None
    if _version_tuple(getattr(vesin, "__version__", "0")) < _MIN_VESIN:
        return None
    return vesin


_UNLOADED = object()
_vesin = _UNLOADED  # the vesin module, None when unusable; resolved by _get_vesin()


def _get_vesin():
    global _vesin
    if _vesin is _UNLOADED:
        _vesin = _load_vesin()
    return _vesin


def vesin_available() -> bool:
    """Whether the fast backend (vesin ≥ 0.5.8) can be used."""
    return _get_vesin() is not None


def _empty() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3), np.int64),
            np.zeros(0, np.float64))


def _sort_order(i: np.ndarray, j: np.ndarray, shifts: np.ndarray, n_atoms: int) -> np.ndarray:
    """Permutation putting edges in lexicographic (i, j, S0, S1, S2) order.

    Packs the five keys into one int64 (a single argsort is ~4× faster than
    ``np.lexsort``); falls back to ``np.lexsort`` if the packed key could overflow.
    """
    if i.size == 0:
        return np.zeros(0, np.int64)
    low = int(shifts.min())
    span = int(shifts.max()) - low + 1
    if float(n_atoms) ** 2 * float(span) ** 3 < 2.0**62:
        s = shifts - low
        key = (((i * n_atoms + j) * span + s[:, 0]) * span + s[:, 1]) * span + s[:, 2]
        return np.argsort(key, kind="stable")
    return np.lexsort((shifts[:, 2], shifts[:, 1], shifts[:, 0], j, i))


def _sorted_edges(i, j, shifts, dist, n_atoms: int):
    """Edges as int64/float64 arrays in lexicographic (i, j, S0, S1, S2) order."""
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    shifts = np.asarray(shifts, dtype=np.int64).reshape(-1, 3)
    dist = np.asarray(dist, dtype=np.float64)
    order = _sort_order(i, j, shifts, n_atoms)
    return (np.take(i, order), np.take(j, order), np.take(shifts, order, axis=0),
            np.take(dist, order))


def _ase_edges(positions, cell, pbc, cutoff):
    """ASE's ``neighbor_list("ijSd", ...)`` on arrays (unsorted)."""
    return primitive_neighbor_list("ijSd", pbc, complete_cell(cell), positions, cutoff,
                                   self_interaction=False)


def _vesin_edges(vesin, positions, cell, pbc, cutoff):
    """vesin pairs, with ASE's cutoff decision for the pairs at the cutoff (unsorted).

    vesin is asked for pairs within ``cutoff * (1 + slack)``. Pairs whose vesin
    distance is within the slack of the cutoff are re-measured with ASE's formula
    ``|r_j − r_i + S·cell|`` (ase.neighborlist.primitive_neighbor_list) before ASE's
    strict ``d < cutoff`` test, so rounding differences cannot change the edge set.
    """
    calculator = vesin.NeighborList(cutoff=cutoff * (1.0 + _CANDIDATE_SLACK), full_list=True,
                                    n_threads=1)
    i, j, shifts, dist = calculator.compute(positions, cell, pbc, quantities="ijSd", copy=True)
    i = i.astype(np.int64)
    j = j.astype(np.int64)
    shifts = shifts.astype(np.int64)
    dist = dist.astype(np.float64)
    near = np.flatnonzero(dist >= cutoff * (1.0 - _CANDIDATE_SLACK))
    if near.size:
        vectors = positions[j[near]] - positions[i[near]] + shifts[near].dot(cell)
        dist[near] = np.sqrt(np.sum(vectors * vectors, axis=1))
    keep = dist < cutoff
    zero = np.flatnonzero(dist == 0.0)
    if zero.size:  # an atom is not its own neighbour (ASE's self_interaction=False)
        keep[zero[(i[zero] == j[zero]) & np.all(shifts[zero] == 0, axis=1)]] = False
    if keep.all():
        return i, j, shifts, dist
    return i[keep], j[keep], shifts[keep], dist[keep]


def neighbour_list(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    cutoff: float,
    *,
    backend: Backend = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All pairs closer than ``cutoff``, periodic images included (a full list).

    Same edge set and conventions as
    ``ase.neighborlist.neighbor_list("ijSd", atoms, cutoff, self_interaction=False)``:
    every pair appears in both directions, an atom's own periodic images are included
    (cells smaller than the cutoff), pairs never cross a non-periodic boundary, and a
    pair is kept iff its distance is strictly below ``cutoff``.

    Args:
      positions: (n_atoms, 3) Cartesian positions (Å); need not lie inside the cell.
      cell: (3, 3) lattice vectors as rows (Å). Rows along non-periodic directions
        may be zero.
      pbc: (3,) bool, periodicity along each cell vector.
      cutoff: radius (Å), finite and > 0.
      backend: "auto" (vesin when available, else ASE; ASE also if vesin raises),
        "vesin" (error if unavailable) or "ase" (the reference implementation).

    Returns:
      ``(i, j, S, d)``, sorted lexicographically by ``(i, j, S[:, 0], S[:, 1], S[:, 2])``
      (so the output is reproducible and backend-independent):

      * i: (n_edges,) int64, centre atom;
      * j: (n_edges,) int64, neighbour atom;
      * S: (n_edges, 3) int64, image shift in cell vectors; the pair vector is
        ``positions[j] - positions[i] + S @ cell`` (Å), and ``S`` is 0 along
        non-periodic directions;
      * d: (n_edges,) float64, its length (Å).

    Raises:
      ValueError: mis-shaped inputs, non-finite or non-positive ``cutoff``, unknown
        ``backend``.
      RuntimeError: ``backend="vesin"`` but vesin ≥ 0.5.8 is not installed.
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    cell = np.ascontiguousarray(cell, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool).reshape(-1)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape (n_atoms, 3), got {positions.shape}")
    if cell.shape != (3, 3):
        raise ValueError(f"cell must have shape (3, 3), got {cell.shape}")
    if pbc.shape != (3,):
        raise ValueError(f"pbc must have 3 entries, got {pbc.shape[0]}")
    cutoff = float(cutoff)
    if not np.isfinite(cutoff) or cutoff <= 0:
        raise ValueError(f"cutoff must be a finite positive number of Å, got {cutoff}")
    if backend not in ("auto", "vesin", "ase"):
        raise ValueError(f"backend must be 'auto', 'vesin' or 'ase', got {backend!r}")
    vesin = None if backend == "ase" else _get_vesin()
    if backend == "vesin" and vesin is None:
        raise RuntimeError("backend='vesin' but vesin >= 0.5.8 is not installed "
                           "(pip install 'vesin>=0.6')")
    if positions.shape[0] == 0:
        return _empty()

    n_atoms = positions.shape[0]
    if vesin is None:
        return _sorted_edges(*_ase_edges(positions, cell, pbc, cutoff), n_atoms)
    try:
        return _sorted_edges(*_vesin_edges(vesin, positions, cell, pbc, cutoff), n_atoms)
    except (RuntimeError, OSError) as error:
        if backend == "vesin":
            raise
        warnings.warn(f"vesin neighbour list failed ({error}); using ASE instead",
                      RuntimeWarning, stacklevel=2)
        return _sorted_edges(*_ase_edges(positions, cell, pbc, cutoff), n_atoms)
