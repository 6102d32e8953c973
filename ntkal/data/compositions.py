"""Which per-element reference energies a set of labelled compositions can fix.

A refit of per-element reference energies ``e0`` (``[train] refit_e0``: the least-squares fit of
E ≈ Σ_elements n_el · e0_el over the labelled structures) sees each structure only through its
composition vector n (atoms per element). Directions u of e0 with C·u = 0, C the labelled
structures' composition matrix, change no labelled energy, so no label can fix them: the refit
keeps the minimum-norm solution there. A structure's energy depends on those directions exactly
when its composition n is not in the row space of C. Its predicted energy then carries an offset
that no label from those structures removes, however many are bought. Forces never depend on e0.

The common case: every pool frame is a 36-atom slab with a two-atom adsorbate. Then shifting
every metal's e0 by +1 eV and every adsorbate element's by −18 eV changes no pool energy, and a
clean slab's or a one-atom adsorbate's predicted energy can be off by tens of eV. An element
that no labelled structure holds (H in the test frames only) is the other case.

:func:`reference_energy_gaps` finds these structures from the compositions alone, before any
compute. The labelled side should be everything the run could label: the pool and the initial set.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["ReferenceEnergyGap", "ReferenceEnergyWarning", "composition_matrix", "reference_energy_gaps",
           "unresolved_mask"]

class ReferenceEnergyWarning(UserWarning):
    """Some evaluated structures' energies depend on reference energies the labels cannot fix."""


class ReferenceEnergyGap(NamedTuple):
    """What :func:`reference_energy_gaps` found for one group of evaluated structures.

    Attributes:
      name: the group (e.g. a test split).
      unresolved: (n,) bool, per structure of the group: its energy depends on an unfixable
        direction of e0.
      unlabelled_elements: atomic numbers the group holds that no labelled structure holds.
      direction: one unfixable direction, atomic number → relative e0 shift (eV; the smallest
        |shift| is 1), when the labelled compositions leave exactly one among their own
        elements; else empty.
    """

    name: str
    unresolved: np.ndarray
    unlabelled_elements: tuple[int, ...]
    direction: dict

    def message(self) -> str:
        """One line for a log (empty when every structure's energy is fixable)."""
        n = int(self.unresolved.sum())
        if not n:
            return ""
        why = []
        if self.direction:
            groups: dict = {}
            for z, v in sorted(self.direction.items()):
                groups.setdefault(float(f"{v:.3g}"), []).append(_symbol(z))
            why.append("shifting e0 by " + ", ".join(f"{v:+g} eV per {', '.join(names)} atom"
                                                     for v, names in sorted(groups.items()))
                       + " (or any multiple of that) changes no labellable energy")
        if self.unlabelled_elements:
            why.append("no labellable structure holds " + ", ".join(_symbol(z) for z in self.unlabelled_elements))
        if not why:
            why.append("the labellable compositions fix e0 only in combinations that these compositions "
                       "are not")
        return (f"{self.name}: the energies of {n} of {len(self.unresolved)} structures depend on reference "
                f"energies that no label from the pool or the initial set can fix ({'; '.join(why)}), so "
                f"their energy errors include an offset that refit_e0 cannot remove (forces are not "
                f"affected); labelled structures of other compositions ([data] initial_files, e.g. clean "
                f"slabs and gas molecules) fix it")


def composition_matrix(numbers: Iterable[np.ndarray], elements: Sequence[int]) -> np.ndarray:
    """(n_structures, n_elements) float64 atom counts, columns in the order of ``elements``.

    Args:
      numbers: per structure, its atomic numbers.
      elements: the columns' atomic numbers; a structure with another element is an error.
    """
    column = {int(z): k for k, z in enumerate(elements)}
    rows = []
    for k, z in enumerate(numbers):
        values, counts = np.unique(np.asarray(z, np.int64), return_counts=True)
        row = np.zeros(len(column))
        for value, count in zip(values.tolist(), counts.tolist()):
            if value not in column:
                raise ValueError(f"structure {k} holds element {value}, not among the columns {list(column)}")
            row[column[value]] = count
        rows.append(row)
    return np.asarray(rows, np.float64).reshape(len(rows), len(column))


