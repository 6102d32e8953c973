"""A plain-text results table: final-round errors per method and test split, mean ± spread over seeds."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

__all__ = ["results_table"]


def results_table(rows: list[dict], metrics=("force_mae", "energy_mae_per_atom")) -> str:
    """Table of the last round of each (label, split): mean over seeds, ± half the min–max range.

    Args:
      rows: result rows (see :class:`ntkal.experiment.Results`).
      metrics: columns to show (force MAE in eV/Å, energy MAE in eV/atom).
    """
    last = defaultdict(int)
    for row in rows:
        key = (row["label"], row["seed"])
        last[key] = max(last[key], row["round"])
    groups = defaultdict(list)
    labels_used = {}
    for row in rows:
        if row["round"] == last[(row["label"], row["seed"])]:
            groups[(row["label"], row["split"])].append(row)
            labels_used[row["label"]] = row["n_labels"]
    splits = list(dict.fromkeys(row["split"] for row in rows))
    header = f"{'method':<28}{'labels':>7}" + "".join(f"{s + ' ' + m:>34}" for s in splits for m in metrics)
    lines = [header, "-" * len(header)]
    for label in dict.fromkeys(row["label"] for row in rows):
        cells = []
        for split in splits:
            for metric in metrics:
                values = np.array([r[metric] for r in groups.get((label, split), [])], float)
                if values.size == 0:
                    cells.append(f"{'-':>34}")
                elif values.size == 1:
                    cells.append(f"{values[0]:>34.4f}")
                else:
                    cells.append(f"{values.mean():>24.4f} ± {np.ptp(values) / 2:<7.4f}")
        lines.append(f"{label:<28}{labels_used[label]:>7}" + "".join(cells))
    return "\n".join(lines)
