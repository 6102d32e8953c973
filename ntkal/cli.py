"""The ``ntkal`` command: ``run``, ``select``, ``plot``, ``bench``.

    ntkal run CONFIG.toml [--no-resume] [--out DIR]
    ntkal select --model CKPT --pool FILE --train FILE --budget N --kernel joint --out picked.extxyz
    ntkal plot RESULTS.json [--out DIR]
    ntkal bench [NAME ...] [--full]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["main"]

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(args) -> int:
    from ntkal.experiment import results_table, run_sweep

    t0 = time.perf_counter()
    results = run_sweep(args.config, out=args.out, resume=not args.no_resume, progress=not args.quiet)
    rows = [row for r in results for row in r.rows]
    print()
    print(results_table(rows))
    out = Path(args.out or results[0].config.out)
    print(f"\nresults: {out / 'results.csv'}, {out / 'results.json'}  ({time.perf_counter() - t0:.0f} s)")
    try:
        from ntkal.plots import plot_results
    except ImportError:
        return 0
    for png in plot_results(out / "results.json", out):
        print(f"plot: {png}")
    return 0


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ntkal", description="Active learning of MLIPs with NTK features")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run an experiment config (a sweep), resumable")
    p.add_argument("config", type=Path)
    p.add_argument("--out", type=Path, default=None, help="output folder (default: the config's 'out')")
    p.add_argument("--no-resume", action="store_true", help="ignore saved state and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)

    try:
        from ntkal.select import add_select_arguments, main_select
        p = sub.add_parser("select", help="pick a batch from a pool file with a pretrained model")
        add_select_arguments(p)
        p.set_defaults(func=main_select)
    except ImportError:
        pass
    try:
        from ntkal.plots import add_plot_arguments, main_plot
        p = sub.add_parser("plot", help="learning curves and PV calibration from results.json")
        add_plot_arguments(p)
        p.set_defaults(func=main_plot)
    except ImportError:
        pass

    p = sub.add_parser("bench", help="run the benchmark scripts (quick sizes unless --full)")
    p.add_argument("names", nargs="*", help="benchmark script names (default: all)")
    p.add_argument("--full", action="store_true")
    p.set_defaults(func=_bench)

    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"ntkal {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
