"""How much of the full joint-PV pick does a cascade keep, as a function of q, pool size and B?

One featurisation per kernel, then every question answered from the stored scores and features:

1. Every candidate of an ``n``-structure mixed-size OC20-like pool (the pool and 64-structure
   training set of ``benchmarks/select_scaling.py``) is scored by posterior variance under the
   full force-aware kernel (joint, two sketch/probe seeds: the second is the noise ceiling) and
   under each cheap first-stage kernel (the cascade's own, ``AcquisitionConfig.cascade_kernel``),
   with the same training posterior rule the cascade uses (:meth:`ntkal.acquire.Acquirer.pick`
   with ``maxdiag`` on slices of the pool). PV under a fixed training posterior does not depend
   on the other candidates, so:
2. ``maxdiag`` (the pure PV top-B): the cascade's batch is the joint top-B of the structures the
   first stage keeps, so its recall is exactly the first stage's coverage of the joint top-B.
   It is computed for every q, budget B and first stage, on the whole pool and on random
   sub-pools (pool size m; ``--draws`` random sub-pools each), which shows how recall depends on
   the kept-to-batch ratio q·m/B rather than on q alone.
3. ``lcmd`` and ``varred`` (batch selectors): the cascade is replayed by picking from the top
   ``max(ceil(q·n), B)`` candidates by cheap PV (what :meth:`Acquirer._cascade` keeps) with the
   cached joint features, and compared with the full pick on the whole pool.

The scores are saved (``--out``/scores.npz) so the tables can be recomputed without
featurising again (``--from-scores``).

Usage::

    python experiments/cascade_recall.py --n 4000 --out experiments/results/cascade_recall/n4000
    python experiments/cascade_recall.py --from-scores experiments/results/cascade_recall/n4000
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ntkal.models import atomic_write_bytes  # noqa: E402


def top(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` of ``ids`` with the largest ``scores[ids]`` (ties broken by id)."""
    order = np.lexsort((ids, -scores[ids]))
    return ids[order[:k]]


def kept(q: float, m: int, budget: int) -> int:
    """Structures a first stage with keep fraction ``q`` passes on from ``m`` (at least B)."""
    return max(math.ceil(q * m), budget)


def coverage(full: np.ndarray, cheap: np.ndarray, ids: np.ndarray, keep: int, budget: int) -> float:
    """Fraction of the joint top-``budget`` of ``ids`` inside the top-``keep`` by ``cheap``."""
    return len(np.intersect1d(top(full, ids, budget), top(cheap, ids, keep))) / budget


