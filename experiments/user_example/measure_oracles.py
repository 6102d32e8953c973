"""Time candidate oracles on one representative slab and check the CO chemistry.

The slab: 3x3x3 fcc(111) Cu with 3 random Pt substitutions, CO on top, 10 Å vacuum (29 atoms,
bottom 2 layers fixed). For each oracle: time of the first single point (includes the
calculator/model setup), of a second single point on a rattled copy, the C-O distance after
at most 20 BFGS steps from the placed geometry and after a longer relaxation (fmax 0.03 eV/Å, at
most 300 steps for EMT, 100 otherwise) from a rattled copy (molecular CO: C-O ~1.15 Å, upright;
EMT stretches it and tilts it over).

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 .venv/bin/python experiments/user_example/measure_oracles.py emt xtb chgnet
    OMP_NUM_THREADS=1 /usr/bin/python3 experiments/user_example/measure_oracles.py gpaw   # Debian's gpaw 22.8

Only ASE is needed by the script itself (so it runs under Debian's python for GPAW).
"""

import sys
import time

import numpy as np
from ase.build import add_adsorbate, fcc111, molecule
from ase.constraints import FixAtoms
from ase.optimize import BFGS


def slab():
    atoms = fcc111("Cu", size=(3, 3, 3), vacuum=10.0)
    rng = np.random.default_rng(0)
    top = [a.index for a in atoms if a.tag == 1]
    for i in rng.choice([a.index for a in atoms if a.tag != 1], 3, replace=False):
        atoms[i].symbol = "Pt"
    co = molecule("CO")
    add_adsorbate(atoms, co, 1.9, position=atoms.positions[top[4], :2], mol_index=1)  # C down
    atoms.center(vacuum=10.0, axis=2)
    atoms.set_constraint(FixAtoms(indices=[a.index for a in atoms if a.tag >= 2]))
    atoms.pbc = True
    return atoms


def calculator(name):
    if name == "emt":
        from ase.calculators.emt import EMT
        return EMT()
    if name == "xtb":
        from tblite.ase import TBLite
        return TBLite(method="GFN1-xTB", verbosity=0)
    if name == "chgnet":
        from chgnet.model import CHGNetCalculator
        return CHGNetCalculator(use_device="cpu")
    if name == "gpaw":
        from gpaw import GPAW, PW
        return GPAW(mode=PW(350), xc="RPBE", kpts=(2, 2, 1), txt=None, convergence={"energy": 1e-4},
                    occupations={"name": "fermi-dirac", "width": 0.1})
    raise ValueError(name)


def co_distance(atoms):
    return atoms.get_distance(len(atoms) - 2, len(atoms) - 1)  # O, C: the last two atoms


def main(names):
    for name in names:
        atoms = slab()
        t = time.perf_counter()
        atoms.calc = calculator(name)
        e = atoms.get_potential_energy()
        f = atoms.get_forces()
        first = time.perf_counter() - t
        rattled = slab()
        rattled.rattle(0.05, seed=1)
        rattled.calc = calculator(name)
        t = time.perf_counter()
        rattled.get_potential_energy()
        rattled.get_forces()
        second = time.perf_counter() - t
        print(f"{name}: {len(atoms)} atoms  E={e:.3f} eV  max|F|={np.abs(f).max():.3f} eV/A  "
              f"first single point {first:.2f} s (incl. setup), second {second:.2f} s", flush=True)
        steps = 0 if name == "gpaw" else 20  # GPAW: timing only (minutes per step here)
        if steps:
            long = slab()  # a longer relaxation from a rattled start
            long.rattle(0.1, seed=3)
            long.calc = calculator(name)
            t = time.perf_counter()
            opt = BFGS(long, logfile=None)
            opt.run(fmax=0.03, steps=300 if name == "emt" else 100)
            top = long.positions[[a.index for a in long if a.tag == 1], 2].mean()
            print(f"{name}: rattled start, {opt.nsteps} BFGS steps ({time.perf_counter() - t:.1f} s): "
                  f"C-O {co_distance(long):.3f} A, C {long.positions[-1, 2] - top:.2f} A and "
                  f"O {long.positions[-2, 2] - top:.2f} A above the top layer", flush=True)
            relax = slab()
            relax.calc = calculator(name)
            t = time.perf_counter()
            BFGS(relax, logfile=None).run(fmax=0.05, steps=steps)
            print(f"{name}: C-O {co_distance(slab()):.3f} A -> {co_distance(relax):.3f} A after <= {steps} "
                  f"BFGS steps ({time.perf_counter() - t:.1f} s), C height above top layer "
                  f"{relax.positions[-1, 2] - relax.positions[[a.index for a in relax if a.tag == 1], 2].mean():.2f} A",
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["emt", "xtb", "chgnet"])
