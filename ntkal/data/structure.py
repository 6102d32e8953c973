"""One ``ase.Atoms`` → one validated, unpadded graph (numpy arrays).

Edges come from :func:`ntkal.data.neighbours.neighbour_list` (vesin, falling back to
ASE; the same edge set as ``ase.neighborlist.neighbor_list``, with periodic images
included, so cells smaller than the cutoff get their self-images), sorted by
(receiver, sender, integer image shift). Edge convention: an edge
carries a message from ``sender`` (ASE's ``j``) to ``receiver`` (ASE's ``i``)
and its vector is

    r_ij = positions[sender] - positions[receiver] + shift,   shift = S @ cell  (Å)
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import ase
import numpy as np
from ase.constraints import FixAtoms

from ntkal.data.errors import InvalidStructureError, UnknownElementError
from ntkal.data.neighbours import neighbour_list

__all__ = ["Structure", "atoms_to_structure", "MIN_DISTANCE", "labels_of"]

#: Atoms closer than this (Å) are rejected as unphysical.
MIN_DISTANCE = 0.3


class Structure(NamedTuple):
    """An unpadded graph of one structure (numpy; float64 geometry).

    Attributes:
      numbers:   (n_atoms,) int32 atomic numbers.
      positions: (n_atoms, 3) Å.
      cell:      (3, 3) Å, rows are lattice vectors (zeros when non-periodic).
      senders:   (n_edges,) int32.
      receivers: (n_edges,) int32.
      shifts:    (n_edges, 3) Å, Cartesian periodic-image shift of each edge.
      energy:    total energy (eV), NaN when unlabelled.
      forces:    (n_atoms, 3) eV/Å, zeros when unlabelled.
      has_forces: whether ``forces`` is a label.
      free:      (n_atoms,) bool, False for atoms fixed by ``FixAtoms``.
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    shifts: np.ndarray
    energy: float
    forces: np.ndarray
    has_forces: bool
    free: np.ndarray

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def n_edges(self) -> int:
        return int(self.senders.shape[0])


def labels_of(atoms: ase.Atoms) -> tuple[float | None, np.ndarray | None]:
    """Energy (eV) and forces (eV/Å) attached to ``atoms`` without computing anything.

    Reads a calculator's stored ``results`` (e.g. ``SinglePointCalculator`` from
    ``ase.io``) or, failing that, ``atoms.info["energy"]`` / ``atoms.arrays["forces"]``.
    """
    energy = forces = None
    calc = atoms.calc
    if calc is not None and getattr(calc, "results", None):
        energy = calc.results.get("energy", calc.results.get("free_energy"))
        forces = calc.results.get("forces")
    if energy is None and "energy" in atoms.info:
        energy = atoms.info["energy"]
    if forces is None and "forces" in atoms.arrays:
        forces = atoms.arrays["forces"]
    return energy, forces


def _free_mask(atoms: ase.Atoms) -> np.ndarray:
    free = np.ones(len(atoms), dtype=bool)
    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms):
            free[constraint.index] = False
    return free


def atoms_to_structure(
    atoms: ase.Atoms,
    cutoff: float,
    *,
    index: int | None = None,
    elements: Sequence[int] | None = None,
    require_labels: bool = False,
) -> Structure:
    """Validate ``atoms`` and build its radius graph.

    Args:
      atoms: the structure. Periodic directions need a non-degenerate cell.
      cutoff: neighbour cutoff (Å).
      index: position in the input sequence, used in error messages.
      elements: atomic numbers the model knows; others raise ``UnknownElementError``.
      require_labels: raise if the structure carries no energy.

    Returns:
      A ``Structure``.

    Raises:
      InvalidStructureError: empty structure, non-finite positions, a periodic
        direction without a cell vector, non-finite or mis-shaped labels, or two
        atoms closer than ``MIN_DISTANCE`` Å (periodic images included).
      UnknownElementError: an element outside ``elements``.
    """
    info = dict(getattr(atoms, "info", {}) or {})
    if not isinstance(atoms, ase.Atoms):
        raise InvalidStructureError(f"expected ase.Atoms, got {type(atoms).__name__}", index=index, info=info)

    def fail(message, cls=InvalidStructureError):
        raise cls(message, index=index, info=info)

    n = len(atoms)
    if n == 0:
        fail("structure has no atoms")
    positions = np.asarray(atoms.get_positions(), dtype=np.float64)
    if positions.shape != (n, 3) or not np.all(np.isfinite(positions)):
        fail("positions missing or not finite")
    numbers = np.asarray(atoms.numbers, dtype=np.int32)
    if elements is not None:
        unknown = sorted(set(numbers.tolist()) - set(int(z) for z in elements))
        if unknown:
            symbols = [ase.data.chemical_symbols[z] for z in unknown]
            fail(f"elements {symbols} are not known to the model (known: "
                 f"{[ase.data.chemical_symbols[z] for z in elements]})", UnknownElementError)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    if not np.all(np.isfinite(cell)):
        fail("cell is not finite")
    lengths = np.linalg.norm(cell, axis=1)
    if np.any(pbc & (lengths < 1e-8)):
        fail(f"periodic along {np.nonzero(pbc)[0].tolist()} but the cell vector there is missing (zero)")
    if pbc.any() and abs(np.linalg.det(np.where(pbc[:, None], cell, np.eye(3)))) < 1e-8:
        fail("periodic cell is singular")

    energy, forces = labels_of(atoms)
    if energy is None:
        if require_labels:
            fail("no energy label")
        energy = np.nan
    else:
        energy = float(np.asarray(energy).reshape(()))
        if not np.isfinite(energy):
            fail(f"energy label is not finite ({energy})")
    has_forces = forces is not None
    if has_forces:
        forces = np.asarray(forces, dtype=np.float64)
        if forces.shape != (n, 3):
            fail(f"forces have shape {forces.shape}, expected ({n}, 3)")
        if not np.all(np.isfinite(forces)):
            bad = int(np.nonzero(~np.isfinite(forces).all(axis=1))[0][0])
            fail(f"forces are not finite (first at atom {bad})")
    else:
        forces = np.zeros((n, 3))

    i, j, shift_int, dist = neighbour_list(positions, cell, pbc, float(cutoff))
    if dist.size and dist.min() < MIN_DISTANCE:
        k = int(np.argmin(dist))
        fail(f"atoms {int(i[k])} and {int(j[k])} are {dist[k]:.3f} Å apart (< {MIN_DISTANCE} Å)")
    shifts = shift_int.astype(np.float64) @ cell
    return Structure(
        numbers=numbers,
        positions=positions,
        cell=cell if pbc.any() else np.zeros((3, 3)),
        senders=j.astype(np.int32),
        receivers=i.astype(np.int32),
        shifts=shifts,
        energy=energy,
        forces=forces,
        has_forces=bool(has_forces),
        free=_free_mask(atoms),
    )
