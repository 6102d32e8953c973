"""``ntkal plot RESULTS.json``: learning curves and PV-vs-error calibration."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_plot_arguments", "main_plot"]


def add_plot_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``ntkal plot`` arguments to ``parser`` (here, not in :mod:`ntkal.plots`, so that
    building the parser does not import matplotlib)."""
    parser.add_argument("results", help="results JSON (or a folder holding results.json)")
    parser.add_argument("--out", default=None, help="output folder (default: next to the JSON)")
    parser.add_argument("--metric", action="append", default=None,
                        help="learning-curve metric (repeatable; default force_mae and energy_mae_per_atom)")
    return parser


def main_plot(args: argparse.Namespace) -> int:
    """``ntkal plot``: learning curves and PV calibration (:func:`ntkal.plots.main_plot`)."""
    if not Path(args.results).exists():
        raise ValueError(f"argument results: no such file or folder: {args.results}")
    try:
        from ntkal.plots import main_plot as plot_main
    except ImportError as err:
        raise ValueError(f"plotting needs matplotlib and scipy ({err})") from err
    return plot_main(args)
