"""Small helpers shared by the loaders: labels, validation, compressed files."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
from typing import IO

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from ntkal.datasets._errors import DatasetFormatError

__all__ = ["attach_labels", "open_text", "check_labels"]


def open_text(path: str | os.PathLike) -> IO[str]:
    """Open a text file, transparently decompressing ``.xz``, ``.gz``, ``.bz2``."""
    p = os.fspath(path)
    if p.endswith(".xz"):
        return lzma.open(p, "rt")
    if p.endswith(".gz"):
        return gzip.open(p, "rt")
    if p.endswith(".bz2"):
        return bz2.open(p, "rt")
    return open(p, "rt")


def check_labels(path, where, n_atoms: int, energy, forces) -> tuple[float, np.ndarray | None]:
    """Validate an energy (eV) and optional forces (n_atoms, 3) eV/Å.

    Raises:
      DatasetFormatError: on non-finite values or a shape mismatch.
    """
    if energy is None:
        raise DatasetFormatError(path, where, "missing energy label")
    e = float(np.asarray(energy).reshape(()))
    if not np.isfinite(e):
        raise DatasetFormatError(path, where, f"non-finite energy {e}")
    if forces is None:
        return e, None
    f = np.asarray(forces, dtype=np.float64)
    if f.shape != (n_atoms, 3):
        raise DatasetFormatError(
            path, where, f"forces have shape {f.shape}, expected {(n_atoms, 3)}")
    if not np.all(np.isfinite(f)):
        raise DatasetFormatError(path, where, "non-finite forces")
    return e, f


def attach_labels(atoms: Atoms, energy: float, forces: np.ndarray | None) -> Atoms:
    """Attach energy (eV) and optional raw forces (n_atoms, 3) eV/Å in place.

    Forces are stored *without* constraints applied (as in OC20, where fixed
    atoms keep their DFT forces); read them with
    ``atoms.get_forces(apply_constraint=False)``. Energy-only labels (RGD1) set
    no forces at all, so ``atoms.calc.results`` lacks the ``"forces"`` key.
    """
    kw = {"energy": energy, "free_energy": energy}
    if forces is not None:
        kw["forces"] = forces
    atoms.calc = SinglePointCalculator(atoms, **kw)
    return atoms
