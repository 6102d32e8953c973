"""Per-structure neighbour-list cost: ASE vs matscipy vs vesin, and ``atoms_to_structure``.

Structures (Cu fcc(111) slabs with an adsorbate, built with ``ase.build``):

* OC20-like slabs, ``fcc111('Cu', size=(a, b, layers), vacuum=10)`` + an adsorbate
  (CO / CH3OH), once with ``pbc=(True, True, False)`` ("TTF") and once fully periodic
  ("TTT"), 20 to 230 atoms;
* a non-periodic molecule (C60 in a 5 Å-vacuum box, ``pbc=False``);
* small periodic bulk cells smaller than the cutoff (Cu primitive fcc, 1 atom; NaCl
  primitive, 2 atoms), where every atom neighbours its own images.

Rows are per-structure wall times (µs, best of ``--repeats`` batches, single thread):

* ASE        — ``ase.neighborlist.neighbor_list("ijSd", atoms, rc, self_interaction=False)``;
* matscipy   — ``matscipy.neighbours.neighbour_list("ijSd", atoms, rc)``;
* vesin      — ``vesin.NeighborList(cutoff=rc, full_list=True, n_threads=1).compute(...)``;
* ntkal      — ``ntkal.data.neighbours.neighbour_list`` (vesin, re-measured with ASE's
  formula, filtered with ``d < rc`` and sorted by (i, j, S));
* a2s (ASE) / a2s (ntkal) — the whole ``atoms_to_structure`` with the neighbour list
  forced to the ASE backend (≈ the code before this change) / the default backend.

A second table checks every library's edge set against ASE on awkward inputs (mixed
periodicity, a zero cell vector along the non-periodic direction, a molecule with no
cell, cells smaller than the cutoff, a rotated triclinic slab).

Usage::

    python benchmarks/neighbours.py --quick   # 20- and 70-atom slabs, fewer repeats
    python benchmarks/neighbours.py           # slabs of 20 … 230 atoms

Measured (CPU, 2 shared cores, load average 3.1 from other jobs; python 3.11, numpy 2.4,
ase 3.29.0, vesin 0.6.2, matscipy 1.3.1), ``OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
python benchmarks/neighbours.py``, µs per structure (excerpt; TTF rows, TTT within 10 %):

| structure | N | cutoff Å | edges | ASE | matscipy | vesin | ntkal | a2s (ASE) | a2s (ntkal) |
|---|---|---|---|---|---|---|---|---|---|
| Cu(3x3x2)+CO TTF | 20 | 4 | 260 | 11869 | 174 | 159 | 299 | 12096 | 456 |
| Cu(4x4x4)+CH3OH TTF | 70 | 4 | 1074 | 8836 | 438 | 279 | 460 | 9164 | 637 |
| Cu(8x7x4)+CH3OH TTF | 230 | 4 | 3474 | 23827 | 1515 | 721 | 1067 | 24136 | 1314 |
| Cu(3x3x2)+CO TTF | 20 | 5 | 512 | 7198 | 190 | 165 | 319 | 7503 | 481 |
| Cu(4x4x4)+CH3OH TTF | 70 | 5 | 2342 | 37168 | 1394 | 708 | 946 | 36751 | 1197 |
| Cu(8x7x4)+CH3OH TTF | 230 | 5 | 7622 | 27872 | 1937 | 958 | 1503 | 28820 | 1830 |
| C60 molecule, pbc=False | 60 | 5 | 1740 | 23250 | 213 | 187 | 352 | 23545 | 508 |
| Cu fcc primitive (1 atom) | 1 | 5 | 42 | 34306 | 59 | 118 | 237 | 34288 | 392 |

ntkal's list (vesin + ASE-exact cutoff test + (i, j, S) sort) is 16–145× faster than ASE
(``atoms_to_structure`` as a whole: 13–87×). vesin is the fastest library from ~20 atoms up
(matscipy wins only on 1–2-atom cells, by ~60 µs) and, unlike matscipy, accepts a zero cell
(molecules without a box, slabs with no vector along the non-periodic axis); both agree
with ASE on every mixed-pbc and small-cell case in the second table.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import time

import ase
import numpy as np
from ase.build import add_adsorbate, bulk, fcc111, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list

import ntkal.data.structure as structure_module
from ntkal.data.neighbours import neighbour_list as ntkal_neighbour_list
from ntkal.data.structure import atoms_to_structure

try:
    import vesin
except ImportError:  # pragma: no cover - benchmark reports it
    vesin = None
try:
    from matscipy.neighbours import neighbour_list as matscipy_neighbour_list
except ImportError:  # pragma: no cover
    matscipy_neighbour_list = None

#: (a, b, layers, adsorbate) → 18+2=20, 36+2=38, 64+6=70, 144+6=150, 224+6=230 atoms.
SLABS_FULL = [(3, 3, 2, "CO"), (3, 3, 4, "CO"), (4, 4, 4, "CH3OH"), (6, 6, 4, "CH3OH"),
              (8, 7, 4, "CH3OH")]
SLABS_QUICK = [(3, 3, 2, "CO"), (4, 4, 4, "CH3OH")]


def slab(a: int, b: int, layers: int, adsorbate: str, pbc) -> ase.Atoms:
    atoms = fcc111("Cu", size=(a, b, layers), vacuum=10.0, periodic=True)
    add_adsorbate(atoms, molecule(adsorbate), 2.0, "fcc")
    atoms.pbc = pbc
    return atoms


def benchmark_structures(quick: bool) -> list[tuple[str, ase.Atoms]]:
    out = []
    for a, b, layers, ads in SLABS_QUICK if quick else SLABS_FULL:
        for pbc, tag in (((True, True, False), "TTF"), (True, "TTT")):
            atoms = slab(a, b, layers, ads, pbc)
            out.append((f"Cu({a}x{b}x{layers})+{ads} {tag}", atoms))
    c60 = molecule("C60")
    c60.center(vacuum=5.0)
    out.append(("C60 molecule, pbc=False", c60))
    out.append(("Cu fcc primitive (1 atom)", bulk("Cu")))
    out.append(("NaCl primitive (2 atoms)", bulk("NaCl", "rocksalt", a=5.64)))
    return out


def awkward_structures() -> list[tuple[str, ase.Atoms]]:
    """Inputs where neighbour-list libraries tend to differ from ASE."""
    out = [("slab TTF", slab(3, 3, 3, "CO", (True, True, False))),
           ("slab TFT", slab(3, 3, 3, "CO", (True, False, True)))]
    zero_c = slab(3, 3, 3, "CO", (True, True, False))
    zero_c.cell[2] = 0.0
    out.append(("slab TTF, zero c vector", zero_c))
    outside = slab(3, 3, 3, "CO", (True, True, False))
    outside.positions[:4] += 1.7 * outside.cell[0] - 0.4 * outside.cell[1] - [0, 0, 30.0]
    out.append(("slab TTF, atoms outside cell", outside))
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rotated = slab(2, 2, 3, "CO", (True, True, False))
    rotated.set_cell(rotated.cell.array @ q.T, scale_atoms=True)
    rotated.positions -= 50.0
    out.append(("rotated slab TTF, negative coords", rotated))
    out.append(("molecule, no cell", molecule("CH3CH2OH")))
    out.append(("Cu primitive TTT (self-images)", bulk("Cu")))
    prim = bulk("Cu")
    prim.pbc = (True, True, False)
    out.append(("Cu primitive TTF (self-images)", prim))
    out.append(("triclinic 2 atoms TTT", ase.Atoms(
        "Cu2", positions=[[0, 0, 0], [1.0, 0.5, 0.7]],
        cell=[[2.5, 0, 0], [1.1, 2.3, 0], [0.7, 0.9, 2.1]], pbc=True)))
    return out


def run_ase(atoms, cutoff):
    return ase_neighbor_list("ijSd", atoms, cutoff, self_interaction=False)


def run_matscipy(atoms, cutoff):
    return matscipy_neighbour_list("ijSd", atoms, cutoff)


def run_vesin(atoms, cutoff):
    calculator = vesin.NeighborList(cutoff=cutoff, full_list=True, n_threads=1)
    return calculator.compute(atoms.positions, atoms.cell.array, atoms.pbc, "ijSd")


def run_ntkal(atoms, cutoff):
    return ntkal_neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)


def run_a2s_ase(atoms, cutoff):
    original = structure_module.neighbour_list
    structure_module.neighbour_list = functools.partial(original, backend="ase")
    try:
        return atoms_to_structure(atoms, cutoff)
    finally:
        structure_module.neighbour_list = original


def run_a2s(atoms, cutoff):
    return atoms_to_structure(atoms, cutoff)


METHODS = [("ASE", run_ase), ("matscipy", run_matscipy), ("vesin", run_vesin),
           ("ntkal", run_ntkal), ("a2s (ASE)", run_a2s_ase), ("a2s (ntkal)", run_a2s)]


def available(name: str) -> bool:
    return not ((name == "matscipy" and matscipy_neighbour_list is None)
                or (name == "vesin" and vesin is None))


def per_call_seconds(fn, atoms, cutoff, repeats: int, min_batch_s: float) -> float:
    """Best-of-``repeats`` mean time of one call; batches last ≥ ``min_batch_s``."""
    fn(atoms, cutoff)  # warm-up (imports, library loading)
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            fn(atoms, cutoff)
        elapsed = time.perf_counter() - start
        if elapsed >= min_batch_s or number >= 4096:
            break
        number *= 2
    best = elapsed / number
    for _ in range(repeats - 1):
        start = time.perf_counter()
        for _ in range(number):
            fn(atoms, cutoff)
        best = min(best, (time.perf_counter() - start) / number)
    return best


def edge_key(i, j, shifts, dist):
    order = np.lexsort((shifts[:, 2], shifts[:, 1], shifts[:, 0], j, i))
    key = np.column_stack([i, j, shifts]).astype(np.int64)[order]
    return key, np.asarray(dist)[order]


def agrees_with_ase(fn, atoms, cutoff) -> str:
    ref_key, ref_d = edge_key(*run_ase(atoms, cutoff))
    try:
        i, j, shifts, dist = fn(atoms, cutoff)
    except Exception as error:  # noqa: BLE001 - reported in the table
        return f"error: {type(error).__name__}: {str(error)[:40]}"
    key, d = edge_key(np.asarray(i), np.asarray(j), np.asarray(shifts), dist)
    if key.shape != ref_key.shape or not np.array_equal(key, ref_key):
        return f"NO ({len(key)} vs {len(ref_key)} edges)"
    if not np.allclose(d, ref_d, rtol=0, atol=1e-10):
        return "NO (distances)"
    return "yes"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20- and 70-atom slabs only")
    parser.add_argument("--cutoffs", type=float, nargs="+", default=[4.0, 5.0])
    parser.add_argument("--repeats", type=int, default=None, help="batches per timing (best of)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    min_batch_s = 0.02 if args.quick else 0.05

    versions = [f"python {platform.python_version()}", f"numpy {np.__version__}",
                f"ase {ase.__version__}"]
    if vesin is not None:
        versions.append(f"vesin {vesin.__version__}")
    if matscipy_neighbour_list is not None:
        import matscipy
        versions.append(f"matscipy {matscipy.__version__}")
    print(f"# command: python benchmarks/neighbours.py {' '.join(argv or sys.argv[1:])}".rstrip())
    print(f"# {', '.join(versions)}; {os.cpu_count()} CPUs; "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    print("# load average at start (1, 5, 15 min): "
          + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    print()

    names = [name for name, _ in METHODS if available(name)]
    print("Per-structure time (µs, best of %d batches); speed-up = ASE / ntkal and "
          "a2s (ASE) / a2s (ntkal)." % repeats)
    print()
    print("| structure | N | cutoff Å | edges | " + " | ".join(names)
          + " | speed-up NL | speed-up a2s |")
    print("|---|---|---|---|" + "---|" * len(names) + "---|---|")
    structures = benchmark_structures(args.quick)
    for cutoff in args.cutoffs:
        for label, atoms in structures:
            times = {name: per_call_seconds(fn, atoms, cutoff, repeats, min_batch_s)
                     for name, fn in METHODS if available(name)}
            n_edges = len(run_ase(atoms, cutoff)[0])
            cells = " | ".join(f"{times[name] * 1e6:.0f}" for name in names)
            print(f"| {label} | {len(atoms)} | {cutoff:g} | {n_edges} | {cells} | "
                  f"{times['ASE'] / times['ntkal']:.1f}× | "
                  f"{times['a2s (ASE)'] / times['a2s (ntkal)']:.1f}× |", flush=True)
    print()
    print("Edge set (i, j, S) and distances (to 1e-10 Å) equal to ASE's? (cutoff 5 Å)")
    print()
    checked = [(name, fn) for name, fn in METHODS[1:4] if available(name)]
    print("| structure | pbc | " + " | ".join(name for name, _ in checked) + " |")
    print("|---|---|" + "---|" * len(checked))
    for label, atoms in awkward_structures():
        pbc = "".join("T" if p else "F" for p in atoms.pbc)
        results = " | ".join(agrees_with_ase(fn, atoms, 5.0) for _, fn in checked)
        print(f"| {label} | {pbc} | {results} |", flush=True)
    print()
    print("# load average at end (1, 5, 15 min): "
          + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
