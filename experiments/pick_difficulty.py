"""How hard each arm's picks were for the model that picked them.

Reads a sweep's ``results.json`` and prints, per arm, the force MAE (eV/Å) each picked structure
had under the model of its round before it was labelled (``picks[].force_mae_before``), over the
acquisition rounds (round ≥ 1; round 0 is random for every arm): the number of picks, their mean
and median. A high value means the arm picked what the fine-tuned model got most wrong.

Usage::

    python experiments/pick_difficulty.py experiments/results/sevennet_pmechdb/results.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def pick_difficulty(results: dict) -> dict[str, np.ndarray]:
    """Arm label -> ``(n,)`` force MAE before labelling of its round ≥ 1 picks (NaN dropped)."""
    errors: dict[str, list[float]] = defaultdict(list)
    for pick in results["picks"]:
        if pick["round"] >= 1 and pick.get("force_mae_before") is not None:
            errors[pick["label"]].append(float(pick["force_mae_before"]))
    return {label: np.asarray([e for e in v if np.isfinite(e)]) for label, v in errors.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="a sweep's results.json")
    args = ap.parse_args(argv)
    table = pick_difficulty(json.loads(args.results.read_text()))
    if not table:
        raise SystemExit(f"{args.results}: no picks of round >= 1 with force_mae_before")
    print("| arm | picks (rounds >= 1) | force MAE before labelling, mean (eV/Å) | median |")
    print("|---|---|---|---|")
    for label, v in sorted(table.items(), key=lambda kv: -kv[1].mean()):
        print(f"| {label} | {v.size} | {v.mean():.4f} | {np.median(v):.4f} |")


if __name__ == "__main__":
    main()
