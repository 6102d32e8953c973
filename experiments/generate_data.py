#!/usr/bin/env python
"""Generate (or reuse from cache) ntkal's benchmark stand-in datasets.

Usage::

  python experiments/generate_data.py oc20_like t1x_like --size default --seed 0 \
      --cache-dir data_cache

Prints the files of every split and the wall time. ``OMP_NUM_THREADS`` and
``OPENBLAS_NUM_THREADS`` are set to 1 *here*, before numpy/tblite are
imported: tblite's default OpenMP threading is ~1000x slower on small
molecules and BLAS threading made EMT ~3x slower (measured). Override by
exporting them yourself.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402


def main(argv=None) -> int:
    from ntkal.datasets import GENERATORS, SIZES, dataset_dir, generate

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="+", choices=GENERATORS)
    p.add_argument("--size", default="default", choices=SIZES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default="data_cache")
    p.add_argument("--workers", type=int, default=1,
                   help="generator processes (output is identical for any value)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    for name in args.names:
        t0 = time.perf_counter()
        paths = generate(name, args.size, args.seed, args.cache_dir, progress=not args.quiet,
                         workers=args.workers)
        dt = time.perf_counter() - t0
        root, man = dataset_dir(name, args.size, args.seed, args.cache_dir, progress=False)
        counts = ({s: v["n_frames"] for s, v in man["splits"].items()} if name == "oc20_like"
                  else {"path_frames": man["n_path_frames"], "eq_frames": man["n_eq_frames"],
                        "reactions": len(man["reactions"]), "failures": len(man["failures"])})
        print(json.dumps({"name": name, "size": args.size, "seed": args.seed, "dir": root,
                          "seconds": round(dt, 2), "counts": counts, "files": paths}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
