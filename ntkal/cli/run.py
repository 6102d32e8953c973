"""``ntkal run CONFIG.toml``: a sweep of experiment points, resumable."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import tomllib
from pathlib import Path

from ntkal.cache import add_compile_cache_argument, enable_compile_cache_or_warn
from ntkal.cli.cluster_args import add_cluster_arguments, cluster_from_args
from ntkal.file_checks import writable_folder_problem

__all__ = ["add_run_arguments", "main_run", "check_run_args", "print_strategies", "print_seed_statistics"]


def add_run_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``ntkal run`` arguments to ``p``."""
    p.add_argument("config", type=Path, help="experiment config (TOML; see experiments/configs/)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: the config's 'out')")
    p.add_argument("--no-resume", action="store_true",
                   help="start every point over (a saved run made with other settings is otherwise an error)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--diagnose", action="store_true",
                   help="after every point, print the process's mapped memory regions, RSS and compile count")
    add_compile_cache_argument(p)
    add_cluster_arguments(p, "each scores its part of the pool in every round; process 0 labels, "
                             "fine-tunes for all and writes the output folder")
    return p


def check_run_args(args):
    """The cheap checks of ``ntkal run``: the config file reads and is TOML; ``--out`` is usable;
    the ``--distributed`` flags. Returns the :class:`~ntkal.cluster.ClusterConfig` (``None``
    without ``--distributed``)."""
    cluster = cluster_from_args(args)
    path = Path(args.config)
    try:
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"{path}: cannot read ({err.strerror})") from err
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: invalid TOML: {err}") from err
    if args.out is not None:
        problem = (f"{args.out} exists and is not a folder" if args.out.exists() and not args.out.is_dir()
                   else writable_folder_problem(args.out))
        if problem:
            raise ValueError(f"argument --out: {problem}")
    return cluster


def main_run(args: argparse.Namespace) -> int:
    """``ntkal run``: check, print each kernel arm's strategy, run the sweep, print the tables and
    (several seeds) the statistics over seeds, draw the plots."""
    cluster = check_run_args(args)
    from ntkal.experiment import load_sweep, results_table, run_sweep

    points = load_sweep(args.config)  # every config error (file, line, key) before any side effect
    if cluster is None:
        print_strategies(points)
    if "" not in sys.path and os.getcwd() not in sys.path:
        # a user's oracle module in the current folder imports, as with `python -m`
        # (spawned labelling workers inherit sys.path)
        sys.path.insert(0, os.getcwd())
    if not args.no_compile_cache:
        enable_compile_cache_or_warn()  # before the first compilation
    collectives = None
    if cluster is not None:
        from ntkal.cluster import initialize

        collectives = initialize(cluster)  # before any computation
        if collectives.is_writer:
            print_strategies(points)

    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        after_point = _diagnose_points(stack) if args.diagnose else None
        results = run_sweep(args.config, out=args.out, resume=not args.no_resume, progress=not args.quiet,
                            after_point=after_point, collectives=collectives)
    if collectives is not None and not collectives.is_writer:
        return 0  # process 0 prints the tables and draws the plots
    rows = [row for r in results for row in r.rows]
    print()
    print(results_table(rows))
    out = Path(args.out or results[0].config.out)
    print(f"\nresults: {out / 'results.csv'}, {out / 'results.json'}  ({time.perf_counter() - t0:.0f} s)")
    print_seed_statistics(out / "results.json")
    try:
        from ntkal.plots import plot_results
    except ImportError:
        return 0
    for png in plot_results(out / "results.json", out):
        print(f"plot: {png}")
    return 0


def _diagnose_points(stack: contextlib.ExitStack):
    """``after_point`` for ``ntkal run --diagnose``: one line of process counters per point."""
    from ntkal.process_stats import CompileCounter, max_map_count, snapshot

    compiles = stack.enter_context(CompileCounter())
    limit = max_map_count()

    def after_point(k: int, _results) -> None:
        print(f"diagnose: after point {k + 1}: {snapshot(compiles).line(limit)}", flush=True)

    return after_point


def print_strategies(points) -> None:
    """One line per kernel arm of a sweep: which named strategy its settings are, and why
    (:mod:`ntkal.strategies`); random and committee arms have none."""
    from ntkal.strategies import describe_strategy

    seen = set()
    for point in points:
        if point.label in seen or point.loop.method in ("random", "committee"):
            continue
        seen.add(point.label)
        print(f"{point.label}: " + describe_strategy(point.loop, has_target_set=point.data.has_target_set,
                                                     uses_evidence=point.loop.uses_evidence))


def print_seed_statistics(results_json: Path) -> None:
    """After a sweep of several seeds: ``ntkal summarize``'s tables (paired differences, labels
    saved, CIs over seeds) for the whole results file; nothing for a single seed."""
    from ntkal.summarize import read_rows, summarize, to_markdown

    rows = read_rows([str(results_json)])
    if len({row.get("seed") for row in rows}) < 2:
        return
    try:
        summary = summarize(rows)
    except ValueError as err:  # e.g. no seed common to every arm yet
        print(f"\n(no statistics over seeds: {err})")
        return
    print(f"\n# statistics over seeds (ntkal summarize {results_json})\n")
    print(to_markdown(summary), end="")
