"""``ntkal bench [NAME ...] [--full]``: the benchmark scripts of ``benchmarks/`` (quick sizes unless --full)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

__all__ = ["add_bench_arguments", "main_bench"]

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def add_bench_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``ntkal bench`` arguments to ``p``."""
    p.add_argument("names", nargs="*", help="benchmark script names (default: all)")
    p.add_argument("--full", action="store_true")
    return p


def main_bench(args: argparse.Namespace) -> int:
    """``ntkal bench``: run the benchmark scripts; the exit status of the failing ones."""
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
