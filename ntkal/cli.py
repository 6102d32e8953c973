"""The ``ntkal`` command: ``run``, ``select``, ``train``, ``labels``, ``md``, ``summarize``, ``plot``, ``bench``.

    ntkal run CONFIG.toml [--no-resume] [--out DIR] [--no-compile-cache] [--diagnose]
    ntkal train CONFIG.toml [--out CKPT.msgpack] [--quiet]
    ntkal select --model CKPT --pool FILE --train FILE --budget N --out picked.extxyz [--kernel joint ...]
    ntkal md CONFIG.toml [--out DIR] [--no-resume] [--quiet] [--no-compile-cache]
    ntkal labels check STORE | export STORE OUT.extxyz | rebuild CONFIG.toml [--out DIR]
    ntkal summarize RESULTS.json [...] [--pair A:B] [--reach-at 0.667] [--json OUT]
    ntkal plot RESULTS.json [--out DIR]
    ntkal bench [NAME ...] [--full]

Building the parser imports neither JAX nor matplotlib: ``ntkal --help`` is fast, and every
argument and file check runs before the heavy modules load (each handler imports them lazily).
``run`` and ``select`` turn on JAX's persistent compilation cache (:mod:`ntkal.compile_cache`)
unless ``--no-compile-cache`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from ntkal.compile_cache import add_compile_cache_argument, enable_compile_cache_or_warn
from ntkal.file_checks import writable_folder_problem
from ntkal.select_args import add_select_arguments, main_select
from ntkal.summarize_args import add_summarize_arguments
from ntkal.train_cli import add_train_arguments, main_train

__all__ = ["main", "build_parser", "add_plot_arguments"]

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _check_run_args(args) -> None:
    """The cheap checks of ``ntkal run``: the config file reads and is TOML; ``--out`` is usable."""
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


def _run(args) -> int:
    _check_run_args(args)
    from ntkal.experiment import load_sweep, results_table, run_sweep

    points = load_sweep(args.config)  # every config error (file, line, key) before any side effect
    _print_strategies(points)
    if "" not in sys.path and os.getcwd() not in sys.path:
        # a user's oracle module in the current folder imports, as with `python -m`
        # (spawned labelling workers inherit sys.path)
        sys.path.insert(0, os.getcwd())
    if not args.no_compile_cache:
        enable_compile_cache_or_warn()  # before the first compilation

    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        after_point = _diagnose_points(stack) if args.diagnose else None
        results = run_sweep(args.config, out=args.out, resume=not args.no_resume, progress=not args.quiet,
                            after_point=after_point)
    rows = [row for r in results for row in r.rows]
    print()
    print(results_table(rows))
    out = Path(args.out or results[0].config.out)
    print(f"\nresults: {out / 'results.csv'}, {out / 'results.json'}  ({time.perf_counter() - t0:.0f} s)")
    _print_seed_statistics(out / "results.json")
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


def _labels(args) -> int:
    """``ntkal labels check|export|rebuild``: the label store's health, an export, a rebuild."""
    from ntkal.experiment import label_store_repair as repair

    if args.action == "check":
        for line in repair.check_store(args.target).lines():
            print(line)
    elif args.action == "export":
        if args.output is None:
            raise ValueError("ntkal labels export STORE OUT: name the output file")
        n = repair.export_store(args.target, args.output, args.oracle)
        print(f"wrote {n} labelled structure(s) to {args.output}")
    else:
        for done in repair.rebuild_store(args.target, out=args.out, progress=not args.quiet):
            if done.moved_aside:
                print(f"moved the damaged store aside: {done.moved_aside}")
            print(f"{done.path}: restored {done.restored} label(s) from {done.files} labelled.extxyz file(s)"
                  + (f"; {done.unmatched} frame(s) matched no pool frame" if done.unmatched else ""))
    return 0