def featurise(args, log):
    """Score the pool under every kernel; returns (scores dict, n_atoms, picks dict)."""
    import jax
    from ntkal.acquire import Acquirer, AcquisitionConfig, structure_set
    from ntkal.data.parallel import structures_parallel
    from ntkal.datasets.candidates import candidate_pool
    from ntkal.kernels import KernelConfig
    from ntkal.models import load_pretrained

    model, params, _ = load_pretrained("oc20_like")
    n = args.n
    atoms = list(candidate_pool(n, seed=args.pool_seed)) + list(candidate_pool(args.train, seed=2))
    base = AcquisitionConfig(
        kernel=KernelConfig(kind="joint", sketch_dim=args.sketch_dim, num_probes=args.probes),
        selector="maxdiag", shortlist=n, noise_rule="fixed", chunk_size=args.chunk_size,
        size_classes=args.size_classes)
    structures = structures_parallel(atoms, model.config.cutoff, elements=model.config.elements)
    data = structure_set(structures, base.max_classes(len(structures)), base.max_padding)
    pool, train = np.arange(n), n + np.arange(args.train)
    store: dict = {}
    scores, picks = {}, {}
    # the full kernel and its noise ceiling: the same kernel with another sketch/probe seed
    kernels = {"joint": base.kernel, "joint_seed1": dataclasses.replace(base.kernel, seed=base.kernel.seed + 1)}

    def pv_of(config, cache=None):
        """PV of every pool structure: ``maxdiag`` picks of whole slices. The scale and the
        posterior come from the training set alone, so a slice's PVs are those of the whole pool
        (slices bound the memory of per-atom rows: 230 rows of d floats per structure)."""
        acq = Acquirer(model, params, dataclasses.replace(config, shortlist=args.slice), store=store)
        t = time.perf_counter()
        out = np.full(n, np.nan)
        for start in range(0, n, args.slice):
            part = pool[start:start + args.slice]
            got = acq.pick(params, data, train, part, len(part), jax.random.key(0), cache=cache,
                           progress=True)
            out[got.ids] = got.pv
        assert np.all(np.isfinite(out)), "a pool structure was not scored"
        return out, time.perf_counter() - t

    caches = {name: {} for name in kernels}
    for name, kernel in kernels.items():
        scores[name], seconds = pv_of(dataclasses.replace(base, kernel=kernel), caches[name])
        log(f"# {name}: {seconds:.0f} s (compilation included)")
    for kind in args.kinds:
        cheap = dataclasses.replace(base, cascade=kind).cascade_kernel  # what the cascade uses
        scores[kind], seconds = pv_of(dataclasses.replace(base, kernel=cheap))
        log(f"# {kind}: {seconds:.0f} s (compilation included)")

    # batch selectors: full pick, other-seed pick, and the cascade replayed on the kept ids
    for selector in args.selectors:
        config = dataclasses.replace(base, selector=selector, shortlist=args.shortlist)
        for name, kernel in kernels.items():
            acq = Acquirer(model, params, dataclasses.replace(config, kernel=kernel), store=store)
            for budget in args.budgets:
                picks[(selector, name, budget, 1.0)] = acq.pick(
                    params, data, train, pool, budget, jax.random.key(0), cache=caches[name]).ids
        acq = Acquirer(model, params, config, store=store)
        for kind in args.kinds:
            for q in args.keep:
                for budget in args.budgets:
                    ids = top(scores[kind], pool, kept(q, n, budget))
                    picks[(selector, kind, budget, q)] = acq.pick(
                        params, data, train, ids, budget, jax.random.key(0), cache=caches["joint"]).ids
        log(f"# {selector} picks done")
    return scores, data.n_atoms[:n].copy(), picks


