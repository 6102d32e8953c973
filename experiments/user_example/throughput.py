"""Labelling throughput of the worked example's oracle, 1 vs 2 local worker processes.

    PYTHONPATH=. OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 .venv/bin/python \
        experiments/user_example/throughput.py > experiments/results/user_example/throughput.txt

Labels the first 16 pool structures with ``ntkal.labelling.label_structures`` (executor
``process``), a fresh ``LabelStore`` each time, for workers = 1, 2, 1, 2 (alternating, so a
change of machine load hits both). Two numbers per run:

* cold: ``label_structures`` opening its own pool, as a one-off call does (includes spawning
  the workers, importing torch/CHGNet and loading the model in each);
* warm: through an executor whose workers have already labelled ``2 x workers`` other pool
  structures (the model is loaded), as in ``ntkal run``, where one pool serves the whole sweep.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # the oracle's import path (spawned workers inherit it)

N = 16


def main():
    from ntkal.datasets.files import read_structure_file
    from ntkal.labelling import LabelStore, OracleConfig, label_structures, make_executor

    pool = list(read_structure_file(str(HERE / "data" / "pool.extxyz.xz")))
    todo, warmup = pool[:N], pool[N:]
    print(f"# {N} pool structures ({sum(len(a) for a in todo) / N:.1f} atoms on average), oracle "
          f"experiments.user_example.oracle:make (CHGNet 0.3.0, 1 torch thread per worker), executor process")
    print(f"# os.cpu_count() = {os.cpu_count()}; load average before: {os.getloadavg()[0]:.2f} "
          f"{os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    print("| workers | cold: s | cold: structures/s | warm: s | warm: structures/s | load avg (1 min) |")
    print("|---|---|---|---|---|---|")
    for workers in (1, 2, 1, 2):
        config = OracleConfig(calculator="experiments.user_example.oracle:make", executor="process",
                              workers=workers)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            out = label_structures(todo, config, LabelStore(Path(tmp) / "cold.db"))
            cold = time.perf_counter() - t
            assert out.computed == N and not out.failures
            with make_executor(config) as executor:
                store = LabelStore(Path(tmp) / "warm.db")
                label_structures(warmup[:2 * workers], config, store, executor=executor)
                t = time.perf_counter()
                out = label_structures(todo, config, store, executor=executor)
                warm = time.perf_counter() - t
                assert out.computed == N and not out.failures
        print(f"| {workers} | {cold:.1f} | {N / cold:.2f} | {warm:.1f} | {N / warm:.2f} | "
              f"{os.getloadavg()[0]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