def _md(args) -> int:
    from ntkal.onthefly.config import load_md_spec

    spec = load_md_spec(args.config, out=args.out)  # every problem (file, line) before JAX loads
    if spec.out.exists() and not spec.out.is_dir():
        raise ValueError(f"{spec.out} exists and is not a folder")
    problem = writable_folder_problem(spec.out)
    if problem:
        raise ValueError(f"output folder: {problem}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a user's oracle module in the current folder
    if not args.no_compile_cache:
        enable_compile_cache_or_warn()
    from tqdm.auto import tqdm

    from ntkal.onthefly.run import run_md

    result = run_md(spec, resume=not args.no_resume, progress=not args.quiet,
                    log=None if args.quiet else tqdm.write)
    s = result.summary
    print(f"{s['steps']} steps, {s['labels']} labels, {s['restarts']} restarts, {s['failed']} failed, "
          f"{s['finetunes']} fine-tunes ({result.wall_s:.0f} s)")
    print(f"outputs: {result.out}")
    try:
        from ntkal.plots import plot_md_log
    except ImportError:
        return 0
    print(f"plot: {plot_md_log(result.out / 'log.csv', result.out / 'md.png')}")
    return 0


def add_plot_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``ntkal plot`` arguments to ``parser`` (here, not in :mod:`ntkal.plots`, so that
    building the parser does not import matplotlib)."""
    parser.add_argument("results", help="results JSON (or a folder holding results.json)")
    parser.add_argument("--out", default=None, help="output folder (default: next to the JSON)")
    parser.add_argument("--metric", action="append", default=None,
                        help="learning-curve metric (repeatable; default force_mae and energy_mae_per_atom)")
    return parser


def _print_strategies(points) -> None:
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


def _print_seed_statistics(results_json: Path) -> None:
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


def _summarize(args) -> int:
    from ntkal.summarize import main_summarize

    return main_summarize(args)


def _plot(args) -> int:
    if not Path(args.results).exists():
        raise ValueError(f"argument results: no such file or folder: {args.results}")
    try:
        from ntkal.plots import main_plot
    except ImportError as err:
        raise ValueError(f"plotting needs matplotlib and scipy ({err})") from err
    return main_plot(args)


def _bench(args) -> int:
    scripts = sorted(BENCHMARKS.glob("*.py"))
    if args.names:
        scripts = [s for s in scripts if s.stem in args.names]
        missing = set(args.names) - {s.stem for s in scripts}
        if missing:
            print(f"unknown benchmark(s) {sorted(missing)}; available: {[s.stem for s in BENCHMARKS.glob('*.py')]}",
                  file=sys.stderr)
            return 2
    status = 0
    for script in scripts:
        print(f"== {script.name}", flush=True)
        quick = not args.full and "--quick" in script.read_text()
        cmd = [sys.executable, str(script)] + (["--quick"] if quick else [])
        status |= subprocess.call(cmd)
    return status


def build_parser() -> argparse.ArgumentParser:
    """The ``ntkal`` argument parser (imports nothing heavy)."""
    parser = argparse.ArgumentParser(prog="ntkal", description="Active learning of MLIPs with NTK features")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run an experiment config (a sweep), resumable")
    p.add_argument("config", type=Path, help="experiment config (TOML; see experiments/configs/)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: the config's 'out')")
    p.add_argument("--no-resume", action="store_true",
                   help="start every point over (a saved run made with other settings is otherwise an error)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--diagnose", action="store_true",
                   help="after every point, print the process's mapped memory regions, RSS and compile count")
    add_compile_cache_argument(p)
    p.set_defaults(func=_run)

    p = sub.add_parser("select", help="pick a batch from a pool file with a pretrained model")
    add_select_arguments(p)
    p.set_defaults(func=main_select)

    p = sub.add_parser("train", help="pretrain or fine-tune a model from structure files (TOML config)")
    add_train_arguments(p)
    p.set_defaults(func=main_train)

    p = sub.add_parser("labels", help="check, export or rebuild a label store (labels.db)",
                       description="check STORE: is it readable, what does it hold; export STORE OUT: every "
                                   "label to a structure file; rebuild CONFIG.toml: the store of that run, "
                                   "from its points' labelled.extxyz (a damaged store is moved aside first)")
    p.add_argument("action", choices=("check", "export", "rebuild"))
    p.add_argument("target", type=Path, help="the store (check, export) or the run's config (rebuild)")
    p.add_argument("output", type=Path, nargs="?", default=None, help="export: the output file (.extxyz, ...)")
    p.add_argument("--oracle", default=None, help="export: only this oracle fingerprint")
    p.add_argument("--out", type=Path, default=None, help="rebuild: the run's --out, when it was given")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_labels)

    p = sub.add_parser("md", help="on-the-fly active learning: (uncertainty-biased) MD that labels "
                                   "what the model does not know, resumable")
    p.add_argument("config", type=Path, help="md config (TOML; see experiments/onthefly/)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: the config's 'out')")
    p.add_argument("--no-resume", action="store_true", help="start over (a saved run is otherwise continued)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or event lines")
    add_compile_cache_argument(p)
    p.set_defaults(func=_md)

    p = sub.add_parser("summarize", help="statistics over seeds of results.json: final errors, paired "
                                          "differences, labels saved against random, 95 %% bootstrap CIs")
    add_summarize_arguments(p)
    p.set_defaults(func=_summarize)

    p = sub.add_parser("plot", help="learning curves and PV calibration from results.json")
    add_plot_arguments(p)
    p.set_defaults(func=_plot)

    p = sub.add_parser("bench", help="run the benchmark scripts (quick sizes unless --full)")
    p.add_argument("names", nargs="*", help="benchmark script names (default: all)")
    p.add_argument("--full", action="store_true")
    p.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand; returns its exit status (2 = unusable input)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"ntkal {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