def tables(scores, n_atoms, picks, args, log):
    n = len(n_atoms)
    pool = np.arange(n)
    cheap_kinds = [k for k in scores if not k.startswith("joint")]
    rng = np.random.default_rng(0)
    rows = []
    log("\n## maxdiag: recall (= the first stage's coverage of the joint top-B), mean over draws\n")
    log("| first stage | pool m | B | q | kept / B | recall |")
    log("|---|---|---|---|---|---|")
    sizes = [m for m in args.pool_sizes if m <= n] or [n]
    for kind in ["joint_seed1"] + cheap_kinds:
        for m in sizes:
            draws = [pool] if m == n else [np.sort(rng.choice(n, m, replace=False)) for _ in range(args.draws)]
            for budget in args.budgets:
                # the other seed's own top-B (its pick): the noise ceiling of the recall
                for q in ([budget / m] if kind == "joint_seed1" else args.keep):
                    if budget > m:
                        continue
                    keep = budget if kind == "joint_seed1" else kept(q, m, budget)
                    vals = [coverage(scores["joint"], scores[kind], ids, keep, budget) for ids in draws]
                    ratio = keep / budget
                    rows.append(dict(selector="maxdiag", stage=kind, pool=m, budget=budget, keep=q,
                                     kept_over_budget=ratio, recall=float(np.mean(vals)),
                                     recall_min=float(np.min(vals)), draws=len(draws)))
                    spread = "" if len(vals) == 1 else f" (min {np.min(vals):.2f})"
                    log(f"| {kind} | {m} | {budget} | {q:.3g} | {ratio:.1f} | {np.mean(vals):.2f}{spread} |")
    log("\n## rank agreement with joint PV over the whole pool (Spearman)\n")
    log("| score | Spearman with joint PV |\n|---|---|")

    def rank(x):
        return np.argsort(np.argsort(x))
    for kind in ["joint_seed1"] + cheap_kinds + ["n_atoms"]:
        x = n_atoms if kind == "n_atoms" else scores[kind]
        rho = float(np.corrcoef(rank(x), rank(scores["joint"]))[0, 1])
        rows.append(dict(selector="spearman", stage=kind, spearman=rho))
        log(f"| {kind} | {rho:.3f} |")
    if picks:
        log(f"\n## batch selectors on the whole pool (m = {n}): recall = |cascade ∩ full| / B\n")
        log("| selector | first stage | B | q | kept / B | recall |")
        log("|---|---|---|---|---|---|")
        for (selector, kind, budget, q), ids in sorted(picks.items(), key=lambda kv: str(kv[0])):
            if kind == "joint":
                continue
            full = picks[(selector, "joint", budget, 1.0)]
            recall = len(np.intersect1d(ids, full)) / budget
            ratio = kept(q, n, budget) / budget
            rows.append(dict(selector=selector, stage=kind, pool=n, budget=budget, keep=q,
                             kept_over_budget=ratio, recall=recall))
            log(f"| {selector} | {kind if kind != 'joint_seed1' else 'joint, other seed'} | {budget} | "
                f"{q} | {ratio:.1f} | {recall:.2f} |")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4000, help="pool size")
    p.add_argument("--pool-seed", type=int, default=1, help="seed of the candidate pool")
    p.add_argument("--train", type=int, default=64)
    p.add_argument("--slice", type=int, default=2000, help="structures scored per pick (memory bound)")
    p.add_argument("--probes", type=int, default=4)
    p.add_argument("--sketch-dim", type=int, default=512)
    p.add_argument("--chunk-size", type=int, default=16)
    p.add_argument("--size-classes", type=int, default=6)
    p.add_argument("--shortlist", type=int, default=2000, help="shortlist of the batch selectors")
    p.add_argument("--kinds", nargs="+", default=["energy", "atom_embedding", "embedding", "last_layer"])
    p.add_argument("--selectors", nargs="*", default=["lcmd", "varred"])
    p.add_argument("--budgets", type=int, nargs="+", default=[100])
    p.add_argument("--keep", type=float, nargs="+", default=[0.1, 0.25])
    p.add_argument("--pool-sizes", type=int, nargs="+", default=[1000, 2000, 4000])
    p.add_argument("--draws", type=int, default=20, help="random sub-pools per pool size")
    p.add_argument("--out", type=Path, default=None, help="folder for scores.npz, tables.md, rows.json")
    p.add_argument("--from-scores", type=Path, default=None, help="recompute the tables from a saved run")
    args = p.parse_args(argv)
    out = args.out or args.from_scores
    if out is None:
        p.error("give --out (a new run) or --from-scores (a saved one)")
    out.mkdir(parents=True, exist_ok=True)
    lines = []

    def log(line=""):
        print(line, flush=True)
        lines.append(line)

    command = f"python experiments/cascade_recall.py {' '.join(sys.argv[1:] if argv is None else argv)}"
    picks = {}
    if args.from_scores:  # the featurising run's header, then this command
        lines.extend((args.from_scores / "featurise.md").read_text().splitlines())
        log(f"# tables recomputed by: {command}")
        saved = np.load(args.from_scores / "scores.npz")
        scores = {k[len("pv_"):]: saved[k] for k in saved.files if k.startswith("pv_")}
        n_atoms = saved["n_atoms"]
        meta = json.loads((args.from_scores / "picks.json").read_text())
        picks = {tuple(k.split("|")[:2]) + (int(k.split("|")[2]), float(k.split("|")[3])): np.asarray(v)
                 for k, v in meta.items()}
    else:
        log(f"# command: {command}")
        log(f"# load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        log(f"# pool {args.n} OC20-like (20-230 atoms, seed {args.pool_seed}), {args.train} training structures (seed 2); "
            f"joint probe-{args.probes}, d = {args.sketch_dim}, σ² fixed 0.01, median-trace scale")
        scores, n_atoms, picks = featurise(args, log)
        buffer = io.BytesIO()
        np.savez(buffer, n_atoms=n_atoms, **{f"pv_{k}": v for k, v in scores.items()})
        atomic_write_bytes(out / "scores.npz", buffer.getvalue())
        atomic_write_bytes(out / "featurise.md", ("\n".join(lines) + "\n").encode())
        atomic_write_bytes(out / "picks.json", json.dumps(
            {f"{s}|{k}|{b}|{q}": v.tolist() for (s, k, b, q), v in picks.items()}).encode())
    rows = tables(scores, n_atoms, picks, args, log)
    log(f"\n# load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    atomic_write_bytes(out / "rows.json", json.dumps(rows, indent=1).encode())
    atomic_write_bytes(out / "tables.md", ("\n".join(lines) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
