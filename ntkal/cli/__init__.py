"""The ``ntkal`` command: ``run``, ``select``, ``train``, ``labels``, ``md``, ``summarize``, ``plot``, ``bench``.

    ntkal run CONFIG.toml [--no-resume] [--out DIR] [--no-compile-cache] [--diagnose]
    ntkal train CONFIG.toml [--out CKPT.msgpack] [--quiet]
    ntkal select --model CKPT --pool FILE --train FILE --budget N --out picked.extxyz [--kernel joint ...]
    ntkal md CONFIG.toml [--out DIR] [--no-resume] [--quiet] [--no-compile-cache]
    ntkal labels check STORE | export STORE OUT.extxyz | rebuild CONFIG.toml [--out DIR]
    ntkal summarize RESULTS.json [...] [--pair A:B] [--reach-at 0.667] [--json OUT]
    ntkal plot RESULTS.json [--out DIR]
    ntkal bench [NAME ...] [--full]

One module per subcommand (``ntkal.cli.run``, ``.select``, ``.train``, ``.labels``, ``.md``,
``.summarize``, ``.plot``, ``.bench``), each with ``add_<cmd>_arguments`` and ``main_<cmd>``; the
JAX-free checks they share are :mod:`ntkal.file_checks` and :mod:`ntkal.toml_checks`. Building
the parser imports neither JAX nor matplotlib: ``ntkal --help`` is fast, and every
argument and file check runs before the heavy modules load (each handler imports them lazily).
``run`` and ``select`` turn on JAX's persistent compilation cache (:mod:`ntkal.cache`)
unless ``--no-compile-cache`` is given.
"""

from __future__ import annotations

import argparse
import sys

from ntkal.cli.bench import add_bench_arguments, main_bench
from ntkal.cli.labels import add_labels_arguments, main_labels
from ntkal.cli.md import add_md_arguments, main_md
from ntkal.cli.plot import add_plot_arguments, main_plot
from ntkal.cli.run import add_run_arguments, main_run
from ntkal.cli.select import add_select_arguments, main_select
from ntkal.cli.summarize import add_summarize_arguments, main_summarize
from ntkal.cli.train import add_train_arguments, main_train

__all__ = ["main", "build_parser"]

#: subcommand → (help, add arguments, run, description)
_COMMANDS = {
    "run": ("run an experiment config (a sweep), resumable", add_run_arguments, main_run, None),
    "select": ("pick a batch from a pool file with a pretrained model", add_select_arguments, main_select, None),
    "train": ("pretrain or fine-tune a model from structure files (TOML config)", add_train_arguments,
              main_train, None),
    "labels": ("check, export or rebuild a label store (labels.db)", add_labels_arguments, main_labels,
               "check STORE: is it readable, what does it hold; export STORE OUT: every label to a structure "
               "file; rebuild CONFIG.toml: the store of that run, from its points' labelled.extxyz (a damaged "
               "store is moved aside first)"),
    "md": ("on-the-fly active learning: (uncertainty-biased) MD that labels what the model does not know, "
           "resumable", add_md_arguments, main_md, None),
    "summarize": ("statistics over seeds of results.json: final errors, paired differences, labels saved "
                  "against random, 95 %% bootstrap CIs", add_summarize_arguments, main_summarize, None),
    "plot": ("learning curves and PV calibration from results.json", add_plot_arguments, main_plot, None),
    "bench": ("run the benchmark scripts (quick sizes unless --full)", add_bench_arguments, main_bench, None),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``ntkal`` argument parser (imports nothing heavy)."""
    parser = argparse.ArgumentParser(prog="ntkal", description="Active learning of MLIPs with NTK features")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, run, description) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=description)
        add_arguments(p)
        p.set_defaults(func=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand; returns its exit status (2 = unusable input)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"ntkal {args.command}: error: {err}", file=sys.stderr)
        return 2
