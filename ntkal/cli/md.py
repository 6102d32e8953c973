"""``ntkal md CONFIG.toml``: on-the-fly active learning by (uncertainty-biased) MD, resumable."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ntkal.cache import add_compile_cache_argument, enable_compile_cache_or_warn
from ntkal.file_checks import writable_folder_problem

__all__ = ["add_md_arguments", "main_md"]


def add_md_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``ntkal md`` arguments to ``p``."""
    p.add_argument("config", type=Path, help="md config (TOML; see experiments/onthefly/)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: the config's 'out')")
    p.add_argument("--no-resume", action="store_true", help="start over (a saved run is otherwise continued)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or event lines")
    add_compile_cache_argument(p)
    return p


def main_md(args: argparse.Namespace) -> int:
    """``ntkal md``: check the config (before JAX loads), then run on-the-fly MD."""
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
