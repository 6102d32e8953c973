"""Fine-tuning demo: train the built-in equivariant MLIP on EMT-labelled Cu/Pt slabs.

Generates 300 rattled Cu/Pt fcc(111) slab frames with ASE's EMT (seconds), fits
per-element reference energies, trains for a few epochs with early stopping on a
validation split, prints validation metrics before and after, and saves a checkpoint
to ``runs/demo/model.msgpack``.

    python experiments/demo_finetune.py [--frames 300] [--epochs 30] [--out runs/demo]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from ntkal.data import structures_from_atoms
from ntkal.data.toy import cu_pt_slab_frames
from ntkal.models import (ModelConfig, adapt_config, build_model, count_parameters,
                          fit_reference_energies, save_checkpoint)
from ntkal.train import TrainConfig, evaluate, fit, make_batches, make_error_sums_fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    args = parser.parse_args()

    t0 = time.perf_counter()
    config = ModelConfig(elements=(29, 78), hidden_irreps="32x0e + 16x1o", num_layers=2, cutoff=4.5)
    frames = list(cu_pt_slab_frames(args.frames, seed=args.seed))
    structures = [s for _, s in structures_from_atoms(frames, config.cutoff, elements=config.elements)]
    n_val = len(structures) // 5
    train, val = structures[n_val:], structures[:n_val]
    config = adapt_config(config, train)
    model = build_model(config)
    params = model.init(jax.random.key(args.seed), make_batches(train[:2], 2)[0])
    params["e0"] = jnp.asarray(fit_reference_energies(config, train), jnp.float32)
    print(f"{len(train)} train / {len(val)} val frames, model with {count_parameters(params):,} parameters")

    sums = jax.jit(make_error_sums_fn(model.energy))
    val_batches = make_batches(val, 16)
    before = evaluate(sums, params, val_batches)
    result = fit(model, params, train, val, TrainConfig(max_epochs=args.epochs, batch_size=8,
                                                        learning_rate=5e-3, seed=args.seed))
    after = evaluate(sums, result.params, val_batches)
    print(f"{'validation':<12}{'E MAE meV/atom':>16}{'E RMSE meV/atom':>17}{'F MAE eV/Å':>12}{'F RMSE eV/Å':>13}")
    for name, m in (("untrained", before), (f"epoch {result.best_epoch}", after)):
        print(f"{name:<12}{1000 * m['energy_mae_per_atom']:>16.1f}{1000 * m['energy_rmse_per_atom']:>17.1f}"
              f"{m['force_mae']:>12.4f}{m['force_rmse']:>13.4f}")
    save_checkpoint(args.out / "model.msgpack", result.params, config,
                    {"frames": args.frames, "seed": args.seed, "best_epoch": result.best_epoch})
    print(f"checkpoint: {args.out / 'model.msgpack'}  ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
