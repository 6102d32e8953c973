"""``ntkal train CONFIG.toml``: the subcommand (arguments, the hand-off to the compute code).

The config format and its checks are :mod:`ntkal.train.spec` (JAX-free, checked in full before
:func:`ntkal.train.from_files.train_from_files` imports JAX).
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from ntkal.cache import add_compile_cache_argument, enable_compile_cache_or_warn
from ntkal.train.spec import load_train_spec

__all__ = ["add_train_arguments", "main_train", "command_of"]


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``ntkal train`` arguments to ``parser``."""
    parser.add_argument("config", type=Path, help="TOML config: [model], [data], [train], out, seed "
                        "(see ntkal/train/spec.py or experiments/configs/train_example.toml)")
    parser.add_argument("--out", type=Path, default=None,
                        help="checkpoint path (.msgpack, relative to the working directory; overrides the "
                             "config's 'out'); the model card <stem>.md is written beside it")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or log lines, only the result line")
    parser.add_argument("--no-resume", action="store_true",
                        help="start over: delete the fit state <stem>.state.npz that a killed run left beside "
                             "the checkpoint (by default the same command resumes from its last epoch)")
    add_compile_cache_argument(parser)
    return parser


def command_of(args: argparse.Namespace) -> str:
    """The ``ntkal train`` command line of parsed ``args`` (recorded in the metadata)."""
    argv = [str(args.config)] + (["--out", str(args.out)] if args.out is not None else []) + \
        (["--quiet"] if args.quiet else []) + (["--no-resume"] if getattr(args, "no_resume", False) else []) + \
        (["--no-compile-cache"] if getattr(args, "no_compile_cache", False) else [])
    return "ntkal train " + shlex.join(argv)


def main_train(args: argparse.Namespace) -> int:
    """Run ``ntkal train`` from parsed arguments; returns 0.

    The config and every file are checked (:func:`load_train_spec`) before JAX is imported; then
    the persistent compilation cache is turned on (unless ``--no-compile-cache``).

    Raises:
      TrainConfigError: an unusable config (exit status 2 through :func:`ntkal.cli.main`).
    """
    spec = load_train_spec(args.config, out=args.out)
    if not getattr(args, "no_compile_cache", False):
        enable_compile_cache_or_warn()  # before the first compilation
    from ntkal.train.from_files import train_from_files

    result = train_from_files(spec, progress=not args.quiet, command=command_of(args),
                              log=None if args.quiet else print, resume=not getattr(args, "no_resume", False))
    meta = result.metadata
    val = meta["errors"].get("val") or {}
    scores = (f"val force MAE {val['force_mae']:.4f} eV/Å, energy MAE {1000 * val['energy_mae_per_atom']:.1f} "
              f"meV/atom; " if val.get("force_mae") is not None and val.get("energy_mae_per_atom") is not None
              else "")
    print(f"trained {meta['name']}: best epoch {meta['best_epoch']} of {meta['epochs_run']}; {scores}"
          f"{meta['wall_s']:.0f} s -> {result.out_path} (card {result.card_path})")
    return 0