def _svd(labelled: np.ndarray, rtol: float) -> tuple[int, np.ndarray]:
    """The rank of ``labelled`` and the (n_elements, n_elements) right singular vectors of its
    unique rows (the first ``rank`` span its row space, the others its null space)."""
    rows = np.unique(labelled, axis=0)
    if not len(rows):
        return 0, np.eye(labelled.shape[1])
    _, s, vt = np.linalg.svd(rows, full_matrices=True)
    return (int(np.sum(s > rtol * s[0])) if s[0] > 0 else 0), vt


def _outside(basis: np.ndarray, evaluated: np.ndarray, atol: float) -> np.ndarray:
    """(m,) bool: the rows of ``evaluated`` farther than ``atol`` × their norm from the span of
    ``basis`` ((n_elements, rank), orthonormal columns)."""
    residual = evaluated - (evaluated @ basis) @ basis.T
    return np.linalg.norm(residual, axis=1) > atol * np.maximum(np.linalg.norm(evaluated, axis=1), 1.0)


def unresolved_mask(labelled: np.ndarray, evaluated: np.ndarray, rtol: float = 1e-9, atol: float = 1e-6
                    ) -> np.ndarray:
    """(n_evaluated,) bool: the composition is not a linear combination of the labelled ones.

    Args:
      labelled: (n, n_elements) compositions the refit can see.
      evaluated: (m, n_elements) compositions whose energies are predicted (same columns).
      rtol: singular values below ``rtol`` × the largest count as zero (rank of ``labelled``).
      atol: a composition is unresolved when its distance to the row space exceeds ``atol`` × its
        norm (integer counts put a real gap far above it: a clean 36-atom slab is 1.2 away from
        the row space of slabs with two-atom adsorbates).
    """
    rank, vt = _svd(labelled, rtol)
    return _outside(vt[:rank].T, evaluated, atol)


def _one_direction(labelled: np.ndarray, present: np.ndarray, rtol: float = 1e-9) -> np.ndarray | None:
    """The null direction of ``labelled`` among the ``present`` columns when it is one-dimensional
    (scaled so that its smallest nonzero |entry| is 1); else ``None``."""
    sub = labelled[:, present]
    rank, vt = _svd(sub, rtol)
    if not len(sub) or sub.shape[1] - rank != 1:
        return None
    u = vt[-1]
    u[np.abs(u) < 1e-9 * np.abs(u).max()] = 0.0
    u = u / np.abs(u[u != 0]).min() * np.sign(u[np.argmax(np.abs(u))])
    out = np.zeros(labelled.shape[1])
    out[present] = u
    return out


def reference_energy_gaps(labelled: Iterable[np.ndarray], evaluated: Mapping[str, Sequence[np.ndarray]]
                          ) -> list[ReferenceEnergyGap]:
    """Find the evaluated structures whose energies depend on reference energies that the
    labelled compositions cannot fix (module docstring).

    Args:
      labelled: per structure that may be labelled (pool and initial set), its atomic numbers.
      evaluated: group name → per structure, its atomic numbers (e.g. the test splits).

    Returns:
      One :class:`ReferenceEnergyGap` per group that has at least one such structure.
    """
    labelled = [np.asarray(z) for z in labelled]
    evaluated = {name: [np.asarray(z) for z in group] for name, group in evaluated.items()}
    elements = sorted({int(z) for group in [labelled, *evaluated.values()] for numbers in group for z in numbers})
    counts = composition_matrix(labelled, elements)
    present = counts.sum(axis=0) > 0
    direction = _one_direction(counts, present)
    rank, vt = _svd(counts, 1e-9)
    gaps = []
    for name, group in evaluated.items():
        rows = composition_matrix(group, elements)
        mask = _outside(vt[:rank].T, rows, 1e-6)
        if not mask.any():
            continue
        used = rows[mask].sum(axis=0) > 0
        unlabelled = tuple(z for z, p, u in zip(elements, present, used) if u and not p)
        shift = {}
        if direction is not None and np.any(np.abs(rows[mask] @ direction) > 1e-9):
            shift = {z: float(v) for z, v in zip(elements, direction) if v != 0.0}
        gaps.append(ReferenceEnergyGap(name, mask, unlabelled, shift))
    return gaps


def _symbol(z: int) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[int(z)]
