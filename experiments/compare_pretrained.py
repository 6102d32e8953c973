"""Errors of several checkpoints on the same frames of a generated dataset's splits.

Model cards measure each checkpoint on the splits of the dataset size it was pretrained on; this
puts several checkpoints side by side on one size's splits (the same random subset of at most
``--max-eval`` frames per split for every model), so their numbers compare directly.

    python experiments/compare_pretrained.py oc20_like oc20_like_large --dataset oc20_like --size default
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from ntkal import datasets
from ntkal.data import structures_from_atoms
from ntkal.models import count_parameters, load_pretrained
from ntkal.train import evaluate, make_batches, make_error_sums_fn


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="shipped names or checkpoint paths")
    p.add_argument("--dataset", default="oc20_like")
    p.add_argument("--size", default="default")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (the subset draw uses seed 0)")
    p.add_argument("--max-eval", type=int, default=200)
    p.add_argument("--cache-dir", default="data_cache")
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    frames = {}
    for split in datasets.splits_of(args.dataset):
        if split == "pretrain":
            continue
        atoms = list(datasets.load_split(args.dataset, split, size=args.size, seed=args.seed,
                                         cache_dir=args.cache_dir, progress=False))
        if len(atoms) > args.max_eval:
            atoms = [atoms[i] for i in np.sort(rng.choice(len(atoms), args.max_eval, replace=False))]
        frames[split] = atoms
    print(f"`{args.dataset}` size `{args.size}`, seed {args.seed}: at most {args.max_eval} frames per split "
          f"(one subset for every model)\n")
    print("| model | parameters | split | frames | E MAE (meV/atom) | F MAE (eV/Å) | F RMSE (eV/Å) |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        model, params, _ = load_pretrained(name)
        n_params = count_parameters(params)
        sums = jax.jit(make_error_sums_fn(model.energy))
        for split, atoms in frames.items():
            structures = [s for _, s in structures_from_atoms(atoms, model.config.cutoff,
                                                              elements=model.config.elements)]
            m = evaluate(sums, params, make_batches(structures, 16))
            print(f"| {name} | {n_params:,} | {split} | {m['n_structures']} | "
                  f"{1000 * m['energy_mae_per_atom']:.1f} | {m['force_mae']:.4f} | {m['force_rmse']:.4f} |",
                  flush=True)


if __name__ == "__main__":
    main()
