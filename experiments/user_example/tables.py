"""Markdown tables of the worked example's results (for its README).

    .venv/bin/python experiments/user_example/tables.py experiments/results/user_example/results.json

1. Force MAE (eV/Å) and energy MAE (meV/atom) per method, round and split: mean over seeds
   (min-max over seeds in brackets).
2. Per-stage wall time (s): the rows' ``select_s``, ``label_s``, ``finetune_s``, ``evaluate_s``
   (one value per round; the rows of one round repeat it per split), summed per point and stage,
   then summed and averaged over points; round 0 (shared by the methods of a seed) is counted
   once per seed.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

STAGES = ("select_s", "label_s", "finetune_s", "evaluate_s")


def main(path: str) -> None:
    rows = json.load(open(path))["rows"]
    splits = list(dict.fromkeys(r["split"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    by = defaultdict(list)
    for r in rows:
        by[(r["method"], r["round"], r["split"])].append(r)

    print(f"Seeds: {seeds}. Force MAE in eV/Å, energy MAE in meV/atom; mean over seeds [min-max].\n")
    head = " | ".join(f"{s} F-MAE | {s} E-MAE" for s in splits)
    print(f"| method | round | labels | {head} |")
    print("|---|---|---|" + "---|---|" * len(splits))
    for method in methods:
        for rnd in sorted({r["round"] for r in rows if r["method"] == method}):
            cells = []
            labels = by[(method, rnd, splits[0])][0]["n_labels"]
            for split in splits:
                group = by[(method, rnd, split)]
                f = [g["force_mae"] for g in group]
                e = [1000 * g["energy_mae_per_atom"] for g in group]
                cells.append(f"{sum(f) / len(f):.3f} [{min(f):.3f}-{max(f):.3f}]")
                cells.append(f"{sum(e) / len(e):.0f} [{min(e):.0f}-{max(e):.0f}]")
            print(f"| {method} | {rnd} | {labels} | " + " | ".join(cells) + " |")

    # per-stage times: one value per (method, seed, round)
    per_round = {}
    for r in rows:
        per_round[(r["method"], r["seed"], r["round"])] = [r[s] for s in STAGES]
    print("\nPer-stage wall time (s): per point = rounds 1-3 of one (method, seed); round 0 (initial "
          "fine-tune + evaluation, shared by the methods of a seed) separately.\n")
    print("| stage | " + " | ".join(f"{m}: mean per point" for m in methods) + " | round 0: mean per seed | all points + round 0s: total |")
    print("|---|" + "---|" * len(methods) + "---|---|")
    totals = {}
    for k, stage in enumerate(STAGES):
        cells, total = [], 0.0
        for m in methods:
            per_point = [sum(v[k] for (mm, s, rnd), v in per_round.items() if mm == m and s == seed and rnd > 0)
                         for seed in seeds]
            total += sum(per_point)
            cells.append(f"{sum(per_point) / len(per_point):.1f}")
        round0 = [per_round[(methods[0], seed, 0)][k] for seed in seeds]
        total += sum(round0)
        totals[stage] = total
        print(f"| {stage[:-2]} | " + " | ".join(cells) + f" | {sum(round0) / len(round0):.1f} | {total:.1f} |")
    print(f"| **sum** | | | | {sum(totals.values()):.1f} |" if len(methods) == 2 else "")


if __name__ == "__main__":
    main(sys.argv[1])
