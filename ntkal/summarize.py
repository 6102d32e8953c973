"""Markdown summary with paired-bootstrap statistics of an experiment's results.json.

    ntkal summarize experiments/results/pool_shift/results.json
    ntkal summarize results.json --n-boot 5000 --seed 1 --all-rounds \\
        --pair joint-lcmd-d128-k8:energy-lcmd-d128 --json summary.json

(``python experiments/summarize.py ...`` is the same command; the arguments are
:mod:`ntkal.cli.summarize`.) NumPy only: no JAX is imported.

The design is paired: every method runs the same seeds from the same initial labelled set per
seed. All confidence intervals are 95 % percentile-bootstrap intervals over seeds: seed indices
are resampled with replacement, and the *same* resamples are used for every method, split and
metric, so differences between methods keep their per-seed pairing.

Sections (force metrics in eV/Å, ``energy_mae_per_atom`` in eV/atom):

1. Final metrics per method and split: mean over seeds with a 95 % CI.
2. Labels to reach random's final seed-mean force MAE ``T`` (per split): the first ``n_labels`` at
   which a method's seed-mean curve is ≤ ``T``, linearly interpolated between rounds; censored
   ("> max labels") if never. Savings = 1 − labels / random's final labels. The bootstrap
   recomputes ``T`` and every curve per resample; never reaching ``T`` counts as savings = −∞,
   so a CI end that falls among those resamples is printed as "< 0 (censored)".
3. Paired differences A − B of force metrics at the final round (every round with
   ``--all-rounds``): every method − random, plus ``--pair A:B`` (default: every ``joint*`` label
   vs every ``energy*`` and ``committee*`` label): mean over seeds, 95 % CI, the number of seeds
   with A < B; "*" marks a CI that excludes 0.
4. Monotonicity of random's curve per split: the seed-mean force MAE of a round may exceed the
   previous round's by at most the half-width of the bootstrap CI of the paired difference.
5. Mean wall time per stage per method (if the rows have ``select_s``, ``finetune_s``,
   ``evaluate_s``).

``--json OUT`` writes the same numbers as strict JSON (NaN and ±∞ become null).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import NamedTuple, Sequence

import numpy as np

from ntkal.jsonio import dumps as strict_dumps, to_jsonable  # noqa: F401  (to_jsonable: public here since the first slice)

#: Metrics of sections 1 and 3, reported when every row has them.
FINAL_METRICS = ("force_mae", "force_rmse", "force_mae_p95", "force_mae_max", "energy_mae_per_atom")
PAIRED_METRICS = ("force_mae", "force_rmse", "force_mae_p95", "force_mae_max")
TIME_KEYS = ("select_s", "finetune_s", "evaluate_s")
REFERENCE = "random"
LEVEL = 0.95


class Curve(NamedTuple):
    """One method's learning curve on one split, for the common seeds.

    Attributes:
      rounds: (n_rounds,) int round numbers (rounds that every seed has).
      n_labels: (n_rounds,) float labels used after each round.
      values: (n_seeds, n_rounds) metric per seed (rows in the order of the seeds list).
    """

    rounds: np.ndarray
    n_labels: np.ndarray
    values: np.ndarray


# ----------------------------------------------------------------------------- data

def common_seeds(rows: Sequence[dict]) -> list:
    """Sorted seeds present for every label (the paired design needs the same seeds)."""
    by_label = defaultdict(set)
    for row in rows:
        by_label[row["label"]].add(row["seed"])
    if not by_label:
        raise ValueError("no rows")
    return sorted(set.intersection(*by_label.values()))


def curves(rows: Sequence[dict], metric: str = "force_mae", seeds: Sequence | None = None
           ) -> dict[tuple[str, str], Curve]:
    """(label, split) → :class:`Curve` of ``metric`` over ``seeds`` (default :func:`common_seeds`).

    Rounds missing for any of the seeds are dropped (e.g. a run still in progress).

    Raises:
      ValueError: duplicate (label, split, seed, round) rows, ``n_labels`` that differ across
        seeds at one round, or a (label, split) with no round shared by all seeds.
    """
    seeds = common_seeds(rows) if seeds is None else list(seeds)
    seed_pos = {s: i for i, s in enumerate(seeds)}
    cells: dict = defaultdict(dict)
    for row in rows:
        if row["seed"] not in seed_pos:
            continue
        key = (row["label"], row["split"])
        cell = (row["seed"], row["round"])
        if cell in cells[key]:
            raise ValueError(f"duplicate row for label={key[0]!r} split={key[1]!r} "
                             f"seed={cell[0]!r} round={cell[1]!r}")
        value = row[metric]
        cells[key][cell] = (row["n_labels"], np.nan if value is None else float(value))
    out = {}
    for key, table in cells.items():
        rounds = sorted({r for _, r in table})
        rounds = [r for r in rounds if all((s, r) in table for s in seeds)]
        if not rounds:
            raise ValueError(f"label={key[0]!r} split={key[1]!r}: no round shared by all seeds {seeds}")
        n_labels = []
        for r in rounds:
            counts = {table[(s, r)][0] for s in seeds}
            if len(counts) != 1:
                raise ValueError(f"label={key[0]!r} split={key[1]!r} round={r}: n_labels differ "
                                 f"across seeds ({sorted(counts)}); the paired design needs equal counts")
            n_labels.append(float(counts.pop()))
        values = np.array([[table[(s, r)][1] for r in rounds] for s in seeds])
        out[key] = Curve(np.array(rounds), np.array(n_labels), values)
    return out


# ----------------------------------------------------------------------------- bootstrap

def bootstrap_indices(n_seeds: int, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """(n_boot, n_seeds) int seed indices drawn with replacement; reproducible for ``seed``.

    Share one array between all methods so that resampled comparisons stay paired.
    """
    if n_seeds < 1 or n_boot < 1:
        raise ValueError(f"need n_seeds ≥ 1 and n_boot ≥ 1, got {n_seeds}, {n_boot}")
    return np.random.default_rng(seed).integers(0, n_seeds, size=(n_boot, n_seeds))


def censored_percentile(values: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear interpolation) where values may hold −∞.

    Returns −∞ when the interpolation touches a −∞ sample (instead of numpy's NaN).
    """
    s = np.sort(np.asarray(values, dtype=float).ravel())
    if s.size == 0 or np.isnan(s).any():
        return float("nan")
    h = (s.size - 1) * q / 100.0
    lo, hi = int(math.floor(h)), int(math.ceil(h))
    if s[lo] == -np.inf:
        return float("-inf")
    return float(s[lo] + (h - lo) * (s[hi] - s[lo]))


