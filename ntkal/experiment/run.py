"""``run(config) -> Results`` for one sweep point, and the sweep driver that writes JSON + CSV."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from ntkal.experiment.config import DataConfig, ExperimentConfig, load_sweep
from ntkal.loop import make_context, round0_fingerprint, run_loop
from ntkal.models import atomic_write_bytes, load_pretrained

__all__ = ["Results", "run", "run_sweep", "load_data", "make_oracle", "write_results"]


class Results(NamedTuple):
    """Outcome of one sweep point.

    Attributes:
      config: the :class:`ExperimentConfig`.
      rows: one dict per (round, test split): config columns, ``round``, ``n_labels``,
        ``split``, energy/force MAE and RMSE (eV, eV/atom, eV/Å) and per-stage wall times (s).
      picks: one dict per picked structure: config columns, ``round``, ``id``, ``score``,
        ``force_mae_before`` (eV/Å, the scoring model's error on it).
      wall_s: wall time of the point (s), excluding time spent in earlier, resumed sessions.
    """

    config: ExperimentConfig
    rows: list
    picks: list
    wall_s: float


def _subsample(items: list, count: int, rng: np.random.Generator) -> list:
    if not count or count >= len(items):
        return items
    keep = np.sort(rng.choice(len(items), count, replace=False))
    return [items[i] for i in keep]


def load_data(data: DataConfig, *, progress: bool = True):
    """Pool structures and test sets of ``data`` (generated on first use, then cached).

    Returns:
      ``(pool_atoms, tests)`` with ``tests`` a dict split → list of ``ase.Atoms``.
    """
    from ntkal import datasets

    rng = np.random.default_rng(data.seed)
    pool = []
    for spec in data.pool:
        split, _, count = spec.partition(":")
        atoms = list(datasets.load_split(data.dataset, split, size=data.size, seed=data.seed,
                                         cache_dir=data.cache_dir, progress=progress))
        if data.pool_filter == "target" and data.dataset == "oc20_like" and split != "pretrain":
            atoms = [a for a in atoms if not datasets.oc20_is_source(a)]
        pool.extend(_subsample(atoms, int(count or 0), rng))
    if not pool:
        raise ValueError(f"the pool {data.pool} of {data.dataset} ({data.size}) is empty")
    tests = {}
    for split in data.tests:
        atoms = list(datasets.load_split(data.dataset, split, size=data.size, seed=data.seed,
                                         cache_dir=data.cache_dir, progress=progress))
        tests[split] = _subsample(atoms, data.max_test, rng)
    return pool, tests


def make_oracle(name: str) -> Callable:
    """``oracle(list of Atoms) -> list of labelled Atoms`` for a :class:`DataConfig` oracle name."""
    if name == "stored":
        return lambda atoms_list: list(atoms_list)
    from ntkal import datasets

    oracle = datasets.emt_oracle() if name == "emt" else datasets.xtb_oracle()
    return oracle.label


def _columns(config: ExperimentConfig) -> dict:
    loop, k = config.loop, config.loop.kernel
    kernel_used = loop.method not in ("random", "committee")
    return {
        "experiment": config.name, "label": config.label, "method": loop.method,
        "selector": loop.selector if kernel_used else "", "sketch_dim": k.sketch_dim if kernel_used else "",
        "num_probes": k.num_probes if kernel_used else "", "seed": loop.seed, "dataset": config.data.dataset,
        "size": config.data.size,
        "feature_norm": loop.feature_norm if kernel_used else "",
        "noise_var": ("evidence" if loop.uses_evidence else loop.noise_var) if kernel_used else "",
        "replay": loop.replay,
        "cascade": f"{loop.cascade}:{loop.cascade_keep:g}" if kernel_used and loop.cascade else "",
    }


def load_replay(data: DataConfig, *, progress: bool = True) -> list:
    """Labelled source structures for replay (the whole ``data.replay_split``)."""
    from ntkal import datasets

    return list(datasets.load_split(data.dataset, data.replay_split, size=data.size, seed=data.seed,
                                    cache_dir=data.cache_dir, progress=progress))


def run(config: ExperimentConfig, *, directory: str | Path | None = None, resume: bool = True,
        progress: bool = True, log: Callable[[str], None] | None = print,
        shared_round0: str | Path | None = None, cache: dict | None = None) -> Results:
    """Run one sweep point end to end.

    Args:
      config: the sweep point.
      directory: where the loop state is saved (resumable); ``None`` = in memory only.
      resume: continue from a saved state in ``directory``.
      progress: progress bars.
      log: one-line summaries.
      shared_round0: folder for the round-0 state shared by the methods of a paired study.
      cache: per-pool cache shared by points with the same checkpoint and data (see
        :func:`ntkal.loop.make_context`).
    """
    t0 = time.perf_counter()
    model, params, _ = load_pretrained(config.checkpoint)
    pool, tests = load_data(config.data, progress=progress)
    replay = load_replay(config.data, progress=progress) if config.loop.replay else ()
    ctx = make_context(model, params, pool, tests, make_oracle(config.data.oracle), config.loop,
                       progress=progress, replay_atoms=replay, cache=cache)
    state = run_loop(ctx, directory, resume=resume, log=log, shared_round0=shared_round0)
    columns = _columns(config)
    rows = [{**columns, **row} for row in state.rows]
    picks = [{**columns, **pick} for pick in state.picks]
    return Results(config, rows, picks, time.perf_counter() - t0)


def write_results(results: list[Results], out_dir: str | Path) -> tuple[Path, Path]:
    """Atomically write ``results.json`` (rows + picks) and ``results.csv`` (rows) in ``out_dir``."""
    out_dir = Path(out_dir)
    rows = [row for r in results for row in r.rows]
    picks = [pick for r in results for pick in r.picks]
    json_path, csv_path = out_dir / "results.json", out_dir / "results.csv"
    atomic_write_bytes(json_path, json.dumps({"rows": rows, "picks": picks}, indent=1).encode())
    fields = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(csv_path, buffer.getvalue().encode())
    return json_path, csv_path


def run_sweep(path: str | Path, *, out: str | Path | None = None, resume: bool = True, progress: bool = True,
              log: Callable[[str], None] | None = print) -> list[Results]:
    """Run every point of the config at ``path``; results are rewritten after each point.

    Each point keeps its resumable state in ``<out>/points/<label>-seed<k>/``. Points whose
    round 0 is identical (same seed, data, checkpoint and fine-tuning: a paired study) share it
    through ``<out>/points/_round0-seed<k>-<fingerprint>/``: it is computed once.
    """
    points = load_sweep(path)
    out_dir = Path(out or points[0].out)
    results = []
    caches: dict = {}  # (checkpoint, data) -> per-pool cache shared by the points using that pool
    for k, point in enumerate(points):
        if log:
            log(f"== point {k + 1}/{len(points)}: {point.label} seed {point.loop.seed}")
        directory = out_dir / "points" / f"{point.label}-seed{point.loop.seed}"
        fingerprint = round0_fingerprint(point.loop, point.checkpoint, point.data)
        shared = out_dir / "points" / f"_round0-seed{point.loop.seed}-{fingerprint}"
        cache = caches.setdefault((point.checkpoint, point.data), {})
        results.append(run(point, directory=directory, resume=resume, progress=progress, log=log,
                           shared_round0=shared, cache=cache))
        write_results(results, out_dir)
    return results
