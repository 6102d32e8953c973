"""Does a long sweep hold its compile state flat? N sweep points in one process, counted.

Runs every point of a sweep config in this process (:func:`ntkal.experiment.run_sweep`, as
``ntkal run`` does, with the persistent compilation cache unless ``--no-compile-cache``) and
prints, after each point, the process's mapped memory regions (``/proc/self/maps``), resident
memory and XLA compilations (:mod:`ntkal.process_stats`). A process whose compiled programs
pile up grows by hundreds of regions per program until it meets ``vm.max_map_count`` (65,530)
and aborts in LLVM; a bounded one is flat once every arm has run once.

The verdict checks that the counts stay within 10 % of their value at each arm's (method's)
first point through the arm's later points (an arm compiles its own programs once: its feature
maps, its selector), and over the whole sweep once every arm has run; it lists the compiles after
each arm's first point (0: every program was found again). ``--new-model-per-point`` clears
:func:`ntkal.models.build_model`'s cache after every point, so every point loads its checkpoint
into a new model object, as ntkal did before issue 27: the pile-up, side by side.

Usage::

    python benchmarks/sweep_memory.py --quick                       # 6 tiny OC20-like points, ~2 min
    python benchmarks/sweep_memory.py --quick --new-model-per-point # the same, as before issue 27
    python benchmarks/sweep_memory.py experiments/configs/pool_shift_payoff.toml \\
        --out runs/sweep_memory                                     # 5 arms x 5 seeds, ~20 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUICK_CONFIG = """\
name = "sweep_memory_quick"
seeds = [0, 1]
out = "unused"

[model]
checkpoint = "oc20_like"

[data]
dataset = "oc20_like"
size = "tiny"
pool = ["train"]
tests = ["val_id"]
max_test = 16

[loop]
method = ["random", "committee", "joint"]
initial = 8
batch = 8
rounds = 2
shortlist = 32
committee_size = 2

[kernel]
sketch_dim = 64
num_probes = 2

[train]
max_epochs = 3
batch_size = 4
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", type=Path, help="sweep config (TOML)")
    parser.add_argument("--quick", action="store_true", help="a built-in 6-point tiny OC20-like sweep")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: a temporary folder)")
    parser.add_argument("--no-compile-cache", action="store_true", help="do not use JAX's persistent cache")
    parser.add_argument("--tolerance", type=float, default=0.10, help="allowed relative growth (default 0.10)")
    parser.add_argument("--new-model-per-point", action="store_true",
                        help="a new model object for every point (the behaviour before issue 27)")
    args = parser.parse_args(argv)
    if args.config is None and not args.quick:
        parser.error("give a sweep config or --quick")

    with tempfile.TemporaryDirectory(prefix="ntkal-sweep-memory-") as scratch:
        config = args.config
        if config is None:
            config = Path(scratch) / "quick.toml"
            config.write_text(QUICK_CONFIG)
        out = args.out or Path(scratch) / "out"
        return _run(config, out, args)


def _run(config: Path, out: Path, args) -> int:
    from ntkal.cache import enable_compile_cache_or_warn
    from ntkal.experiment import load_sweep, run_sweep
    from ntkal.models import build_model
    from ntkal.process_stats import CompileCounter, max_map_count, snapshot

    if not args.no_compile_cache:
        enable_compile_cache_or_warn()
    points = load_sweep(config)
    rows = []
    t0 = time.perf_counter()
    with CompileCounter() as compiles:
        start = snapshot(compiles)

        def after_point(k, result):
            rows.append((k, result.config.label, result.config.loop.seed, snapshot(compiles),
                         time.perf_counter() - t0))
            s = rows[-1][3]
            print(f"  point {k + 1}/{len(points)} {result.config.label} seed {result.config.loop.seed}: "
                  f"{s.line()}", file=sys.stderr, flush=True)
            if args.new_model_per_point:
                build_model.cache_clear()

        run_sweep(config, out=out, resume=False, progress=False, log=None, after_point=after_point)

    print(f"\n{config} ({len(points)} points, one process); vm.max_map_count = {max_map_count()}; "
          f"compile cache {'off' if args.no_compile_cache else 'on'}"
          f"{'; a new model object per point' if args.new_model_per_point else ''}")
    print(f"start: {start.line()}\n")
    header = f"{'point':>5} {'arm':<44} {'seed':>4} {'mapped':>8} {'RSS MiB':>8} {'compiles':>8} {'new':>5} {'wall s':>7}"
    print(header)
    print("-" * len(header))
    previous = start.compiles
    for k, label, seed, s, wall in rows:
        print(f"{k + 1:>5} {label[:44]:<44} {seed:>4} {s.mapped_regions or 0:>8,} {s.resident_mb or 0:>8,.0f} "
              f"{s.compiles:>8} {s.compiles - previous:>5} {wall:>7.0f}")
        previous = s.compiles
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"\nload average at the end: {', '.join(f'{x:.2f}' for x in load) if load else '?'}")
    return _verdict(rows, args.tolerance, max_map_count())


def _growth(rows) -> tuple[float, float, int]:
    """(relative growth of mapped regions, of RSS, compiles) over ``rows[0]`` through ``rows[-1]``."""
    base = rows[0][3]
    maps = max(r[3].mapped_regions for r in rows) / base.mapped_regions - 1
    rss = max(r[3].resident_mb for r in rows) / base.resident_mb - 1
    return maps, rss, rows[-1][3].compiles - base.compiles


def _verdict(rows, tolerance: float, limit: int | None) -> int:
    """Each arm flat over its points (growth within ``tolerance`` of its first point's counts), and
    the whole sweep flat from the point after which every arm has run once."""
    ok = True
    print("\nper arm, over its points after the first:")
    arms = list(dict.fromkeys(r[1] for r in rows))
    for arm in arms:
        mine = [r for r in rows if r[1] == arm]
        if len(mine) < 2:
            continue
        maps, rss, compiles = _growth(mine)
        flat = maps <= tolerance and rss <= tolerance
        ok &= flat
        print(f"  {arm[:44]:<44} points {mine[0][0] + 1}-{mine[-1][0] + 1}: mapped regions +{100 * maps:.1f} %, "
              f"RSS +{100 * rss:.1f} %, {compiles} compiles: {'flat' if flat else 'GROWING'}")
    settled = max(next(k for k, r in enumerate(rows) if r[1] == arm) for arm in arms)
    if settled + 1 < len(rows):
        maps, rss, compiles = _growth(rows[settled:])
        flat = maps <= tolerance and rss <= tolerance
        ok &= flat
        print(f"whole sweep from point {settled + 1} (every arm has run): mapped regions +{100 * maps:.1f} %, "
              f"RSS +{100 * rss:.1f} %, {compiles} compiles: {'flat' if flat else 'GROWING'}")
    peak = max(r[3].mapped_regions for r in rows)
    print(f"peak mapped regions {peak:,}" + (f" ({100 * peak / limit:.0f} % of vm.max_map_count)" if limit else ""))
    print(f"verdict: {'FLAT' if ok else 'GROWING'} (tolerance {100 * tolerance:.0f} %)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