def ci(boot: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (−∞ allowed, see :func:`censored_percentile`)."""
    tail = 100.0 * (1.0 - level) / 2.0
    return censored_percentile(boot, tail), censored_percentile(boot, 100.0 - tail)


def mean_ci(values: np.ndarray, idx: np.ndarray, level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, lo, hi) of the seed mean of ``values`` (n_seeds,) over resamples ``idx``.

    With a single seed there is no interval: ``lo`` and ``hi`` are NaN.
    """
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return float(values.mean()), float("nan"), float("nan")
    return (float(values.mean()), *ci(values[idx].mean(axis=1), level))


# ----------------------------------------------------------------------------- statistics

def labels_to_reach(curve_x, curve_y, target):
    """Labels at which a curve first reaches ``target`` (linear interpolation between rounds).

    Args:
      curve_x: (n_rounds,) increasing labels per round.
      curve_y: (n_rounds,) or (..., n_rounds) metric per round (e.g. seed-mean force MAE, eV/Å).
      target: scalar or (...,) target value(s), same units as ``curve_y``.

    Returns:
      ``x[0]`` if ``y[0] ≤ target``; else, with ``i`` the first round with ``y[i] ≤ target``,
      the x where the segment from ``(x[i−1], y[i−1])`` to ``(x[i], y[i])`` crosses ``target``;
      ``inf`` if the curve never reaches it (censored). A float for a 1-D curve, else an array
      of shape ``curve_y.shape[:-1]``.
    """
    x = np.asarray(curve_x, dtype=float)
    y = np.asarray(curve_y, dtype=float)
    if x.ndim != 1 or y.shape[-1:] != x.shape or x.size == 0:
        raise ValueError(f"curve_x must be (n_rounds,) and curve_y (..., n_rounds); "
                         f"got {x.shape} and {y.shape}")
    if np.any(np.diff(x) <= 0):
        raise ValueError(f"curve_x must be strictly increasing, got {x.tolist()}")
    if np.isnan(y).any():
        raise ValueError("curve_y contains NaN")
    t = np.broadcast_to(np.asarray(target, dtype=float), y.shape[:-1])[..., None]
    below = y <= t
    reached = below.any(axis=-1)
    i = np.argmax(below, axis=-1)[..., None]
    prev = np.maximum(i - 1, 0)
    y1, y0 = np.take_along_axis(y, i, -1), np.take_along_axis(y, prev, -1)
    x1, x0 = x[i], x[prev]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(i > 0, (y0 - t) / (y0 - y1), 1.0)   # y0 > t ≥ y1 when i > 0
    result = np.where(reached, (x0 + frac * (x1 - x0))[..., 0], np.inf)
    return float(result) if result.ndim == 0 else result


def savings_of(labels, labels_reference) -> np.ndarray | float:
    """1 − labels / labels_reference; −∞ where ``labels`` is ∞ (never reached)."""
    labels = np.asarray(labels, dtype=float)
    out = np.where(np.isinf(labels), -np.inf, 1.0 - labels / labels_reference)
    return float(out) if out.ndim == 0 else out


def reference_round(n_labels: np.ndarray, at: float) -> int:
    """Index of the round whose labels are nearest ``at`` × the final labels (the last on a tie)."""
    goal = at * n_labels[-1]
    gaps = np.abs(np.asarray(n_labels, float) - goal)
    return int(np.flatnonzero(gaps == gaps.min())[-1])


def bootstrap_savings(curves_: dict[tuple[str, str], Curve], idx: np.ndarray, *,
                      reference: str = REFERENCE, level: float = LEVEL, at: float = 1.0) -> list[dict]:
    """Labels to reach the reference's seed-mean metric at its final round (``at = 1``) or at the
    round nearest ``at`` × its final labels, and label savings relative to the reference's labels
    at that round, with CIs. Where the reference's curve is flat near the end, its final error is
    reached early by chance and "labels to reach random's final" overstates the saving; a
    reference round inside the budget (``at = 2/3``) shows the saving on the steep part.

    Args:
      curves_: output of :func:`curves` (force MAE, one entry per (label, split)).
      idx: (n_boot, n_seeds) shared resamples from :func:`bootstrap_indices`.
      reference: label of the baseline (random).
      at: fraction of the reference's final labels that picks the reference round.

    Returns:
      One dict per (label, split) with a reference curve: ``target`` (reference's final seed
      mean), ``labels`` (∞ if censored), ``labels_reference`` (reference's final labels),
      ``max_labels``, ``savings`` (−∞ if censored), ``lo``/``hi`` (CI of the savings; −∞ where
      censored resamples reach into the interval) and ``frac_censored`` (fraction of resamples
      in which the method never reaches the resampled target). With one seed, ``lo``/``hi``
      are NaN.
    """
    out = []
    for (label, split), curve in curves_.items():
        ref = curves_.get((reference, split))
        if ref is None:
            continue
        r = reference_round(ref.n_labels, at)
        labels_ref = ref.n_labels[r]
        target = ref.values.mean(axis=0)[r]
        labels = labels_to_reach(curve.n_labels, curve.values.mean(axis=0), target)
        boot_target = ref.values[idx].mean(axis=1)[:, r]                   # (n_boot,)
        boot_labels = labels_to_reach(curve.n_labels, curve.values[idx].mean(axis=1), boot_target)
        boot_savings = savings_of(boot_labels, labels_ref)
        lo, hi = ci(boot_savings, level) if idx.shape[1] > 1 else (float("nan"), float("nan"))
        out.append({
            "label": label, "split": split, "target": float(target), "labels": labels,
            "labels_reference": float(labels_ref), "max_labels": float(curve.n_labels[-1]),
            "savings": savings_of(labels, labels_ref), "lo": lo, "hi": hi,
            "frac_censored": float(np.mean(np.isinf(boot_labels))),
        })
    return out


def paired_difference(a: np.ndarray, b: np.ndarray, idx: np.ndarray, level: float = LEVEL) -> dict:
    """Paired difference a − b of per-seed values (n_seeds,) with a bootstrap CI.

    Returns:
      ``mean``, ``lo``, ``hi``, ``n_a_less`` (seeds with a < b), ``n_seeds`` and
      ``significant`` (the CI excludes 0; False with one seed, where there is no CI).
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    mean, lo, hi = mean_ci(d, idx, level)
    return {"mean": mean, "lo": lo, "hi": hi, "n_a_less": int(np.sum(d < 0)), "n_seeds": int(d.size),
            "significant": bool(lo > 0 or hi < 0)}


def default_pairs(labels: Sequence[str]) -> list[tuple[str, str]]:
    """Every ``joint*`` label vs every ``energy*`` and every ``committee*`` label."""
    joint = [lab for lab in labels if lab.startswith("joint")]
    others = [lab for lab in labels if lab.startswith("energy")] + \
             [lab for lab in labels if lab.startswith("committee")]
    return [(a, b) for a in joint for b in others]


def paired_differences(curves_by_metric: dict[str, dict[tuple[str, str], Curve]], pairs, idx, *,
                       all_rounds: bool = False, level: float = LEVEL) -> list[dict]:
    """Paired differences A − B per metric and split at the final (or every) shared round.

    Args:
      curves_by_metric: metric name → output of :func:`curves`.
      pairs: (A, B) labels; pairs with a label absent from the results are skipped.
      idx: (n_boot, n_seeds) shared resamples.
      all_rounds: compare at every round both methods have, not only the last shared one.

    Returns:
      Dicts with ``a``, ``b``, ``metric``, ``split``, ``round``, ``n_labels`` and the fields of
      :func:`paired_difference`.
    """
    out = []
    for metric, table in curves_by_metric.items():
        splits = list(dict.fromkeys(split for _, split in table))
        for a, b in pairs:
            for split in splits:
                ca, cb = table.get((a, split)), table.get((b, split))
                if ca is None or cb is None:
                    continue
                shared = [r for r in ca.rounds if r in set(cb.rounds.tolist())]
                for r in (shared if all_rounds else shared[-1:]):
                    ia, ib = int(np.flatnonzero(ca.rounds == r)[0]), int(np.flatnonzero(cb.rounds == r)[0])
                    out.append({"a": a, "b": b, "metric": metric, "split": split, "round": int(r),
                                "n_labels": float(ca.n_labels[ia]),
                                **paired_difference(ca.values[:, ia], cb.values[:, ib], idx, level)})
    return out


def monotonicity(curve: Curve, idx: np.ndarray, level: float = LEVEL) -> list[dict]:
    """Rounds where the seed-mean curve rises by more than the noise.

    A step from round r to r+1 violates monotonicity when mean(r+1) > mean(r) + w, with w the
    half-width of the bootstrap CI of the paired per-seed difference value(r+1) − value(r)
    (0 with a single seed, where the noise cannot be estimated: every rise is reported).

    Returns:
      One dict per violating step: ``from_round``, ``to_round``, ``mean_from``, ``mean_to``,
      ``half_width``. Empty when the curve is monotone within noise.
    """
    bad = []
    means = curve.values.mean(axis=0)
    for k in range(len(curve.rounds) - 1):
        d = paired_difference(curve.values[:, k + 1], curve.values[:, k], idx, level)
        half = (d["hi"] - d["lo"]) / 2.0 if d["n_seeds"] > 1 else 0.0
        if means[k + 1] > means[k] + half:
            bad.append({"from_round": int(curve.rounds[k]), "to_round": int(curve.rounds[k + 1]),
                        "mean_from": float(means[k]), "mean_to": float(means[k + 1]),
                        "half_width": float(half)})
    return bad


def wall_times(rows: Sequence[dict]) -> dict[str, dict[str, float]] | None:
    """label → mean seconds per acquisition round (round > 0) of each stage in :data:`TIME_KEYS`.

    Rows of one (seed, round) repeat the timings once per split; they are counted once.
    ``None`` when the rows have no timings.
    """
    if not rows or not all(k in row for row in rows for k in TIME_KEYS):
        return None
    per_label: dict = defaultdict(dict)
    for row in rows:
        if row["round"] > 0:
            per_label[row["label"]][(row["seed"], row["round"])] = row
    return {label: {k: float(np.mean([r[k] for r in cells.values()])) for k in TIME_KEYS}
            for label, cells in per_label.items()}


def summarize(rows: Sequence[dict], *, n_boot: int = 2000, seed: int = 0,
              pairs: Sequence[tuple[str, str]] | None = None, all_rounds: bool = False,
              metric: str = "force_mae", reference: str | None = None, level: float = LEVEL,
              reach_at: Sequence[float] = ()) -> dict:
    """All statistics of the module docstring as one dict (plain Python; may hold NaN/±∞).

    Args:
      rows: result rows (see the module docstring).
      n_boot: bootstrap resamples; seed: seed of the bootstrap RNG.
      pairs: extra (A, B) comparisons (default :func:`default_pairs`); method − reference is
        always included.
      all_rounds: paired differences at every round, not only the final one.
      metric: metric of labels-to-reach and the monotonicity check.
      reference: label of the baseline; default: the one label whose rows have
        ``method == "random"`` (e.g. ``random-rp32``), else ``"random"``.
      reach_at: further reference rounds for labels-to-reach, as fractions of the reference's
        final labels (e.g. ``(2/3,)``): ``labels_to_reach_at`` maps each fraction to its table.
    """
    rows = list(rows)
    if reference is None:
        randoms = list(dict.fromkeys(r["label"] for r in rows if r.get("method") == REFERENCE))
        reference = randoms[0] if len(randoms) == 1 else REFERENCE
    seeds = common_seeds(rows)
    if not seeds:
        raise ValueError("no seed is shared by all labels; the paired design needs common seeds")
    all_seeds = sorted({r["seed"] for r in rows})
    labels = list(dict.fromkeys(r["label"] for r in rows))
    splits = list(dict.fromkeys(r["split"] for r in rows))
    present = [m for m in dict.fromkeys((metric, *FINAL_METRICS)) if all(m in r for r in rows)]
    if metric not in present:
        raise ValueError(f"metric {metric!r} is missing from some rows")
    tables = {m: curves(rows, m, seeds) for m in present}
    idx = bootstrap_indices(len(seeds), n_boot, seed)

    final = []
    for m in present:
        for (label, split), c in tables[m].items():
            mean, lo, hi = mean_ci(c.values[:, -1], idx, level)
            final.append({"label": label, "split": split, "metric": m, "round": int(c.rounds[-1]),
                          "n_labels": float(c.n_labels[-1]), "mean": mean, "lo": lo, "hi": hi})

    has_ref = reference in labels
    vs_ref = [(lab, reference) for lab in labels if lab != reference] if has_ref else []
    extra = default_pairs(labels) if pairs is None else [tuple(p) for p in pairs]
    for a, b in extra:
        for lab in (a, b):
            if lab not in labels:
                raise ValueError(f"--pair label {lab!r} is not in the results (labels: {labels})")
    paired_tables = {m: tables[m] for m in PAIRED_METRICS if m in tables}
    return {
        "seeds": seeds, "dropped_seeds": [s for s in all_seeds if s not in seeds],
        "labels": labels, "splits": splits, "metrics": present, "metric": metric,
        "reference": reference if has_ref else None,
        "n_boot": int(n_boot), "bootstrap_seed": int(seed), "level": level,
        "final": final,
        "labels_to_reach": bootstrap_savings(tables[metric], idx, reference=reference, level=level),
        "labels_to_reach_at": {float(at): bootstrap_savings(tables[metric], idx, reference=reference, level=level,
                                                            at=float(at)) for at in reach_at},
        "paired": paired_differences(paired_tables, list(dict.fromkeys(vs_ref + extra)), idx,
                                     all_rounds=all_rounds, level=level),
        "monotonicity": {split: monotonicity(tables[metric][(reference, split)], idx, level)
                         for split in splits if (reference, split) in tables[metric]},
        "wall_times": wall_times(rows),
    }


# ----------------------------------------------------------------------------- output

def dumps(summary: dict) -> str:
    """Strict JSON text of a :func:`summarize` result (no NaN/Infinity tokens)."""
    return strict_dumps(summary)


def _num(x: float, fmt: str = ".4f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:{fmt}}"


def _pct(x: float) -> str:
    if math.isnan(x):
        return "—"
    return "< 0 (censored)" if x == -math.inf else f"{100 * x:.0f}%"


def to_markdown(summary: dict) -> str:
    """Markdown tables of a :func:`summarize` result."""
    lines: list[str] = []
    say = lines.append
    labels, splits, ref = summary["labels"], summary["splits"], summary["reference"]
    level = round(100 * summary["level"])
    say(f"Seeds: {len(summary['seeds'])} ({', '.join(map(str, summary['seeds']))}); "
        f"{level}% percentile-bootstrap CIs over seeds, {summary['n_boot']} paired resamples "
        f"(bootstrap seed {summary['bootstrap_seed']}).")
    if len(summary["seeds"]) < 2:
        say("A single seed: no confidence intervals (—), nothing marked significant, and the "
            "monotonicity check counts every rise.")
    if summary["dropped_seeds"]:
        say(f"Seeds not run by every method, left out: {summary['dropped_seeds']}.")

    final = {(f["metric"], f["label"], f["split"]): f for f in summary["final"]}
    for m in summary["metrics"]:
        unit = "eV/atom" if "per_atom" in m else "eV/Å"
        say(f"\n### Final {m} ({unit}): mean over seeds [{level}% CI]\n")
        say("| method | labels | " + " | ".join(splits) + " |")
        say("|---|---|" + "---|" * len(splits))
        for lab in labels:
            cells = [final.get((m, lab, s)) for s in splits]
            n = next((c["n_labels"] for c in cells if c), float("nan"))
            say(f"| {lab} | {_num(n, '.0f')} | " + " | ".join(
                "—" if c is None else f"{_num(c['mean'])} [{_num(c['lo'])}, {_num(c['hi'])}]"
                for c in cells) + " |")

    if ref is None:
        say(f"\n(no {REFERENCE!r} method: labels-to-reach, differences vs {REFERENCE} and the "
            "monotonicity check are skipped)")
    else:
        metric = summary["metric"]
        tables = [("final", summary["labels_to_reach"])] + [
            (at, table) for at, table in summary.get("labels_to_reach_at", {}).items()]
        for at, table in tables:
            _reach_table(say, table, labels, splits, ref, metric, level, at)

    if summary["paired"]:
        say(f"\n### Paired differences A − B (mean over seeds [{level}% CI], seeds with A < B; "
            "* = CI excludes 0)\n")
        say("| A | B | metric | split | round | labels | A − B | A < B |")
        say("|---|---|---|---|---|---|---|---|")
        for p in summary["paired"]:
            star = " *" if p["significant"] else ""
            say(f"| {p['a']} | {p['b']} | {p['metric']} | {p['split']} | {p['round']} | "
                f"{p['n_labels']:.0f} | {_num(p['mean'], '+.4f')} "
                f"[{_num(p['lo'], '+.4f')}, {_num(p['hi'], '+.4f')}]{star} | "
                f"{p['n_a_less']}/{p['n_seeds']} |")

    if summary["monotonicity"]:
        say(f"\n### Monotonicity of {ref}'s seed-mean {summary['metric']} (within the CI half-width "
            "of the paired round-to-round difference)\n")
        for split, bad in summary["monotonicity"].items():
            if not bad:
                say(f"- {split}: monotone")
            else:
                say(f"- {split}: rises at " + "; ".join(
                    f"round {b['from_round']}→{b['to_round']} ({b['mean_from']:.4f} → "
                    f"{b['mean_to']:.4f}, noise ±{b['half_width']:.4f})" for b in bad))

    times = summary["wall_times"]
    if times:
        say("\n### Mean wall time per acquisition round (s)\n")
        say("| method | select (features, scoring, committee training) | fine-tune | evaluate |")
        say("|---|---|---|---|")
        for lab in labels:
            if lab in times:
                t = times[lab]
                say(f"| {lab} | {t['select_s']:.1f} | {t['finetune_s']:.1f} | {t['evaluate_s']:.1f} |")
    return "\n".join(lines) + "\n"


def _reach_table(say, table, labels, splits, ref, metric, level, at) -> None:
    """One labels-to-reach table: at ``ref``'s final round (``at == "final"``) or at a fraction of
    its final labels."""
    where = "final" if at == "final" else f"{at:.3g}-of-the-budget"
    first = next(iter(table), None)
    labels_ref = "" if first is None else f" ({first['labels_reference']:.0f} labels)"
    say(f"\n### Labels to reach {ref}'s {where} seed-mean {metric}{labels_ref}: label savings [{level}% CI]\n")
    say(f"Savings = 1 − labels / {ref}'s labels at that round; labels interpolated linearly between "
        "rounds; \"censored\" = never reached within the method's labels; "
        "\"cens.\" = fraction of resamples that never reach the target.\n")
    say("| method | " + " | ".join(splits) + " |")
    say("|---|" + "---|" * len(splits))
    reach = {(r["label"], r["split"]): r for r in table}
    for lab in labels:
        cells = []
        for s in splits:
            r = reach.get((lab, s))
            if r is None:
                cells.append("—")
                continue
            if math.isinf(r["labels"]):
                head = f"censored (> {r['max_labels']:.0f} labels)"
            else:
                head = f"{_pct(r['savings'])} ({r['labels']:.1f} labels)"
            interval = ("" if math.isnan(r["lo"]) else " [censored]" if r["hi"] == -math.inf
                        else f" [{_pct(r['lo'])}, {_pct(r['hi'])}]")
            cells.append(head + interval
                         + (f" cens. {100 * r['frac_censored']:.0f}%" if r["frac_censored"] and interval else ""))
        say(f"| {lab} | " + " | ".join(cells) + " |")


def read_rows(paths: Sequence[str], methods: Sequence[str] | None = None) -> list[dict]:
    """The result rows of ``results.json`` files, each (dataset, size, label, seed, round, split)
    once (the first file that has it wins); only the labels in ``methods`` when given.

    Raises:
      ValueError: a file has no ``rows`` list, or a label of ``methods`` has no rows.
    """
    rows, seen = [], set()
    for path in paths:
        with open(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: not JSON (line {err.lineno}, column {err.colno}: {err.msg})") from err
        if not isinstance(data, dict) or "rows" not in data:
            raise ValueError(f"{path}: no 'rows' list (is it a results.json of `ntkal run`?)")
        for row in data["rows"]:
            key = tuple(row.get(k) for k in ("dataset", "size", "label", "seed", "round", "split"))
            if key not in seen and (methods is None or row.get("label") in methods):
                seen.add(key)
                rows.append(row)
    missing = set(methods or ()) - {row.get("label") for row in rows}
    if missing:
        raise ValueError(f"--methods: no rows for {sorted(missing)}")
    return rows
