"""``ntkal labels check|export|rebuild``: the label store's health, an export, a rebuild."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_labels_arguments", "main_labels"]


def add_labels_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``ntkal labels`` arguments to ``p``."""
    p.add_argument("action", choices=("check", "export", "rebuild"))
    p.add_argument("target", type=Path, help="the store (check, export) or the run's config (rebuild)")
    p.add_argument("output", type=Path, nargs="?", default=None, help="export: the output file (.extxyz, ...)")
    p.add_argument("--oracle", default=None, help="export: only this oracle fingerprint")
    p.add_argument("--out", type=Path, default=None, help="rebuild: the run's --out, when it was given")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main_labels(args: argparse.Namespace) -> int:
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
