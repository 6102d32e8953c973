"""Final errors of a sweep's arms on the parts of a test split that are like the pool and unlike it.

A test split can mix frames the pool has kin of and frames it has none of. In the OC20-like
studies, ``val_id`` is "in distribution" for the toy models, which were pretrained on clean slabs
and atomic adsorbates; the pool holds only molecular adsorbates (``pool_filter = "target"``). For
a foundation model that never saw those frames, 86 of ``val_id``'s 150 frames hold an adsorbate
that no pool frame holds. One error over the whole split mixes the two regimes.

This script splits a test split by whether the value of ``atoms.info[KEY]`` (e.g. ``adsorbate``)
of each frame occurs among the pool's frames, evaluates each finished point's final fine-tuned
model (its saved ``state.msgpack``) on both parts, and prints per arm the mean over seeds with a
95 % bootstrap CI and the paired difference against random (seeds where the arm is lower). As a
check that it evaluates the same models on the same frames, the whole split's force MAE must
equal the final row of the sweep's ``results.json`` (else it stops). Nothing here chooses a
setting; it reads finished points only.

Usage::

    python experiments/group_errors.py experiments/configs/sevennet_oc20.toml --split val_id \\
        --key adsorbate [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

METRICS = ("force_mae", "force_rmse", "energy_mae_per_atom")


def split_by_pool(pool, frames, key: str) -> dict[str, np.ndarray]:
    """``{"in pool": idx, "not in pool": idx}``: test-frame indices whose ``info[key]`` value
    occurs (does not occur) among the pool frames' values."""
    missing = [k for k, a in enumerate(frames) if key not in a.info]
    if missing:
        raise SystemExit(f"test frame {missing[0]} has no info[{key!r}] ({len(missing)} frames lack it)")
    in_pool = {a.info.get(key) for a in pool}
    inside = np.array([a.info[key] in in_pool for a in frames], bool)
    return {"in pool": np.flatnonzero(inside), "not in pool": np.flatnonzero(~inside)}


def final_rows(results: dict, split: str) -> dict[tuple[str, int], dict]:
    """(label, seed) -> the row of the last round on ``split``."""
    last: dict = {}
    for row in results["rows"]:
        if row["split"] == split:
            key = (row["label"], int(row["seed"]))
            if key not in last or row["round"] > last[key]["round"]:
                last[key] = row
    return last


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path)
    p.add_argument("--split", default="val_id")
    p.add_argument("--key", default="adsorbate", help="the atoms.info key that groups the frames")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    import jax

    from ntkal.data.chunks import structures_from_atoms
    from ntkal.experiment import load_sweep
    from ntkal.experiment.run import load_inputs
    from ntkal.loop import load_state
    from ntkal.models import load_pretrained
    from ntkal.summarize import bootstrap_indices, mean_ci, paired_difference
    from ntkal.train.fitting import make_batches
    from ntkal.train.metrics import evaluate, make_error_sums_fn

    points = load_sweep(args.config)
    out_dir = Path(points[0].out)
    results = json.loads((out_dir / "results.json").read_text())
    last = final_rows(results, args.split)
    inputs = load_inputs(points[0], progress=False)
    if args.split not in inputs.tests:
        raise SystemExit(f"{args.config} has no test split {args.split!r} (it has {sorted(inputs.tests)})")
    frames = inputs.tests[args.split]
    groups = split_by_pool(inputs.pool, frames, args.key)
    model, _, _ = load_pretrained(points[0].checkpoint)
    structures = [s for _, s in structures_from_atoms(frames, model.config.cutoff, elements=model.config.elements,
                                                      require_labels=True)]
    sums = jax.jit(make_error_sums_fn(model.energy))
    print(f"{args.split}: {len(frames)} frames; by info[{args.key!r}]: "
          + "; ".join(f"{name} {len(idx)} ({', '.join(sorted({str(frames[i].info[args.key]) for i in idx}))})"
                      for name, idx in groups.items()), flush=True)

    values: dict = defaultdict(dict)  # (label, group, metric) -> {seed: value}
    for point in points:
        label, seed = point.label, point.loop.seed
        loaded = load_state(out_dir / "points" / f"{label}-seed{seed}")
        if loaded is None or loaded[0].round <= point.loop.rounds or (label, seed) not in last:
            continue  # not finished
        params = loaded[0].params
        found = {name: evaluate(sums, params, make_batches([structures[i] for i in idx], 16))
                 for name, idx in groups.items()}
        # the whole split's force MAE from the parts' (component-weighted) must be the study's
        whole = (sum(m["force_mae"] * m["n_force_components"] for m in found.values())
                 / sum(m["n_force_components"] for m in found.values()))
        expected = last[(label, seed)]["force_mae"]
        if not np.isclose(whole, expected, rtol=1e-5, atol=1e-7):
            raise SystemExit(f"{label} seed {seed}: force MAE {whole:.6f} on {args.split} here, "
                             f"{expected:.6f} in results.json: not the same model or frames")
        for name, metrics in found.items():
            for metric in METRICS:
                values[(label, name, metric)][seed] = metrics[metric]
        print(f"  {label} seed {seed}: " + "; ".join(
            f"{name} {values[(label, name, 'force_mae')][seed]:.4f}" for name in groups), flush=True)

    labels = list(dict.fromkeys(label for label, _, _ in values))
    report: dict = {"split": args.split, "key": args.key,
                    "groups": {name: [int(i) for i in idx] for name, idx in groups.items()}, "arms": {}}
    for metric in METRICS:
        print(f"\n### Final {metric} on {args.split} by info[{args.key!r}]: mean over seeds [95% CI]; "
              f"paired difference against random [95% CI] (seeds lower)\n")
        print("| arm | seeds | " + " | ".join(groups) + " | " + " | ".join(f"− random, {g}" for g in groups) + " |")
        print("|---" * (2 + 2 * len(groups)) + "|")
        for label in labels:
            cells, diffs = [], []
            seeds = sorted(set.intersection(*(set(values[(label, g, metric)]) for g in groups)))
            both = sorted(set(seeds) & set.intersection(*(set(values.get(("random", g, metric), {})) for g in groups)))
            for g in groups:
                v = np.array([values[(label, g, metric)][s] for s in seeds])
                mean, lo, hi = mean_ci(v, bootstrap_indices(len(v)))
                cells.append(f"{mean:.4f} [{lo:.4f}, {hi:.4f}]")
                report["arms"].setdefault(label, {}).setdefault(metric, {})[g] = {
                    "seeds": seeds, "values": v.tolist(), "mean": mean, "lo": lo, "hi": hi}
                if label != "random" and len(both) >= 2:
                    a = np.array([values[(label, g, metric)][s] for s in both])
                    b = np.array([values[("random", g, metric)][s] for s in both])
                    d = paired_difference(a, b, bootstrap_indices(len(both)))
                    mark = " *" if d["significant"] else ""
                    diffs.append(f"{d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]{mark} {d['n_a_less']}/{len(both)}")
                    report["arms"][label][metric][g]["minus_random"] = {**d, "seeds": both}
                else:
                    diffs.append("")
            print(f"| {label} | {len(seeds)} | " + " | ".join(cells) + " | " + " | ".join(diffs) + " |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
