"""A plain-text results table: final-round errors per method and test split, mean ± spread over seeds."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

__all__ = ["results_table"]

#: Column names: force MAE in eV/Å, energy MAE in eV/atom.
SHORT = {"force_mae": "F-MAE", "force_rmse": "F-RMSE", "energy_mae_per_atom": "E-MAE/at",
         "energy_rmse_per_atom": "E-RMSE/at", "energy_mae": "E-MAE"}


def results_table(rows: list[dict], metrics=("force_mae", "energy_mae_per_atom")) -> str:
    """Table of the last round of each (label, split): mean over seeds, ± half the min–max range.

    Columns: force errors in eV/Å, energy errors per atom in eV/atom.

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
    width = max([20] + [len(f"{s} {SHORT.get(m, m)}") + 2 for s in splits for m in metrics])
    header = f"{'method':<28}{'labels':>7}" + "".join(f"{s + ' ' + SHORT.get(m, m):>{width}}"
                                                      for s in splits for m in metrics)
    lines = [header, "-" * len(header)]
    for label in dict.fromkeys(row["label"] for row in rows):
        cells = []
        for split in splits:
            for metric in metrics:
                values = np.array([r[metric] for r in groups.get((label, split), [])], float)
                if values.size == 0:
                    cells.append(f"{'-':>{width}}")
                elif values.size == 1:
                    cells.append(f"{values[0]:>{width}.4f}")
                else:
                    cells.append(f"{f'{values.mean():.4f} ± {np.ptp(values) / 2:.4f}':>{width}}")
        lines.append(f"{label:<28}{labels_used[label]:>7}" + "".join(cells))
    return "\n".join(lines)
