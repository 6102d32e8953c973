"""Per-element reference energies and an energy scale, fitted from labelled structures."""

from __future__ import annotations

from typing import Iterable

import dataclasses

import numpy as np

from ntkal.data.compositions import composition_matrix
from ntkal.data.structure import Structure
from ntkal.models.config import ModelConfig

__all__ = ["fit_reference_energies", "force_rms", "adapt_config"]


def fit_reference_energies(config: ModelConfig, structures: Iterable[Structure], *,
                           ridge: float = 1e-8) -> np.ndarray:
    """Least-squares per-element energies e0 (eV) with E ≈ Σ_i e0[Z_i].

    Solves ``min_e ‖C e − E‖² + ridge‖e‖²`` where C (n_struct, n_elements) counts each
    element. Elements absent from the data get 0; rank-deficient compositions (e.g.
    a single element ratio) get the minimum-norm solution
    (:func:`ntkal.data.compositions.reference_energy_gaps` finds the structures whose energies
    that leaves unfixed).

    Returns:
      (n_elements,) float64 eV, ordered as ``config.elements``.
    """
    labelled = [s for s in structures if not np.isnan(s.energy)]
    if not labelled:
        return np.zeros(len(config.elements))
    c = composition_matrix((s.numbers for s in labelled), config.elements)
    e = np.asarray([s.energy for s in labelled], np.float64)
    lhs = c.T @ c + ridge * np.eye(c.shape[1])
    return np.linalg.lstsq(lhs, c.T @ e, rcond=None)[0]


def force_rms(structures: Iterable[Structure]) -> float:
    """Root-mean-square force component (eV/Å) over free atoms with force labels; 1.0 if none."""
    total, count = 0.0, 0
    for s in structures:
        if s.has_forces:
            f = s.forces[s.free]
            total += float(np.sum(f**2))
            count += f.size
    return float(np.sqrt(total / count)) if count and total > 0 else 1.0


def adapt_config(config: ModelConfig, structures) -> ModelConfig:
    """``config`` with ``energy_scale`` = force RMS (eV/Å) and ``avg_num_neighbors`` from the data."""
    structures = list(structures)
    edges = sum(s.n_edges for s in structures)
    atoms = sum(s.n_atoms for s in structures)
    return dataclasses.replace(config, energy_scale=force_rms(structures),
                               avg_num_neighbors=max(edges / max(atoms, 1), 1.0))
