"""Markdown summary of an experiment's results.json: the numbers the write-ups quote.

    python experiments/summarize.py experiments/results/oc20_like/results.json

Prints, per method (sweep label): the final force MAE per test split (mean over seeds, ±
half the min–max range), the labels each method needed to reach random's final force MAE
(first round whose seed-mean force MAE is ≤ random's final one; "—" if never), the mean wall
time per round of selection and fine-tuning, and the spread of the final force MAE across seeds.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np


def curves(rows, metric="force_mae"):
    """(label, split) → sorted list of (n_labels, [values over seeds])."""
    table = defaultdict(lambda: defaultdict(list))
    for row in rows:
        table[(row["label"], row["split"])][row["n_labels"]].append(row[metric])
    return {key: sorted(v.items()) for key, v in table.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    parser.add_argument("--metric", default="force_mae")
    args = parser.parse_args()
    data = json.load(open(args.results))
    rows = data["rows"]
    labels = list(dict.fromkeys(r["label"] for r in rows))
    splits = list(dict.fromkeys(r["split"] for r in rows))
    c = curves(rows, args.metric)
    seeds = {lab: sorted({r["seed"] for r in rows if r["label"] == lab}) for lab in labels}

    print(f"### Final {args.metric} (eV/Å), mean over seeds ± half range\n")
    print("| method | seeds | labels | " + " | ".join(splits) + " |")
    print("|---|---|---|" + "---|" * len(splits))
    for lab in labels:
        cells = []
        for s in splits:
            n, vals = c[(lab, s)][-1]
            vals = np.asarray(vals)
            cells.append(f"{vals.mean():.4f}" + (f" ± {np.ptp(vals) / 2:.4f}" if vals.size > 1 else ""))
        print(f"| {lab} | {len(seeds[lab])} | {c[(lab, splits[0])][-1][0]} | " + " | ".join(cells) + " |")

    if "random" in labels:
        print(f"\n### Labels needed to reach random's final {args.metric}\n")
        print("| method | " + " | ".join(splits) + " |")
        print("|---|" + "---|" * len(splits))
        for lab in labels:
            cells = []
            for s in splits:
                target = np.mean(c[("random", s)][-1][1])
                hit = next((n for n, vals in c[(lab, s)] if np.mean(vals) <= target), None)
                cells.append("—" if hit is None else str(hit))
            print(f"| {lab} | " + " | ".join(cells) + " |")

    print("\n### Mean wall time per acquisition round (s)\n")
    print("| method | select (features, scoring, committee training) | fine-tune | evaluate |")
    print("|---|---|---|---|")
    for lab in labels:
        per_round = {}
        for r in rows:
            if r["label"] == lab and r["round"] > 0:
                per_round[(r["seed"], r["round"])] = r
        if not per_round:
            continue
        mean = lambda k: np.mean([r[k] for r in per_round.values()])
        print(f"| {lab} | {mean('select_s'):.1f} | {mean('finetune_s'):.1f} | {mean('evaluate_s'):.1f} |")

    if any(len(v) > 1 for v in seeds.values()):
        print(f"\n### Spread of the final {args.metric} across seeds (standard deviation)\n")
        print("| method | " + " | ".join(splits) + " |")
        print("|---|" + "---|" * len(splits))
        for lab in labels:
            print(f"| {lab} | " + " | ".join(f"{np.std(c[(lab, s)][-1][1]):.4f}" for s in splits) + " |")


if __name__ == "__main__":
    main()
