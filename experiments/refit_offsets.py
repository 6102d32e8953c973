"""How large the energy offset is that a study's `refit_e0` cannot fix (ntkal.data.compositions).

Refits the per-element reference energies of the study's pretrained model (no training) on
``--labels`` random pool frames with their stored labels, as round 0 of the loop does, and
predicts the energies of dev frames: frames of the same source split outside the pool (never a
test split). The dev frames are grouped by whether the pool's compositions can fix their
energies. For comparison, the same refit on the labelled frames plus the dev frames, which have
every composition.

    python experiments/refit_offsets.py experiments/configs/sevennet_oc20.toml --dev-split train:3000
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--labels", type=int, default=16, help="labelled pool frames (default 16)")
    parser.add_argument("--dev-split", default="train:3000",
                        help="where the dev frames come from ([data] pool syntax, all frames; pool frames removed)")
    parser.add_argument("--per-group", type=int, default=20, help="dev frames per group (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import jax

    from ntkal.data import structures_from_atoms
    from ntkal.data.compositions import reference_energy_gaps
    from ntkal.data.overlap import FrameIndex, frame_of
    from ntkal.experiment.config import load_sweep
    from ntkal.experiment.run import load_data
    from ntkal.models import load_pretrained
    from ntkal.train.fitting import predict_energies, refit_reference_energies

    point = load_sweep(args.config)[0]
    model, params, _ = load_pretrained(point.checkpoint)
    pool, _ = load_data(point.data, progress=False, stored_labels=True)
    source, _ = load_data(dataclasses.replace(point.data, pool=(args.dev_split,), pool_filter="all", tests=()),
                          progress=False, stored_labels=True)
    in_pool = FrameIndex()
    for k, a in enumerate(pool):
        in_pool.add(frame_of(a), k)
    dev = [a for a in source if in_pool.find(frame_of(a)) is None]
    rng = np.random.default_rng(args.seed)
    labelled = [pool[i] for i in rng.choice(len(pool), args.labels, replace=False)]
    gaps = reference_energy_gaps([a.numbers for a in pool], {"dev": [a.numbers for a in dev]})
    unfixable = gaps[0].unresolved if gaps else np.zeros(len(dev), bool)
    groups = {"fixable": np.flatnonzero(~unfixable), "not fixable": np.flatnonzero(unfixable)}
    picked = {name: rng.permutation(idx)[:args.per_group] for name, idx in groups.items()}
    print(f"pool {len(pool)} frames; dev {len(dev)} frames ({args.dev_split}, pool frames removed): "
          f"{int(unfixable.sum())} not fixable by the pool's compositions")
    if gaps:
        print(gaps[0].message())

    cutoff, elements = model.config.cutoff, model.config.elements
    as_structures = lambda atoms: [s for _, s in structures_from_atoms(atoms, cutoff, elements=elements,
                                                                      require_labels=True)]
    energy = jax.jit(model.energy)

    labelled_s = as_structures(labelled)
    dev_s = {name: as_structures([dev[i] for i in idx]) for name, idx in picked.items()}
    refits = {f"{args.labels} pool frames (the loop's round 0)": labelled_s,
              f"{args.labels} pool frames + the {sum(map(len, dev_s.values()))} dev frames": labelled_s
              + [s for group in dev_s.values() for s in group]}
    print("\n| e0 refit on | dev group | frames | mean error (eV) | MAE (eV/atom) |\n|---|---|---|---|---|")
    for what, fit_on in refits.items():
        p = refit_reference_energies(model, params, fit_on, energy, 8)
        for name, structures in dev_s.items():
            if not structures:
                continue
            error = predict_energies(energy, p, structures) - np.array([s.energy for s in structures])
            per_atom = np.abs(error) / np.array([s.n_atoms for s in structures])
            print(f"| {what} | {name} | {len(structures)} | {error.mean():+.2f} | {per_atom.mean():.3f} |")


if __name__ == "__main__":
    main()
