"""Unlabelled OC20-like candidate pools of any size, fast (for throughput work, not for learning).

A candidate is a rattled copy of an adsorbate-on-fcc(111)-slab template: metal from
{Al, Ni, Cu, Pd, Ag, Pt, Au}, 2–9 × 2–9 surface cells, 2–5 layers, one small adsorbate (H, O,
OH, CO, CH3, NH3, H2O) on top. Template sizes are chosen so that the atom counts spread
log-uniformly over ``[min_atoms, max_atoms]`` (default 20–230, the OC20 S2EF range); every
candidate is a template plus Gaussian noise (σ = 0.03–0.12 Å) on the positions, so a pool of
10^5–10^6 structures is generated in seconds. All elements are known to the shipped
``oc20_like`` model.
"""

from __future__ import annotations

import itertools
from typing import Iterator

import ase
import ase.build
import numpy as np

__all__ = ["candidate_pool", "METALS", "ADSORBATES"]

METALS = ("Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au")
ADSORBATES = ("H", "O", "OH", "CO", "CH3", "NH3", "H2O")


def _template(metal: str, size: tuple[int, int, int], adsorbate: str) -> ase.Atoms:
    slab = ase.build.fcc111(metal, size=size, vacuum=8.0, periodic=True)
    slab.pbc = (True, True, True)
    molecule = ase.Atoms("H") if adsorbate == "H" else (
        ase.Atoms("O") if adsorbate == "O" else ase.build.molecule(adsorbate))
    ase.build.add_adsorbate(slab, molecule, height=2.0, position="ontop")
    slab.info.pop("adsorbate_info", None)
    return slab


def candidate_pool(n: int, *, seed: int = 0, min_atoms: int = 20, max_atoms: int = 230
                   ) -> Iterator[ase.Atoms]:
    """Yield ``n`` unlabelled candidates (lazily; see the module docstring).

    Args:
      n: number of structures.
      seed: seeds templates, sizes and noise (same seed → same pool).
      min_atoms, max_atoms: range of atom counts (log-uniform), inclusive.

    Yields:
      ``ase.Atoms`` with ``info["template"]`` (template index) and ``info["candidate"]`` (0..n-1).
    """
    if n < 0 or not 1 <= min_atoms <= max_atoms:
        raise ValueError(f"need n >= 0 and 1 <= min_atoms <= max_atoms, got {n}, {min_atoms}, {max_atoms}")
    rng = np.random.default_rng([seed, 0xCA4D])
    layouts = sorted({(a * b * layers, (a, b, layers))
                      for a, b, layers in itertools.product(range(2, 10), range(2, 10), range(2, 6))})
    totals = np.array([t for t, _ in layouts])
    templates: dict = {}
    for k in range(n):
        target = np.exp(rng.uniform(np.log(min_atoms), np.log(max_atoms + 1)))
        adsorbate = ADSORBATES[rng.integers(len(ADSORBATES))]
        metal = METALS[rng.integers(len(METALS))]
        n_ads = len(_ADSORBATE_SIZES[adsorbate])
        ok = np.flatnonzero((totals + n_ads >= min_atoms) & (totals + n_ads <= max_atoms))
        pick = ok[np.argmin(np.abs(totals[ok] + n_ads - target))]
        key = (metal, layouts[pick][1], adsorbate)
        if key not in templates:
            templates[key] = (len(templates), _template(*key))
        index, template = templates[key]
        atoms = template.copy()
        atoms.positions += rng.normal(0.0, rng.uniform(0.03, 0.12), atoms.positions.shape)
        atoms.info.update(template=index, candidate=k)
        yield atoms


_ADSORBATE_SIZES = {"H": "H", "O": "O", "OH": "OH", "CO": "CO", "CH3": "CHHH", "NH3": "NHHH",
                    "H2O": "HHO"}
