"""Reference points for the worked example's results: the pretrained model without fine-tuning,
and the trivial predictor (forces 0, energy = the initial set's mean energy per atom).

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 .venv/bin/python experiments/user_example/baselines.py

Same metrics as ``ntkal run``: force MAE over the Cartesian components of free atoms (eV/Å),
energy MAE per atom (meV/atom).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main():
    from ntkal.calculator import NTKALCalculator
    from ntkal.datasets.files import read_structure_file
    from ntkal.models import load_pretrained

    model, params, _ = load_pretrained("oc20_like")
    calc = NTKALCalculator(model, params)
    initial = list(read_structure_file(str(HERE / "data" / "initial.extxyz.xz")))
    mean_e = np.mean([a.get_potential_energy() / len(a) for a in initial])
    print("| split | frames | pretrained F-MAE | pretrained E-MAE | zero-force F-MAE | mean-energy E-MAE |")
    print("|---|---|---|---|---|---|")
    for split in ("initial", "val_id", "val_ood"):
        frames = list(read_structure_file(str(HERE / "data" / f"{split}.extxyz.xz")))
        f_err, f_ref, e_err, e_ref = [], [], [], []
        for atoms in frames:
            free = atoms.get_tags() > 0
            forces = atoms.get_forces(apply_constraint=False)[free]
            energy = atoms.get_potential_energy()
            work = atoms.copy()
            work.calc = calc
            f_err.append(np.abs(work.get_forces(apply_constraint=False)[free] - forces).ravel())
            f_ref.append(np.abs(forces).ravel())
            e_err.append(abs(work.get_potential_energy() - energy) / len(atoms))
            e_ref.append(abs(energy / len(atoms) - mean_e))
        print(f"| {split} | {len(frames)} | {np.concatenate(f_err).mean():.3f} | {1000 * np.mean(e_err):.0f} | "
              f"{np.concatenate(f_ref).mean():.3f} | {1000 * np.mean(e_ref):.0f} |", flush=True)


if __name__ == "__main__":
    main()
