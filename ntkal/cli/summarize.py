"""``ntkal summarize RESULTS.json ...``: the statistics over seeds (:mod:`ntkal.summarize`). The
arguments are argparse only, so that ``ntkal --help`` imports neither NumPy nor JAX."""

from __future__ import annotations

import argparse

__all__ = ["add_summarize_arguments", "parse_pair", "main_summarize"]


def parse_pair(text: str) -> tuple[str, str]:
    """``"A:B"`` → ``("A", "B")``."""
    a, sep, b = text.partition(":")
    if not sep or not a or not b or ":" in b:
        raise argparse.ArgumentTypeError(f"expected LABEL_A:LABEL_B, got {text!r}")
    return a, b


def add_summarize_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``ntkal summarize`` arguments to ``parser``."""
    parser.add_argument("results", nargs="+",
                        help="results.json file(s) with a 'rows' list; rows of several files are "
                             "concatenated; a (dataset, size, label, seed, round, split) seen in an earlier file is "
                             "kept once (e.g. a random baseline shared by two studies)")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap RNG (default 0)")
    parser.add_argument("--pair", type=parse_pair, action="append", metavar="A:B",
                        help="paired comparison A − B (repeatable; replaces the default "
                             "joint* vs energy*/committee* pairs)")
    parser.add_argument("--all-rounds", action="store_true",
                        help="paired differences at every round, not only the final one")
    parser.add_argument("--metric", default="force_mae",
                        help="metric of labels-to-reach and the monotonicity check")
    parser.add_argument("--methods", nargs="+", metavar="LABEL",
                        help="only these methods (labels), e.g. the arms run on extra seeds")
    parser.add_argument("--json", metavar="OUT", help="also write the statistics as JSON")
    parser.add_argument("--reach-at", type=float, nargs="+", default=[], metavar="FRACTION",
                        help="also labels-to-reach random's error at the round nearest FRACTION of its "
                             "final labels (e.g. 0.667: where random's curve is flat near the end, its final "
                             "error overstates the saving)")
    return parser


def main_summarize(args: argparse.Namespace) -> int:
    """``ntkal summarize``: print the Markdown summary (and write ``--json``); 0 on success."""
    from ntkal.summarize import dumps, read_rows, summarize, to_markdown

    rows = read_rows(args.results, args.methods)
    summary = summarize(rows, n_boot=args.n_boot, seed=args.seed, pairs=args.pair,
                        all_rounds=args.all_rounds, metric=args.metric, reach_at=args.reach_at)
    print(to_markdown(summary), end="")
    if args.json:
        with open(args.json, "w") as f:
            f.write(dumps(summary) + "\n")
    return 0
