"""Pretrain the built-in MLIP on a *source* distribution and ship it as a small checkpoint.

The source is the ``pretrain`` split of a generated dataset (OC20-like: clean slabs and
atomic adsorbates on the in-distribution metals; T1x-like: near-equilibrium frames), so
active-learning fine-tuning on the full pool targets a genuinely shifted distribution,
as with a foundation model. Writes, under ``--out`` (default ``ntkal/pretrained``):

* ``<name>.msgpack``        checkpoint (params + config + metadata, incl. measured errors)
* ``<name>.val.extxyz.xz``  the held-out source frames the card's validation errors are measured on
* ``<name>.md``             model card (data, training elements, hyper-parameters, seed, command, errors per split)

The metadata records ``train_elements``: the sorted atomic numbers present in the training
frames (``ntkal select`` and ``ntkal run`` warn when a pool holds model elements outside it).
``--backfill-train-elements NAME`` adds that key to an older checkpoint: it re-runs the data
selection of the checkpoint's recorded command (same generator, size, seed, frame cap and
split), checks that it reproduces the recorded frame counts and the stored held-out frames, and
rewrites only the metadata (the parameters stay bit-identical) and the card's elements line.

    python experiments/pretrain.py oc20_like --size small
    python experiments/pretrain.py t1x_like --size small
    python experiments/pretrain.py --backfill-train-elements oc20_like
    python experiments/pretrain.py oc20_like --size default --epochs 40 --max-frames 2400 \
        --name oc20_like_large --model 'hidden_irreps=64x0e + 16x1o' --model radial_hidden=64 \
        --model readout_hidden=32

Training is resumable: the fit's state is written after every epoch to ``--state`` (default
``runs/pretrain/<name>.state.npz``), and rerunning the same command after a crash or a kill
continues from the last epoch (the card's wall time is then that of the last session). Another
command with the same state path is refused rather than mixed in.
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import shlex
import sys
import time
from pathlib import Path

import ase.data
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", nargs="?", choices=sorted(ELEMENTS))
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
    parser.add_argument("--model", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of the built-in network (repeatable; e.g. num_layers=3, "
                             "hidden_irreps='64x0e + 16x1o'); defaults: " + ", ".join(f"{k}={v}" for k, v in MODEL.items()))
    parser.add_argument("--state", type=Path, default=None,
                        help="resumable fit state (default runs/pretrain/<name>.state.npz)")
    parser.add_argument("--backfill-train-elements", metavar="NAME", default=None,
                        help="add train_elements to the existing checkpoint <out>/NAME.msgpack (see above) and exit")
    return parser


def model_fields(overrides: list[str]) -> dict:
    """:data:`MODEL` with ``KEY=VALUE`` overrides (values parsed as int, float, else string)."""
    fields = dict(MODEL)
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in MODEL:
            raise SystemExit(f"--model {item!r}: expected KEY=VALUE with KEY one of {', '.join(MODEL)}")
        value = value.strip().strip("'\"")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                pass
        fields[key] = value
    return fields


def source_frames(args, rng):
    """The pretraining frames of ``args``: ``(train_atoms, val_atoms, val_split)``.

    Draws from ``rng`` exactly as :func:`main` does before model initialisation (frame cap,
    then the hold-out), so the same arguments and a fresh ``default_rng(seed)`` give the same split.
    """
    source = list(datasets.load_split(args.dataset, "pretrain", size=args.size, seed=args.seed,
                                      cache_dir=args.cache_dir))
    if len(source) > args.max_frames:
        source = [source[i] for i in np.sort(rng.choice(len(source), args.max_frames, replace=False))]
    val_split = args.val_split or ("system" if args.dataset == "oc20_like" else "frame")
    splitter = split_by_system if val_split == "system" else split_by_frame
    train_atoms, val_atoms = splitter(source, 0.1, rng)
    return train_atoms, val_atoms, val_split


def elements_of(atoms_list) -> list[int]:
    """Sorted atomic numbers present in ``atoms_list``."""
    return sorted({int(z) for atoms in atoms_list for z in atoms.numbers})


def elements_line(train_elements, model_elements) -> str:
    """The model card's training-elements line."""
    symbols = ", ".join(ase.data.chemical_symbols[z] for z in train_elements)
    missing = [ase.data.chemical_symbols[z] for z in model_elements if z not in set(train_elements)]
    tail = (f" elements; never seen in training: {', '.join(missing)}, so `ntkal select` warns on pools holding "
            "them" if missing else " elements: all of them")
    return (f"- **Training elements** (`train_elements`, present in the training frames): {symbols} "
            f"({len(train_elements)} of the model's {len(model_elements)}{tail}).")


