"""Why do kernel picks raise the test error? Refit a finished study's labelled sets with other
fine-tuning settings, and score them on a development split that is *not* a test split.

For each given point directory (a seed of a method in a finished or running study), the labelled
pool structures of the first ``n`` labels are taken in pick order and fine-tuned from the
pretrained parameters exactly as the loop does (same TrainConfig, seed rule, replay sample),
then with each ``--variant`` (TrainConfig overrides). Errors are measured on ``dev``: target-
distribution frames of the dataset's ``train`` split that are not in the pool (never the study's
test splits, so nothing here tunes on them). The loop's own setting is the first row; as a
reproduction check its force MAE on the study's first test split (``--check-split``) is compared
with the study's ``results.json`` row, and only the outcome is printed ("same" or the relative
difference), never a test error beside the dev errors. Dev errors are forces (eV/Å) and energies
per atom (eV/atom; with ``refit_e0`` the fine-tune's energies can drift far from the refit's).
With several ``--seeds`` a last table gives each variant's seed-mean dev error per label count
and whether that curve falls monotonically.

Also printed per labelled set: the force magnitude of the picks (max |F| per frame, eV/Å), since
the kernel methods are suspected of picking high-force frames.

Usage::

    python experiments/diagnose_finetune.py experiments/configs/oc20_payoff_large.toml \\
        --points random-rp32 joint-varred-d512-k4-med-ev-pre-rp32 --seed 0 --labels 48 96 \\
        --variant learning_rate=0.0005 --variant grad_clip=1.0 --drop-above 5
    python experiments/diagnose_finetune.py experiments/configs/pool_shift_target.toml \
        --points random-rp32 --seeds 0 1 2 3 4 --labels 36 48 60 72 --variant grad_clip=0.3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_variant(text: str) -> dict:
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        try:  # numbers, true/false/null, lists; anything else ("fixed", "per_structure") is text
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value.strip()
    return out


def dev_frames(data, pool, count: int) -> tuple[list, int]:
    """``(dev, available)``: ``count`` target-distribution frames of the dataset's ``train`` split
    that are not pool frames (seeded draw, sorted), and how many there were to draw from."""
    from ntkal import datasets

    key = lambda a: (a.numbers.tobytes(), np.round(a.positions, 6).tobytes())  # noqa: E731
    in_pool = {key(a) for a in pool}
    source = datasets.oc20_is_source if data.dataset == "oc20_like" else (lambda a: False)
    target = [a for a in datasets.load_split(data.dataset, "train", size=data.size, seed=data.seed,
                                             cache_dir=data.cache_dir, progress=False)
              if not source(a) and key(a) not in in_pool]
    rng = np.random.default_rng(12345)
    return [target[i] for i in np.sort(rng.choice(len(target), min(count, len(target)), replace=False))], len(target)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path)
    p.add_argument("--points", nargs="+", required=True, help="variant labels (the point folder without -seedN)")
    p.add_argument("--seeds", "--seed", type=int, nargs="+", default=[0])
    p.add_argument("--check-split", help="test split of the reproduction check (default: the config's first)")
    p.add_argument("--labels", type=int, nargs="+", default=[48, 96])
    p.add_argument("--variant", action="append", default=[], help="TrainConfig overrides, k=v[,k=v]")
    p.add_argument("--dev", type=int, default=200, help="development frames (not in the pool, not tests)")
    p.add_argument("--drop-above", type=float, nargs="*", default=[],
                   help="extra rows: the loop's fine-tune without the picks whose max |F| exceeds this (eV/Å)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    import jax
    from ntkal.experiment.config import load_sweep, sweep_label
    from ntkal.experiment.run import load_data, load_replay
    from ntkal.loop import _labelled_structures, load_state, make_context
    from ntkal.models import load_pretrained
    from ntkal.train import evaluate, fit, make_batches
    from ntkal.train.metrics import make_error_sums_fn

    points = {(sweep_label(c), c.loop.seed): c for c in load_sweep(args.config)}
    first = next(iter(points.values()))
    model, pretrained, _ = load_pretrained(first.checkpoint)
    pool, tests = load_data(first.data, progress=False)
    replay_atoms = load_replay(first.data, progress=False)
    check = args.check_split or first.data.tests[0]
    dev, available = dev_frames(first.data, pool, args.dev)
    print(f"# dev: {len(dev)} target frames of `train` outside the {len(pool)}-frame pool "
          f"({available} available); tests untouched except {check} for the reproduction check")
    sums = jax.jit(make_error_sums_fn(model.energy))
    out_dir = ROOT / first.out / "points"
    results = []
    header = (f"| point | seed | labels | fine-tune | dev F-MAE | dev F-RMSE | dev E-MAE/atom | reproduces "
              f"the study ({check}) | picks' max abs F (median / max) |")
    print(header + "\n|---|---|---|---|---|---|---|---|---|")
    study_rows = {(r["label"], int(r["seed"]), int(r["n_labels"])): r for r in
                  json.loads((ROOT / first.out / "results.json").read_text())["rows"] if r["split"] == check}
    for label, seed in [(label, seed) for label in args.points for seed in args.seeds]:
        config = points[(label, seed)]
        loaded = load_state(out_dir / f"{label}-seed{seed}")
        if loaded is None:
            raise SystemExit(f"no saved state for {label} seed {seed}")
        _, atoms = loaded
        ctx = make_context(model, pretrained, pool, {"dev": dev, check: tests[check]}, None, config.loop,
                           progress=False, replay_atoms=replay_atoms)
        tests_s = ctx.tests
        for n in args.labels:
            if n > len(atoms) + len(ctx.initial):
                continue
            picked = atoms[:n - len(ctx.initial)]  # the loop's initial labels come first
            fmax = np.array([np.abs(a.get_forces()).max() for a in picked])
            structures = list(ctx.initial) + _labelled_structures(ctx, picked)
            r = (n - len(ctx.initial) - config.loop.initial) // config.loop.batch  # the round that had n labels
            base = dataclasses.replace(config.loop.train, seed=config.loop.train.seed + 1000 * config.loop.seed + r)
            runs = ([("loop's", {}, None)] + [(v, parse_variant(v), None) for v in args.variant]
                    + [(f"without picks max|F| > {x:g}", {}, x) for x in args.drop_above])
            for name, overrides, limit in runs:
                t = time.perf_counter()
                group = name
                kept = structures
                if limit is not None:
                    keep = [k for k, f in enumerate(fmax) if f <= limit]
                    kept = list(ctx.initial) + [structures[len(ctx.initial) + k] for k in keep]
                    name += f" ({len(picked) - len(keep)} dropped)"
                params = fit(model, pretrained, kept, None, dataclasses.replace(base, **overrides),
                             replay=ctx.replay, progress=False, compiled=ctx.cache).params
                dev_m = evaluate(sums, params, make_batches(tests_s["dev"], 16))
                reproduced = ""
                if name == "loop's":  # the test split only for the check, and only its outcome shown
                    ours = evaluate(sums, params, make_batches(tests_s[check], 16))["force_mae"]
                    theirs = study_rows.get((label, seed, n), {}).get("force_mae")
                    reproduced = ("no study row" if theirs is None else "same" if np.isclose(ours, theirs, rtol=1e-4)
                                  else f"differs by {abs(ours / theirs - 1):.1%}")
                row = {"point": label, "seed": seed, "labels": n, "variant": name, "group": group,
                       "dev_force_mae": dev_m["force_mae"], "dev_force_rmse": dev_m["force_rmse"],
                       "dev_energy_mae_per_atom": dev_m["energy_mae_per_atom"], "reproduces": reproduced,
                       "picks_fmax_median": float(np.median(fmax)),
                       "picks_fmax_max": float(fmax.max()), "seconds": time.perf_counter() - t}
                results.append(row)
                print(f"| {label} | {seed} | {n} | {name} | {row['dev_force_mae']:.4f} | {row['dev_force_rmse']:.4f} | "
                      f"{row['dev_energy_mae_per_atom']:.4f} | {reproduced} | "
                      f"{row['picks_fmax_median']:.2f} / {row['picks_fmax_max']:.2f} |", flush=True)
                if args.json:
                    args.json.write_text(json.dumps(results, indent=1))
    if len(args.seeds) > 1:
        print_seed_means(results, args.seeds)
    return 0


def print_seed_means(results: list[dict], seeds: list[int]) -> None:
    """Seed-mean dev force MAE per point, variant and label count (only where every seed has a
    row), and whether each curve falls monotonically with the labels."""
    groups: dict = {}
    for row in results:
        groups.setdefault((row["point"], row["group"]), {}).setdefault(row["labels"], []).append(row["dev_force_mae"])
    labels = sorted({row["labels"] for row in results})
    print(f"\n# seed-mean dev F-MAE (eV/Å) over seeds {seeds}")
    print("| point | fine-tune | " + " | ".join(f"{n} labels" for n in labels) + " | monotone |")
    print("|---|---|" + "---|" * len(labels) + "---|")
    for (point, variant), by_n in groups.items():
        means = [float(np.mean(by_n[n])) if len(by_n.get(n, [])) == len(seeds) else float("nan") for n in labels]
        finite = [m for m in means if np.isfinite(m)]
        monotone = "n/a" if len(finite) < 2 else "yes" if all(b <= a for a, b in zip(finite, finite[1:])) else "no"
        print(f"| {point} | {variant} | " + " | ".join(f"{m:.4f}" for m in means) + f" | {monotone} |")


if __name__ == "__main__":
    sys.exit(main())
