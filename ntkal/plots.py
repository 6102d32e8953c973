"""``ntkal plot``: learning curves and PV-vs-error calibration from a results JSON.

The results file (written by the experiment runner) holds::

    {"rows":  [{"method", "seed", "round", "n_labels", "split", "force_mae", "force_rmse",
                "energy_mae_per_atom", ... [, "label"]}, ...],
     "picks": [{"method", "seed", "round", "id", "score", "force_mae_before"}, ...]}

* :func:`plot_learning_curves` — one panel per test split; x = labels used, y = a metric;
  one line per method (per ``(method, label)`` when rows carry a ``label``: named by the
  label when it starts with the method, else ``method [label]``), the mean over seeds with a
  min–max band.
* :func:`plot_calibration` — each pick's posterior variance (``pv``; else its acquisition
  ``score``, the selector's criterion) against the realised force MAE (eV/Å) of the model that scored it, per method,
  with Spearman's ρ in the legend. Picks without a finite score (random, round 0) are left
  out.

Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the backend)
from matplotlib.ticker import NullFormatter  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

# The arguments live with the light CLI so that building the parser does not import matplotlib.
__all__ = ["Curve", "CalibrationPlot", "aggregate_curves", "calibration_stats",
           "plot_learning_curves", "plot_calibration", "plot_results",
           "main_plot", "plot_md_log"]

#: Axis labels (with units) of the metrics the loop reports.
METRIC_LABELS = {
    "force_mae": "force MAE (eV/Å)",
    "force_rmse": "force RMSE (eV/Å)",
    "energy_mae_per_atom": "energy MAE (eV/atom)",
    "energy_rmse_per_atom": "energy RMSE (eV/atom)",
    "energy_mae": "energy MAE (eV)",
    "energy_rmse": "energy RMSE (eV)",
}


class Curve(NamedTuple):
    """One learning curve: statistics over seeds at each label count.

    Attributes:
      n_labels: (k,) label counts, ascending.
      mean: (k,) mean of the metric over seeds.
      lo: (k,) minimum over seeds.
      hi: (k,) maximum over seeds.
      n_seeds: (k,) number of seeds with a finite value.
    """

    n_labels: np.ndarray
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n_seeds: np.ndarray


class CalibrationPlot(NamedTuple):
    """What :func:`plot_calibration` drew.

    Attributes:
      path: the PNG.
      rho: method → Spearman ρ of score vs realised error (NaN with < 3 picks).
      n: method → number of picks used.
      labels: the legend entries, as printed in the figure.
    """

    path: Path
    rho: dict
    n: dict
    labels: list


def _line_name(row: dict) -> str:
    """The label when it already names the method (``joint-lcmd-d256``), else ``method [label]``."""
    method = str(row.get("method", "?"))
    label = row.get("label")
    if label is None or str(label) == "":
        return method
    label = str(label)
    return label if label.startswith(method) else f"{method} [{label}]"


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def aggregate_curves(rows: Iterable[dict], metric: str = "force_mae") -> dict:
    """Group metric rows into learning curves.

    Args:
      rows: metric records with ``split``, ``n_labels``, ``method`` (optionally ``label``,
        ``seed``) and ``metric``.
      metric: the y value.

    Returns:
      ``{split: {line name: Curve}}``; a line name is the method, the label when it starts
      with the method (as sweep labels do), or ``"method [label]"``.
      Non-finite values are skipped.

    Raises:
      KeyError: no row carries ``metric``.
    """
    values = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    found = False
    for row in rows:
        if metric not in row:
            continue
        found = True
        if not _finite(row[metric]):
            continue
        values[str(row.get("split", "test"))][_line_name(row)][int(row["n_labels"])].append(float(row[metric]))
    if not found:
        raise KeyError(f"no row carries the metric {metric!r}")
    out = {}
    for split, lines in values.items():
        out[split] = {}
        for name, by_n in lines.items():
            n = np.array(sorted(by_n))
            v = [np.asarray(by_n[k]) for k in n]
            out[split][name] = Curve(n, np.array([x.mean() for x in v]), np.array([x.min() for x in v]),
                                     np.array([x.max() for x in v]), np.array([len(x) for x in v]))
    return out


def plot_learning_curves(rows: Sequence[dict], out_png: str | os.PathLike, metric: str = "force_mae",
                         *, log_y: bool = True) -> Path:
    """One panel per test split: ``metric`` against labels used, mean over seeds + min–max band.

    Args:
      rows: metric records (see module docstring).
      out_png: where to write the PNG.
      metric: row key to plot (e.g. ``force_mae``, ``energy_mae_per_atom``).
      log_y: logarithmic y axis when every value is positive.

    Returns:
      The PNG path.
    """
    curves = aggregate_curves(rows, metric)
    if not curves:
        raise ValueError(f"no finite {metric!r} values to plot")
    splits = sorted(curves)
    names = sorted({name for lines in curves.values() for name in lines})
    colours = {name: plt.get_cmap("tab10")(k % 10) for k, name in enumerate(names)}
    ncols = min(len(splits), 3)
    nrows = -(-len(splits) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax, split in zip(axes.flat, splits):
        positive = True
        for name, c in sorted(curves[split].items()):
            ax.plot(c.n_labels, c.mean, marker="o", ms=3, color=colours[name], label=name)
            if (c.n_seeds > 1).any():
                ax.fill_between(c.n_labels, c.lo, c.hi, color=colours[name], alpha=0.2, linewidth=0)
            positive &= bool((c.lo > 0).all())
        if log_y and positive:
            ax.set_yscale("log")
        ax.set_title(split)
        ax.set_xlabel("labels used")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(splits):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{METRIC_LABELS.get(metric, metric)}: mean over seeds, band = min–max", fontsize=10)
    fig.tight_layout()
    return _save(fig, out_png)


def calibration_stats(picks: Iterable[dict], *, score_key: str = "score",
                      error_key: str = "force_mae_before") -> dict:
    """Per method: ``(scores, errors, rho)`` over picks with finite score and error.

    ρ is ``scipy.stats.spearmanr(scores, errors)`` (NaN with fewer than 3 picks or constant
    input).
    """
    pairs = defaultdict(list)
    for p in picks:
        if _finite(p.get(score_key)) and _finite(p.get(error_key)):
            pairs[_line_name(p)].append((float(p[score_key]), float(p[error_key])))
    out = {}
    for name, xy in sorted(pairs.items()):
        x, y = np.asarray(xy).T
        rho = float("nan")
        if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
            rho = float(spearmanr(x, y).statistic)
        out[name] = (x, y, rho)
    return out


def plot_calibration(picks: Sequence[dict], out_png: str | os.PathLike, *, score_key: str = "score",
                     error_key: str = "force_mae_before") -> CalibrationPlot:
    """Scatter of acquisition score vs realised force MAE per method, Spearman ρ in the legend.

    Args:
      picks: pick records with ``method``, ``score`` and ``force_mae_before`` (eV/Å).
      out_png: where to write the PNG.
      score_key: x value.
      error_key: y value.

    Returns:
      A :class:`CalibrationPlot` (path, ρ and n per method, legend labels).

    Raises:
      ValueError: no pick has a finite score and error.
    """
    stats = calibration_stats(picks, score_key=score_key, error_key=error_key)
    if not stats:
        raise ValueError(f"no pick has a finite {score_key!r} and {error_key!r}")
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    labels, rho, n = [], {}, {}
    positive = True
    for k, (name, (x, y, r)) in enumerate(stats.items()):
        label = f"{name}: ρ = {r:.3f} (n = {len(x)})"
        ax.scatter(x, y, s=12, alpha=0.7, color=plt.get_cmap("tab10")(k % 10), label=label)
        labels.append(label)
        rho[name], n[name] = r, len(x)
        positive &= bool((x > 0).all())
    if positive:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide within a decade
    ax.set_xlabel("posterior variance of the pick (relative)" if score_key == "pv"
                  else f"acquisition {score_key} (selector criterion at pick time)")
    ax.set_ylabel(METRIC_LABELS.get(error_key.replace("_before", ""), error_key) + " before labelling")
    ax.set_title(f"{'PV' if score_key == 'pv' else score_key} vs realised error (Spearman ρ)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return CalibrationPlot(_save(fig, out_png), rho, n, labels)


def _save(fig, out_png) -> Path:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(f".{out_png.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, out_png)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return out_png


def plot_results(results_path: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 *, metrics: Sequence[str] = ("force_mae", "energy_mae_per_atom"),
                 log=None) -> list[Path]:
    """Every plot of a results JSON.

    Args:
      results_path: the JSON (``{"rows": [...], "picks": [...]}``) or a folder holding
        ``results.json``.
      out_dir: where the PNGs go (default: next to the JSON).
      metrics: learning-curve metrics; those absent from every row are skipped.
      log: receives one line per calibration method (``print`` in the CLI); ``None`` = silent.

    Returns:
      Paths of the PNGs written: ``learning_curves_<metric>.png`` per metric and
      ``calibration.png`` when some pick has a finite score. The calibration x value is the
      pick's ``pv`` (posterior variance) when any pick records one, else its ``score``.
    """
    results_path = Path(results_path)
    if results_path.is_dir():
        results_path = results_path / "results.json"
    data = json.loads(results_path.read_text())
    rows, picks = data.get("rows", []), data.get("picks", [])
    out_dir = Path(out_dir) if out_dir is not None else results_path.parent
    written = []
    for metric in metrics:
        if any(metric in row for row in rows):
            written.append(plot_learning_curves(rows, out_dir / f"learning_curves_{metric}.png", metric))
    # Prefer the posterior variance of each pick ("pv") when recorded: "score" is the
    # selector's own criterion (a squared distance for lcmd/maxdist), not the PV.
    score_key = "pv" if any(_finite(p.get("pv")) for p in picks) else "score"
    if calibration_stats(picks, score_key=score_key):
        cal = plot_calibration(picks, out_dir / "calibration.png", score_key=score_key)
        written.append(cal.path)
        if log is not None:
            for label in cal.labels:
                log(f"calibration {label}")
    if not written:
        raise ValueError(f"{results_path}: nothing to plot (no rows with {list(metrics)}, no scored picks)")
    return written


def main_plot(args: argparse.Namespace) -> int:
    """Run ``ntkal plot``; prints each PNG path and each method's Spearman ρ; returns 0."""
    metrics = tuple(args.metric) if args.metric else ("force_mae", "energy_mae_per_atom")
    for path in plot_results(args.results, args.out, metrics=metrics, log=print):
        print(f"wrote {path}")
    return 0


