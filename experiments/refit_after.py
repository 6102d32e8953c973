"""How far a fine-tune moves the energies, and whether a second e0 refit after it brings them back.

``[train] refit_e0`` fits the per-element reference energies before the first epoch. The
fine-tune then moves the per-atom energies, which a force-dominated loss hardly pins, and ``e0``
is never trained. ``[train] refit_e0_after`` refits ``e0`` once more on the fine-tuned model's
errors over the labelled frames; the network, hence every force, stays as it is.

For each finished point given, this takes its final fine-tuned model (saved ``state.msgpack``)
and its labelled frames, and prints the energy MAE per atom (eV/atom) and force MAE (eV/Å) on
its labelled frames and on dev frames (``diagnose_finetune.dev_frames``: target-distribution
frames of the dataset's ``train`` split outside the pool, never a test split) for

- the pretrained model with the refit alone (what the fine-tune starts from),
- the study's fine-tuned model (``refit_e0`` before the fine-tune only),
- the same model with ``e0`` refit after the fine-tune (what ``refit_e0_after`` returns; the
  labelled frames here are all of them, as fit's hold-out is part of them).

Usage::

    python experiments/refit_after.py experiments/configs/sevennet_oc20.toml --point random \\
        --seeds 0 1 2 3 4 --dev 100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from diagnose_finetune import dev_frames  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path)
    p.add_argument("--point", default="random", help="an arm's label (its point folder without -seedN)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--dev", type=int, default=100)
    args = p.parse_args(argv)

    import jax

    from ntkal.experiment.config import load_sweep
    from ntkal.experiment.run import load_data
    from ntkal.loop import _labelled_structures, load_state, make_context
    from ntkal.models import load_pretrained
    from ntkal.train import evaluate, make_batches
    from ntkal.train.fitting import refit_reference_energies
    from ntkal.train.metrics import make_error_sums_fn

    points = {(c.label, c.loop.seed): c for c in load_sweep(args.config)}
    first = next(iter(points.values()))
    model, pretrained, _ = load_pretrained(first.checkpoint)
    pool, _ = load_data(first.data, progress=False)
    dev, available = dev_frames(first.data, pool, args.dev)
    print(f"# dev: {len(dev)} target frames of `train` outside the {len(pool)}-frame pool ({available} available)")
    sums = jax.jit(make_error_sums_fn(model.energy))
    energy = jax.jit(model.energy)
    print("| point | seed | labels | model | labelled E-MAE/atom | dev E-MAE/atom | dev F-MAE |")
    print("|---|---|---|---|---|---|---|")
    table: dict = {}
    for seed in args.seeds:
        config = points.get((args.point, seed))
        loaded = None if config is None else load_state(ROOT / first.out / "points" / f"{args.point}-seed{seed}")
        if loaded is None or loaded[0].round <= config.loop.rounds:
            raise SystemExit(f"{args.point} seed {seed} has no finished point in {first.out}")
        state, atoms = loaded
        ctx = make_context(model, pretrained, pool, {"dev": dev}, None, config.loop, progress=False)
        labelled = list(ctx.initial) + _labelled_structures(ctx, atoms)
        models = [("pretrained, refit", refit_reference_energies(model, pretrained, labelled, energy)),
                  ("fine-tuned (study)", state.params),
                  ("fine-tuned, refit after", refit_reference_energies(model, state.params, labelled, energy))]
        for name, params in models:
            own = evaluate(sums, params, make_batches(labelled, 16))
            out = evaluate(sums, params, make_batches(ctx.tests["dev"], 16))
            table.setdefault(name, []).append((own["energy_mae_per_atom"], out["energy_mae_per_atom"],
                                               out["force_mae"]))
            print(f"| {args.point} | {seed} | {len(labelled)} | {name} | {own['energy_mae_per_atom']:.4f} | "
                  f"{out['energy_mae_per_atom']:.4f} | {out['force_mae']:.4f} |", flush=True)
    if len(args.seeds) > 1:
        print(f"\n# mean over seeds {args.seeds}")
        print("| model | labelled E-MAE/atom | dev E-MAE/atom | dev F-MAE |\n|---|---|---|---|")
        for name, rows in table.items():
            m = np.mean(np.asarray(rows), axis=0)
            print(f"| {name} | {m[0]:.4f} | {m[1]:.4f} | {m[2]:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