def backfill_train_elements(name: str, out: Path, cache_dir: str) -> list[int]:
    """Add ``train_elements`` to ``out/<name>.msgpack`` and its card, parameters untouched.

    Re-runs :func:`source_frames` with the arguments of the checkpoint's recorded command, checks
    the recorded ``train_frames``/``val_frames`` and the stored held-out frames
    (``<name>.val.extxyz.xz``: same numbers and positions), then rewrites the metadata (JSON) only.

    Raises:
      RuntimeError: the recomputed split does not reproduce the recorded one.
    """
    from flax import serialization

    path = out / f"{name}.msgpack"
    raw = path.read_bytes()
    state = serialization.msgpack_restore(raw)
    metadata = json.loads(state["metadata"])
    argv = shlex.split(metadata["command"])[2:]  # drop "python experiments/pretrain.py"
    args = build_parser().parse_args(argv + ["--cache-dir", cache_dir])
    train_atoms, val_atoms, _ = source_frames(args, np.random.default_rng(args.seed))
    if (len(train_atoms), len(val_atoms)) != (metadata["train_frames"], metadata["val_frames"]):
        raise RuntimeError(f"{name}: recomputed {len(train_atoms)}/{len(val_atoms)} train/val frames, the "
                           f"metadata says {metadata['train_frames']}/{metadata['val_frames']}")
    stored = ase.io.read(out / f"{name}.val.extxyz.xz", index=":")
    if len(stored) != len(val_atoms) or not all(
            np.array_equal(a.numbers, b.numbers) and np.allclose(a.positions, b.positions, atol=1e-6)
            for a, b in zip(stored, val_atoms)):
        raise RuntimeError(f"{name}: the recomputed held-out frames differ from {name}.val.extxyz.xz")
    train_elements = elements_of(train_atoms)
    metadata["train_elements"] = train_elements
    new_state = dict(state, metadata=json.dumps(metadata))
    data = serialization.msgpack_serialize(new_state)
    check = serialization.msgpack_restore(data)
    for a, b in zip(jax.tree_util.tree_leaves(state["params"]), jax.tree_util.tree_leaves(check["params"])):
        if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
            raise RuntimeError(f"{name}: parameters would change")
    if jax.tree_util.tree_structure(state["params"]) != jax.tree_util.tree_structure(check["params"]):
        raise RuntimeError(f"{name}: parameter tree would change")
    atomic_write_bytes(path, data)

    card = out / f"{name}.md"
    lines = [line for line in card.read_text().split("\n") if not line.startswith("- **Training elements**")]
    at = next(k for k, line in enumerate(lines) if line.startswith("- **Data**")) + 1
    model_elements = json.loads(state["config"])["elements"]
    lines.insert(at, elements_line(train_elements, model_elements))
    atomic_write_bytes(card, "\n".join(lines).encode())
    return train_elements


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.backfill_train_elements:
        elements = backfill_train_elements(args.backfill_train_elements, args.out, args.cache_dir)
        print(f"{args.backfill_train_elements}: train_elements = {elements} "
              f"({', '.join(ase.data.chemical_symbols[z] for z in elements)})")
        return
    if args.dataset is None:
        parser.error("dataset is required (unless --backfill-train-elements)")
    name = args.name or args.dataset
    fields = model_fields(args.model)
    state_path = args.state or Path(__file__).resolve().parent.parent / "runs" / "pretrain" / f"{name}.state.npz"
    state_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)

    train_atoms, val_atoms, val_split = source_frames(args, rng)
    config = ModelConfig(elements=ELEMENTS[args.dataset], **fields)
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
    print(f"fit state: {state_path} (rerun the same command to resume)")
    result = fit(model, params, train, val, train_config, state_path=state_path)
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
    command = "python experiments/pretrain.py " + shlex.join(sys.argv[1:])
    train_elements = elements_of(train_atoms)
    metadata = {"name": name, "dataset": args.dataset, "size": args.size, "seed": args.seed,
                "train_frames": len(train), "val_frames": len(val), "train_elements": train_elements,
                "best_epoch": result.best_epoch,
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
             elements_line(train_elements, config.elements),
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
