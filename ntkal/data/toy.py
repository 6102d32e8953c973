"""Small EMT-labelled Cu/Pt slab frames, generated in seconds, for demos and tests.

Each frame: a 2×2×3 fcc(111) slab (12 atoms, 8 Å vacuum, periodic in-plane and
along z), a random Cu/Pt occupation, bottom layer fixed (``FixAtoms``), positions
rattled with a Gaussian of standard deviation ``rattle`` Å, labelled with ASE's EMT.
The benchmark-grade OC20-like and T1x-like generators live in ``ntkal.datasets``.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from ase.build import fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

__all__ = ["cu_pt_slab_frames"]


def cu_pt_slab_frames(n: int, *, seed: int = 0, rattle: tuple[float, float] = (0.05, 0.2),
                      size: tuple[int, int, int] = (2, 2, 3)) -> Iterator:
    """Yield ``n`` labelled Cu/Pt slab frames (``ase.Atoms`` with a ``SinglePointCalculator``).

    Args:
      n: number of frames.
      seed: numpy seed (same seed ⇒ same frames).
      rattle: range of the per-frame rattle standard deviation (Å).
      size: slab repetitions (a, b, layers).
    """
    rng = np.random.default_rng(seed)
    for k in range(n):
        slab = fcc111("Cu", size=size, vacuum=4.0, a=3.7, periodic=True)
        slab.set_chemical_symbols(rng.choice(["Cu", "Pt"], size=len(slab)).tolist())
        bottom = slab.positions[:, 2] < slab.positions[:, 2].min() + 0.5
        slab.set_constraint(FixAtoms(mask=bottom))
        sigma = rng.uniform(*rattle)
        slab.positions = slab.positions + rng.normal(0.0, sigma, size=slab.positions.shape)
        slab.calc = EMT()
        energy = slab.get_potential_energy()
        forces = slab.get_forces(apply_constraint=False)
        slab.calc = SinglePointCalculator(slab, energy=energy, forces=forces)
        slab.info.update({"system_id": f"cupt-{seed}-{k}", "frame": k, "rattle": float(sigma)})
        yield slab
