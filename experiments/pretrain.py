"""Pretrain the built-in MLIP on a *source* distribution and ship it as a small checkpoint.

The source is the ``pretrain`` split of a generated dataset (OC20-like: clean slabs and
atomic adsorbates on the in-distribution metals; T1x-like: near-equilibrium frames), so
active-learning fine-tuning on the full pool targets a genuinely shifted distribution,
as with a foundation model. Writes, under ``--out`` (default ``ntkal/pretrained``):

* ``<name>.msgpack``        checkpoint (params + config + metadata, incl. measured errors)
* ``<name>.val.extxyz.xz``  the held-out source frames the card's validation errors are measured on
* ``<name>.md``             model card (data, hyper-parameters, seed, command, errors per split)

    python experiments/pretrain.py oc20_like --size small
    python experiments/pretrain.py t1x_like --size small
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import sys
import time
from pathlib import Path

import ase.io
import jax
import jax.numpy as jnp
import numpy as np

from ntkal import datasets
from ntkal.data import structures_from_atoms
from ntkal.models import (ModelConfig, adapt_config, atomic_write_bytes, build_model, count_parameters,
                          fit_reference_energies, save_checkpoint)
from ntkal.train import TrainConfig, evaluate, fit, make_batches, make_error_sums_fn

ELEMENTS = {
    "oc20_like": ("H", "C", "N", "O", "Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au"),
    "t1x_like": ("H", "C", "N", "O"),
}
MODEL = dict(hidden_irreps="32x0e + 8x1o", num_layers=2, lmax=2, num_radial=8, radial_hidden=32,
             readout_hidden=16, cutoff=4.0)


def split_by_frame(atoms, fraction, rng):
    held = set(rng.choice(len(atoms), max(1, int(round(fraction * len(atoms)))), replace=False).tolist())
    return [a for k, a in enumerate(atoms) if k not in held], [a for k, a in enumerate(atoms) if k in held]


def split_by_system(atoms, fraction, rng):
    systems = sorted({a.info.get("system_id", a.info.get("formula", str(k))) for k, a in enumerate(atoms)})
    held = set(rng.choice(systems, max(1, int(round(fraction * len(systems)))), replace=False).tolist())
    key = lambda k, a: a.info.get("system_id", a.info.get("formula", str(k)))
    train = [a for k, a in enumerate(atoms) if key(k, a) not in held]
    val = [a for k, a in enumerate(atoms) if key(k, a) in held]
    return train, val


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=sorted(ELEMENTS))
    parser.add_argument("--size", default="small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--max-frames", type=int, default=800, help="cap on source frames (random subset)")
    parser.add_argument("--max-eval", type=int, default=200, help="frames per split for the card (random subset)")
    parser.add_argument("--cache-dir", default="data_cache")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "ntkal" / "pretrained")
    parser.add_argument("--name", default=None)
    parser.add_argument("--val-split", choices=("system", "frame"), default=None,
                        help="hold out whole systems or random frames (default: system for oc20_like, frame for "
                             "t1x_like, whose few source molecules make a by-molecule hold-out stop training "
                             "after 2 epochs)")
    args = parser.parse_args()
    name = args.name or args.dataset
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)

    source = list(datasets.load_split(args.dataset, "pretrain", size=args.size, seed=args.seed,
                                      cache_dir=args.cache_dir))
    if len(source) > args.max_frames:
        source = [source[i] for i in np.sort(rng.choice(len(source), args.max_frames, replace=False))]
    val_split = args.val_split or ("system" if args.dataset == "oc20_like" else "frame")
    splitter = split_by_system if val_split == "system" else split_by_frame
    train_atoms, val_atoms = splitter(source, 0.1, rng)
    config = ModelConfig(elements=ELEMENTS[args.dataset], **MODEL)
    to_structures = lambda atoms: [s for _, s in structures_from_atoms(atoms, config.cutoff,
                                                                       elements=config.elements)]
    train, val = to_structures(train_atoms), to_structures(val_atoms)
    config = adapt_config(config, train)
    model = build_model(config)
    params = model.init(jax.random.key(args.seed), make_batches(train[:2], 2)[0])
    params["e0"] = jnp.asarray(fit_reference_energies(config, train), jnp.float32)
    print(f"{name}: {len(train)} train / {len(val)} val source frames; {count_parameters(params):,} parameters")
    train_config = TrainConfig(max_epochs=args.epochs, batch_size=8, learning_rate=3e-3, patience=15,
                               seed=args.seed)
    result = fit(model, params, train, val, train_config)
    params = result.params

    sums = jax.jit(make_error_sums_fn(model.energy))
    errors = {"source_val": evaluate(sums, params, make_batches(val, 16))}
    splits = [s for s in datasets.splits_of(args.dataset) if s != "pretrain"]
    for split in splits:
        atoms = list(datasets.load_split(args.dataset, split, size=args.size, seed=args.seed,
                                         cache_dir=args.cache_dir, progress=False))
        if len(atoms) > args.max_eval:
            atoms = [atoms[i] for i in np.sort(rng.choice(len(atoms), args.max_eval, replace=False))]
        errors[split] = evaluate(sums, params, make_batches(to_structures(atoms), 16))
    wall = time.perf_counter() - t0
    command = "python experiments/pretrain.py " + " ".join(sys.argv[1:])
    metadata = {"name": name, "dataset": args.dataset, "size": args.size, "seed": args.seed,
                "train_frames": len(train), "val_frames": len(val), "best_epoch": result.best_epoch,
                "epochs_run": len(result.history), "train_config": train_config.__dict__,
                "errors": errors, "command": command, "wall_s": wall}
    args.out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.out / f"{name}.msgpack", params, config, metadata)
    buffer = io.StringIO()
    ase.io.write(buffer, val_atoms, format="extxyz")
    atomic_write_bytes(args.out / f"{name}.val.extxyz.xz", lzma.compress(buffer.getvalue().encode()))

    lines = [f"# Pretrained model card: `{name}`", "",
             f"Built-in NequIP-style model ({count_parameters(params):,} parameters), elements "
             f"{', '.join(config.symbols)}.", "",
             f"- **Data**: `{args.dataset}` generator, size `{args.size}`, seed {args.seed}; the `pretrain` "
             f"(source) split, {len(train)} training frames and {len(val)} held-out frames "
             f"(split by {val_split}; stored in `{name}.val.extxyz.xz`).",
             f"- **Model config**: `{json.dumps(config.to_dict())}`",
             f"- **Training**: {train_config}; best epoch {result.best_epoch} of {len(result.history)}.",
             f"- **Command**: `{command}` ({wall:.0f} s on a 2-core CPU).", "",
             "| split | frames | E MAE (meV/atom) | E RMSE (meV/atom) | F MAE (eV/Å) | F RMSE (eV/Å) |",
             "|---|---|---|---|---|---|"]
    for split, m in errors.items():
        lines.append(f"| {split} | {m['n_structures']} | {1000 * m['energy_mae_per_atom']:.1f} | "
                     f"{1000 * m['energy_rmse_per_atom']:.1f} | {m['force_mae']:.4f} | {m['force_rmse']:.4f} |")
    lines += ["", "`source_val` is the held-out source data; the other rows are the dataset's splits "
              f"(shifted distributions the active-learning experiments target), each a random subset of at most "
             f"{args.max_eval} frames.", ""]
    atomic_write_bytes(args.out / f"{name}.md", "\n".join(lines).encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
