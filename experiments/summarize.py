"""The statistics over seeds of an experiment: the same as ``ntkal summarize`` (:mod:`ntkal.summarize`).

    python experiments/summarize.py experiments/results/pool_shift/results.json --reach-at 0.667
"""

import sys

from ntkal.cli import main

if __name__ == "__main__":
    sys.exit(main(["summarize", *sys.argv[1:]]))
