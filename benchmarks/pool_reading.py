"""Reading one process's part of a pool file (issue 30): parse everything and drop the rest,
against stepping over the frames of other processes (:func:`ntkal.datasets.files.iter_ase_frames`).

Writes ``--n`` OC20-like candidates (:func:`ntkal.datasets.candidates.candidate_pool`, 20–230
atoms, with energies and forces as a labelled file would have them) to a temporary extxyz file,
then times, for each process count P, what process 0 of P reads before graphing: every frame
parsed by ``ase.io.iread`` and all but every P-th dropped (how ``ntkal select --distributed``
read its part before), and every P-th frame parsed with the others stepped over line by line
(how it reads now). The best of ``--repeats`` runs; one core.

Usage::

    python benchmarks/pool_reading.py --n 4000 --processes 2 8 32
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import ase.io
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator

from ntkal.datasets.candidates import candidate_pool
from ntkal.datasets.files import iter_ase_frames


def best_of(repeats: int, fn) -> tuple[float, int]:
    times, count = [], 0
    for _ in range(repeats):
        t = time.perf_counter()
        count = fn()
        times.append(time.perf_counter() - t)
    return min(times), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--processes", type=int, nargs="+", default=[2, 8, 32])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"# load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="ntkal-pool-reading-") as tmp:
        path = Path(tmp) / "pool.extxyz"
        frames = []
        for atoms in candidate_pool(args.n, seed=0):
            atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal()), forces=rng.normal(size=(len(atoms), 3)))
            frames.append(atoms)
        ase.io.write(path, frames, format="extxyz")
        atoms_total = sum(len(a) for a in frames)
        print(f"# {args.n} frames, {atoms_total} atoms, {path.stat().st_size / 1e6:.1f} MB", flush=True)
        print("\n| P | frames kept | parse all, drop the rest (s) | step over the rest (s) | speed-up |")
        print("|---|---|---|---|---|")
        for p in args.processes:
            part = range(0, args.n, p)
            old, n_old = best_of(args.repeats, lambda: sum(1 for i, _ in iter_ase_frames(path) if i in part))
            new, n_new = best_of(args.repeats, lambda: sum(1 for _ in iter_ase_frames(path, part.__contains__)))
            assert n_old == n_new == len(part)
            print(f"| {p} | {len(part)} | {old:.2f} | {new:.2f} | {old / new:.1f}x |", flush=True)
    print(f"\n# load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