def plot_md_log(log_csv: str | os.PathLike, out_png: str | os.PathLike) -> Path:
    """σ² along an ``ntkal md`` run (log scale, threshold, labels, restarts) over the cumulative
    oracle calls; returns the PNG path."""
    import csv

    with open(log_csv) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{log_csv}: no steps logged")
    col = {k: np.array([float(r[k]) for r in rows]) for k in ("step", "variance", "threshold",
                                                                "labelled", "restart")}
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True,
                                      gridspec_kw={"height_ratios": [2, 1]})
    top.plot(col["step"], col["variance"], lw=0.8, color="C0", label="σ² (posterior variance)")
    top.plot(col["step"], col["threshold"], lw=1.0, ls="--", color="k", label="threshold")
    lab = col["labelled"] > 0
    top.scatter(col["step"][lab], col["variance"][lab], marker="o", color="C3", zorder=3,
                s=18, label=f"labelled ({int(lab.sum())})")
    for k, s_ in enumerate(col["step"][col["restart"] > 0]):
        top.axvline(s_, color="C1", lw=0.6, alpha=0.6, label="restart" if k == 0 else None)
    if np.all(col["variance"] > 0):
        top.set_yscale("log")
    top.set_ylabel("σ² (relative)")
    top.legend(fontsize=8, loc="best")
    bottom.step(col["step"], np.cumsum(col["labelled"]), where="post", color="C3")
    bottom.set_ylabel("oracle calls")
    bottom.set_xlabel("MD step")
    fig.tight_layout()
    return _save(fig, out_png)
