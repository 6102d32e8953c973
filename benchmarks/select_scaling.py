"""End-to-end acquisition throughput: pools of 1k–200k mixed-size OC20-like candidates.

For each pool size n (candidates from :func:`ntkal.datasets.candidates.candidate_pool`, 20–230
atoms, log-uniform; a 64-structure training set from another seed), with the shipped
``oc20_like`` model and one :class:`ntkal.acquire.AcquisitionConfig`:

* ``graph s`` — validate + neighbour lists (vesin) for pool and training set, on ``--workers``
  processes;
* ``warm s`` / ``compiles`` — compilation: one chunk of every size class and a small pick
  (JAX backend compiles counted with ``jax.monitoring``);
* ``feat s`` — pure featurisation of every structure (the compiled feature map over the
  size-class chunks, prefetched; device work only, blocked once at the end);
* ``pick s`` — the whole pipeline after compilation (:meth:`ntkal.acquire.Acquirer.pick`:
  chunks, train features, scale, posterior, PV shortlist, selector);
* ``overhead`` = (pick − feat) / feat; ``ms/str`` = pick / n; ``pad`` = atom slots / real atoms.

The slope of log(pick s) against log(n) should be 1 (linear in the pool). ``--cascade N``
adds a table on an N-structure pool: full joint PV vs the cascade (``--cascade-kinds`` first
stages, keep q), recall of the top-B picks (maxdiag: pure PV top-B; lcmd: the batch), the
first stage's coverage of the full picks, the batch's summed joint PV relative to the full
pick's, the ratio of force-aware feature evaluations, and a noise-ceiling row (the full joint
pick with another sketch/probe seed). The first stage keeps ``max(ceil(q·N), B)`` structures:
with N = 1,000, B = 100 and q = 0.1 that is the batch itself, so the first stage must guess the
batch exactly; ``experiments/cascade_recall.py`` measures recall against q, B and the pool size
from stored scores (one featurisation per kernel). ``--startup`` times ``ntkal --help`` and a
cold and a warm (persistent compilation cache and traced programs) ``ntkal select`` on a
50-structure pool in subprocesses, and their fixed cost: the wall time minus the same pick's
time once compiled.

``--processes 1 2`` (issue 30) instead runs every pool size as 1, 2, ... cooperating processes
(``python -m ntkal.launch -n P --cores-per-process C``, C = ``--cores-per-process``, default 1),
each generating the whole candidate stream but keeping only its round-robin part (no process
holds the pool), and prints, per (n, P): the featurisation of each process's part, the pick's
wall time on process 0, the local streaming, the gather (shortlists merged) and the selection,
their share of the pick, and the speed-up against P = 1 of the same run.

Usage::

    python benchmarks/select_scaling.py --quick                    # 150 and 600, ≤ 3 classes, CPU
    python benchmarks/select_scaling.py --sizes 1000 4000 --cascade 4000 --startup
    python benchmarks/select_scaling.py --sizes --startup --probes 4   # start-up only
    python benchmarks/select_scaling.py --sizes 1000 4000 16000 200000 --chunk-size 64 \\
        --workers 16 --json out.json                                 # GPU (benchmarks/gpu/run.sh)
    python benchmarks/select_scaling.py --sizes 4000 16000 --probes 4 --processes 1 2 \\
        --json processes.json                                        # 1 vs 2 processes, 1 core each
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _compile_counter():
    import jax
    stats = {"count": 0, "seconds": 0.0}

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            stats["count"] += 1
            stats["seconds"] += duration

    jax.monitoring.register_event_duration_secs_listener(listener)
    return stats


def _block(x):
    import jax
    return jax.block_until_ready(x)


def run_size(n, args, model, params, config, store, counter, log):
    from ntkal.acquire import Acquirer, structure_set
    from ntkal.data.parallel import structures_parallel
    from ntkal.datasets.candidates import candidate_pool
    import jax

    t = time.perf_counter()
    pool_atoms = list(candidate_pool(n, seed=1))
    train_atoms = list(candidate_pool(args.train, seed=2))
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    cutoff, elements = model.config.cutoff, model.config.elements
    structures = structures_parallel(pool_atoms + train_atoms, cutoff, elements=elements,
                                     workers=args.workers)
    graph_s = time.perf_counter() - t
    del pool_atoms, train_atoms
    data = structure_set(structures, config.max_classes(len(structures)), config.max_padding)
    train_ids = n + np.arange(args.train)
    pool_ids = np.arange(n)
    acquirer = Acquirer(model, params, config, store=store)
    fmap = acquirer.feature_map

    c0, s0 = counter["count"], counter["seconds"]
    t = time.perf_counter()
    acquirer.warm_up(params, data)  # every size class, compiled in parallel threads
    small = pool_ids[: min(n, config.shortlist + args.budget)]
    acquirer.pick(params, data, train_ids, small, args.budget, jax.random.key(0))
    warm_s = time.perf_counter() - t
    compiles, compile_s = counter["count"] - c0, counter["seconds"] - s0

    # pure featurisation of every structure (or of a subset, scaled: --feat-subset)
    every = np.arange(len(data))
    subset = every if not args.feat_subset or args.feat_subset >= len(every) else \
        np.random.default_rng(0).choice(every, args.feat_subset, replace=False)
    t = time.perf_counter()
    last = None
    for chunk in acquirer.stream_features(fmap, params, data, subset):
        last = chunk.rows
    _block(last)
    feat_s = (time.perf_counter() - t) * len(every) / len(subset)
    log(f"# n={n}: graphs {graph_s:.1f} s, warm-up {warm_s:.1f} s, featurisation "
        f"{len(subset) / (feat_s * len(subset) / len(every)):.0f} str/s"
        + ("" if len(subset) == len(every) else f" (measured on {len(subset)}, scaled)"))

    c1 = counter["count"]
    t = time.perf_counter()
    picks = acquirer.pick(params, data, train_ids, pool_ids, args.budget, jax.random.key(0))
    pick_s = time.perf_counter() - t
    row = dict(n=n, mean_atoms=float(data.n_atoms[:n].mean()), classes=data.plan.num_classes,
               budgets=[list(b) for b in data.plan.budgets], padding=data.padding_ratio(config.chunk_size),
               gen_s=gen_s, graph_s=graph_s, warm_s=warm_s, compiles=compiles, compile_s=compile_s,
               feat_s=feat_s, pick_s=pick_s, overhead=(pick_s - feat_s) / feat_s,
               ms_per_structure=1e3 * pick_s / n, structures_per_s=(n + args.train) / pick_s,
               compiles_in_pick=counter["count"] - c1, stats=picks.stats)
    log(f"| {n} | {row['mean_atoms']:.0f} | {row['classes']} | {row['padding']:.3f} | {graph_s:.1f} | "
        f"{warm_s:.1f} | {compiles} ({compile_s:.0f} s) | {feat_s:.1f} | {pick_s:.1f} | "
        f"{100 * row['overhead']:+.1f} % | {row['ms_per_structure']:.2f} | {row['structures_per_s']:.0f} |")
    return row, data, acquirer


def run_cascade(data, n, args, model, params, config, store, log):
    """Full joint PV vs the cascade on an n-structure pool, per selector, first stage and q.

    ``recall`` = |cascade picks ∩ full picks| / B; ``coverage`` = the fraction of the full picks
    that the first stage keeps (recall's upper bound: the rest is the selector deciding
    differently on the smaller candidate set); ``batch PV / full's`` = the summed joint PV of
    the picks (each under the training posterior; same features, scale and σ² in both arms)
    over the full pick's: the uncertainty the batch covers, whatever structures carry it. The
    ``joint, other seed`` row is the noise ceiling: the full joint pick with another sketch and
    probe seed, against the first (its batch PV comes from its own features).
    """
    from ntkal.acquire import Acquirer
    import jax
    train_ids = n + np.arange(args.train)
    pool_ids = np.arange(n)
    rows = []

    def timed_pick(acq):
        acq.pick(params, data, train_ids, pool_ids[:300], args.budget, jax.random.key(0))  # warm
        t = time.perf_counter()
        got = acq.pick(params, data, train_ids, pool_ids, args.budget, jax.random.key(0))
        return got, time.perf_counter() - t

    def report(selector, kind, q, got, s, full, full_s, coverage):
        recall = len(set(got.ids.tolist()) & set(full.ids.tolist())) / args.budget
        ratio = full.stats["n_features"] / max(got.stats["n_features"], 1)
        # Σ joint PV of the batch (each pick's PV under the same training posterior, before the
        # batch's own updates) relative to the full pick's: how much uncertainty the batch covers
        captured = float(np.sum(got.pv) / np.sum(full.pv))
        rows.append(dict(selector=selector, cascade=kind, keep=q, recall=recall, coverage=coverage,
                         pv_captured=captured, feature_ratio=ratio, full_s=full_s, cascade_s=s,
                         n_features=got.stats["n_features"], n_full=full.stats["n_features"]))
        log(f"| {selector} | {kind} | {q} | {recall:.2f} | {coverage:.2f} | {captured:.3f} | {ratio:.1f}× | "
            f"{full_s:.1f} | {s:.1f} |")

    for selector in args.cascade_selectors:
        base = dataclasses.replace(config, selector=selector)
        full, full_s = timed_pick(Acquirer(model, params, base, store=store))
        other_kernel = dataclasses.replace(base.kernel, seed=base.kernel.seed + 1)
        other, other_s = timed_pick(Acquirer(model, params, dataclasses.replace(base, kernel=other_kernel),
                                             store=store))
        report(selector, f"{base.kernel.kind}, other seed", 1.0, other, other_s, full, full_s, 1.0)
        for kind in args.cascade_kinds:
            for q in args.cascade_keep:
                acq = Acquirer(model, params, dataclasses.replace(base, cascade=kind, cascade_keep=q),
                               store=store)
                got, s = timed_pick(acq)
                kept = acq._cascade(params, data, train_ids, pool_ids, args.budget, None, None, {}, False)
                coverage = len(set(kept.tolist()) & set(full.ids.tolist())) / args.budget
                report(selector, kind, q, got, s, full, full_s, coverage)
    return rows


def run_startup(args, log):
    """Cold and warm `ntkal select` in subprocesses, and their fixed cost.

    cold: empty compilation cache; warm: the same cache (compiled programs and traced
    programs, :mod:`ntkal.cache.programs`). The fixed cost is the wall time minus the time of
    the same pick with everything compiled (the same acquirer picking a second time in this
    process: featurisation, posterior and selection compute only).
    """
    import ase.io
    import jax
    from ntkal.datasets.candidates import candidate_pool
    from ntkal.acquire import Acquirer, structure_set
    from ntkal.models import load_pretrained
    from ntkal.select import read_structures
    from ntkal.cli.select import add_select_arguments, config_from_args
    exe = [sys.executable, "-m", "ntkal.cli"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t = time.perf_counter()
    subprocess.run(exe + ["--help"], env=env, check=True, capture_output=True)
    help_s = time.perf_counter() - t
    out = {"help_s": help_s}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ase.io.write(tmp / "pool.extxyz", list(candidate_pool(50, seed=3, max_atoms=80)))
        ase.io.write(tmp / "train.extxyz", list(candidate_pool(16, seed=4, max_atoms=80)))
        env["NTKAL_CACHE_DIR"] = str(tmp / "cache")
        argv = ["select", "--model", "oc20_like", "--pool", str(tmp / "pool.extxyz"), "--train",
                str(tmp / "train.extxyz"), "--budget", "5", "--out", str(tmp / "picked.extxyz"),
                "--kernel", args.kernel, "--num-probes", str(args.probes), "--sketch-dim",
                str(args.sketch_dim), "--selector", args.selector, "--no-progress"]
        for name in ("cold", "warm"):
            t = time.perf_counter()
            subprocess.run(exe + argv, env=env, check=True, capture_output=True)
            out[f"{name}_s"] = time.perf_counter() - t
            summary = json.loads((tmp / "picked.summary.json").read_text())
            out[f"{name}_timings"] = summary["timings"]
            out[f"{name}_programs"] = summary.get("programs")
        # warm compile cache but tracing every program again (what a warm run did before the
        # program cache): select_from_files without program_cache, in a subprocess
        traced = ("import sys, argparse; from ntkal.cache import enable_compile_cache; "
                  "enable_compile_cache(); from ntkal.select import select_from_files; "
                  "from ntkal.cli.select import add_select_arguments, config_from_args; "
                  "a = add_select_arguments(argparse.ArgumentParser()).parse_args(sys.argv[1:]); "
                  "select_from_files(a.model, a.pool, a.train, a.budget, out_path=a.out, "
                  "config=config_from_args(a), progress=False)")
        for _ in range(2):  # the first run compiles the traced (not exported) programs into the cache
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", traced] + argv[1:], env=env, check=True, capture_output=True)
            out["warm_traced_s"] = time.perf_counter() - t
        # the same pick with everything compiled, in this process
        config = config_from_args(add_select_arguments(argparse.ArgumentParser()).parse_args(argv[1:]))
        model, params, _ = load_pretrained("oc20_like")
        pool = read_structures(tmp / "pool.extxyz", model.config.cutoff, None, progress=False).structures
        train, energies, _ = read_structures(tmp / "train.extxyz", model.config.cutoff, model.config.elements,
                                          progress=False)
        data = structure_set(pool + train, config.max_classes(len(pool) + len(train)), config.max_padding)
        acquirer = Acquirer(model, params, config)
        picks = []
        for _ in range(2):
            t = time.perf_counter()
            picks.append(acquirer.pick(params, data, len(pool) + np.arange(len(train)), np.arange(len(pool)),
                                       5, jax.random.PRNGKey(config.seed), train_energies=energies).ids)
            out["compiled_pick_s"] = time.perf_counter() - t
        if list(picks[-1]) != summary["ids"]:
            raise RuntimeError(f"in-process picks {list(picks[-1])} differ from the CLI's {summary['ids']}")
        bad = subprocess.run(exe + ["select", "--model", "oc20_like", "--pool", str(tmp / "pool.extxyz"),
                                    "--train", str(tmp / "train.extxyz"), "--budget", "5", "--out",
                                    str(tmp / "no" / "such" / "dir" / "x.png")], env=env, capture_output=True)
        t = time.perf_counter()
        subprocess.run(exe + ["select", "--model", "oc20_like", "--pool", str(tmp / "pool.extxyz"),
                              "--train", str(tmp / "train.extxyz"), "--budget", "5", "--out",
                              str(tmp / "x.png")], env=env, capture_output=True)
        out["bad_out_s"] = time.perf_counter() - t
        out["bad_out_rc"] = bad.returncode
    pick_s = out["compiled_pick_s"]
    log(f"| `ntkal --help` | {help_s:.2f} s |")
    log(f"| cold `ntkal select` (50 + 16 structures, empty compile cache) | {out['cold_s']:.1f} s |")
    log(f"| warm `ntkal select` (same, persistent cache; {out['warm_programs']}) | {out['warm_s']:.1f} s |")
    log(f"| warm, but tracing every program (no program cache) | {out['warm_traced_s']:.1f} s |")
    log(f"| the same pick, compiled, in one process (featurisation + PV + selection) | {pick_s:.1f} s |")
    log(f"| fixed cost cold / warm / warm tracing (wall − compiled pick) | {out['cold_s'] - pick_s:.1f} s / "
        f"{out['warm_s'] - pick_s:.1f} s / {out['warm_traced_s'] - pick_s:.1f} s |")
    log(f"| bad `--out` (x.png) rejected | {out['bad_out_s']:.2f} s, exit {bad.returncode} |")
    return out


def run_process_part(args) -> int:
    """One process of a ``--processes`` run (started by :mod:`ntkal.launch`): featurise and
    pick this process's part of the pool; process 0 writes every process's times to
    ``--part-json``."""
    from ntkal.cluster import ClusterConfig, initialize, split_of
    from ntkal.cache import enable_compile_cache
    enable_compile_cache()  # the runs of one (n, P) table share compiled programs: warm-up is not timed anyway
    col = initialize(ClusterConfig.from_env())
    import jax
    from ntkal.acquire import Acquirer, structure_set
    from ntkal.data import atoms_to_structure
    from ntkal.datasets.candidates import candidate_pool
    from ntkal.models import atomic_write_bytes, load_pretrained

    (n,) = args.sizes
    model, params, _ = load_pretrained("oc20_like")
    config = _config(args)
    cutoff, elements = model.config.cutoff, model.config.elements
    t = time.perf_counter()
    mine = set(split_of(n, col.index, col.count))
    part = [atoms_to_structure(a, cutoff, elements=elements)
            for k, a in enumerate(candidate_pool(n, seed=1)) if k in mine]
    train = [atoms_to_structure(a, cutoff, elements=elements) for a in candidate_pool(args.train, seed=2)]
    graph_s = time.perf_counter() - t
    global_ids = np.concatenate([np.asarray(sorted(mine), np.int64), np.full(len(train), -1)])
    data = structure_set(part + train, config.max_classes(len(part) + len(train)), config.max_padding)
    acquirer = Acquirer(model, params, config)
    t = time.perf_counter()
    acquirer.warm_up(params, data)
    warm_s = time.perf_counter() - t
    feat_s = float("nan")
    if not args.skip_feat:  # pure featurisation of this process's part (the pick featurises it again)
        t = time.perf_counter()
        last = None
        for chunk in acquirer.stream_features(acquirer.feature_map, params, data, np.arange(len(part))):
            last = chunk.rows
        _block(last)
        feat_s = time.perf_counter() - t
    train_ids = len(part) + np.arange(len(train))
    col.barrier("pick")  # every process starts the pick together
    t = time.perf_counter()
    picks = acquirer.pick(params, data, train_ids, np.arange(len(part)), args.budget, jax.random.key(0),
                          collectives=col, global_ids=global_ids)
    pick_s = time.perf_counter() - t
    st = picks.stats
    mine_row = np.array([len(part), graph_s, warm_s, feat_s, pick_s, st["train_features_s"],
                         st.get("shortlist_s", 0.0), st.get("gather_s", 0.0), st.get("select_s", 0.0)])
    rows = col.concat(mine_row[None])
    if col.is_writer:
        keys = ["n_part", "graph_s", "warm_s", "feat_s", "pick_s", "train_features_s", "shortlist_s",
                "gather_s", "select_s"]
        out = {"n": n, "processes": col.count, "ids": picks.ids.tolist(),
               "per_process": [dict(zip(keys, map(float, r))) for r in rows]}
        atomic_write_bytes(Path(args.part_json), json.dumps(out, indent=1).encode())
    return 0


def run_processes(args, log) -> list[dict]:
    """Every (size, process count) of ``--processes``, each launched as its own job."""
    rows = []
    log("| n | processes | cores each | part | feat s (max over processes) | pick s | stream s | gather s | "
        "select s | gather + select | speed-up (pick) | same picks as P=1 |")
    log("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        base = None
        for processes in args.processes:
            with tempfile.TemporaryDirectory() as tmp:
                part_json = Path(tmp) / "part.json"
                command = [sys.executable, "-m", "ntkal.launch", "-n", str(processes), "--cores-per-process",
                           str(args.cores_per_process), "--", sys.executable, str(Path(__file__).resolve()),
                           "--sizes", str(n), "--part-json", str(part_json)] + _forwarded(args)
                done = subprocess.run(command, cwd=ROOT)
                if done.returncode != 0:
                    raise SystemExit(f"{processes} processes at n = {n} failed (exit {done.returncode})")
                got = json.loads(part_json.read_text())
            pp = got["per_process"]
            p0 = pp[0]
            row = dict(n=n, processes=processes, cores_per_process=args.cores_per_process,
                       feat_s=max(r["feat_s"] for r in pp), pick_s=p0["pick_s"],
                       shortlist_s=max(r["shortlist_s"] for r in pp), gather_s=p0["gather_s"],
                       select_s=p0["select_s"], per_process=pp, ids=got["ids"])
            row["gather_select_share"] = (row["gather_s"] + row["select_s"]) / row["pick_s"]
            base = row if base is None else base
            row["speedup"] = base["pick_s"] / row["pick_s"]
            row["same_picks"] = row["ids"] == base["ids"]
            rows.append(row)
            log(f"| {n} | {processes} | {args.cores_per_process} | {min(r['n_part'] for r in pp):.0f}–"
                f"{max(r['n_part'] for r in pp):.0f} | {row['feat_s']:.1f} | {row['pick_s']:.1f} | "
                f"{row['shortlist_s']:.1f} | {row['gather_s']:.2f} | {row['select_s']:.2f} | "
                f"{100 * row['gather_select_share']:.1f} % | {row['speedup']:.2f}× | {row['same_picks']} |")
    return rows


def _forwarded(args) -> list[str]:
    """The acquisition settings of this run, for its worker processes."""
    return (["--skip-feat"] if args.skip_feat else []) + ["--train", str(args.train), "--budget", str(args.budget), "--kernel", args.kernel,
            "--probes", str(args.probes), "--sketch-dim", str(args.sketch_dim), "--selector", args.selector,
            "--shortlist", str(args.shortlist), "--chunk-size", str(args.chunk_size),
            "--size-classes", str(args.size_classes)]


def _config(args):
    from ntkal.acquire import AcquisitionConfig
    from ntkal.kernels import KernelConfig
    return AcquisitionConfig(
        kernel=KernelConfig(kind=args.kernel, sketch_dim=args.sketch_dim, num_probes=args.probes),
        selector=args.selector, shortlist=args.shortlist, noise_rule="fixed",
        chunk_size=args.chunk_size, size_classes=args.size_classes)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="*", default=[1000, 4000],
                   help="pool sizes (none: only --startup)")
    p.add_argument("--quick", action="store_true",
                   help="sizes 150 and 600, probes 4, d 256, <= 3 size classes, shortlist 200, budget 20")
    p.add_argument("--train", type=int, default=64)
    p.add_argument("--budget", type=int, default=100)
    p.add_argument("--kernel", default="joint")
    p.add_argument("--probes", type=int, default=8)
    p.add_argument("--sketch-dim", type=int, default=512)
    p.add_argument("--selector", default="lcmd")
    p.add_argument("--shortlist", type=int, default=2000)
    p.add_argument("--chunk-size", type=int, default=16)
    p.add_argument("--size-classes", type=int, default=6)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--cascade", type=int, default=0, help="pool size of the cascade table (0 = skip)")
    p.add_argument("--cascade-kinds", nargs="+", default=["energy"])
    p.add_argument("--cascade-keep", type=float, nargs="+", default=[0.1])
    p.add_argument("--cascade-selectors", nargs="+", default=["maxdiag", "lcmd", "varred"])
    p.add_argument("--startup", action="store_true")
    p.add_argument("--feat-subset", type=int, default=0,
                   help="measure pure featurisation on this many random structures and scale (0 = all)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--processes", type=int, nargs="+", default=None,
                   help="run every size as this many cooperating processes (e.g. 1 2), see the docstring")
    p.add_argument("--cores-per-process", type=int, default=1)
    p.add_argument("--skip-feat", action="store_true",
                   help="--processes: skip the pure-featurisation pass (halves the run; feat s is then empty)")
    p.add_argument("--part-json", type=Path, default=None, help=argparse.SUPPRESS)  # a --processes worker
    args = p.parse_args(argv)
    if args.part_json is not None:
        return run_process_part(args)
    if args.quick:
        args.sizes, args.probes, args.sketch_dim, args.budget, args.shortlist = [150, 600], 4, 256, 20, 200
        args.size_classes = 3

    import jax
    from ntkal.models import load_pretrained

    counter = _compile_counter()
    lines = []

    def log(line=""):
        print(line, flush=True)
        lines.append(line)

    model, params, _ = load_pretrained("oc20_like")
    config = _config(args)
    store: dict = {}
    log(f"# {platform.node()}: {jax.devices()}, jax {jax.__version__}, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    log(f"# command: python benchmarks/select_scaling.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    log(f"# kernel {args.kernel} probes {args.probes} d {args.sketch_dim}, selector {args.selector}, "
        f"shortlist {args.shortlist}, budget {args.budget}, chunk {args.chunk_size}, "
        f"≤ {args.size_classes} size classes, {args.train} training structures")
    log()
    if args.processes:
        result = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                  "processes": run_processes(args, log)}
        log(f"\n# load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        result["table"] = lines
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return 0
    log("| n | mean atoms | classes | pad | graph s | warm s | compiles | feat s | pick s | overhead | ms/str | str/s |")
    log("|---|---|---|---|---|---|---|---|---|---|---|---|")
    result = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "device": str(jax.devices()), "jax": jax.__version__, "sizes": []}
    cascade_data = None
    for n in args.sizes:
        row, data, _ = run_size(n, args, model, params, config, store, counter, log)
        result["sizes"].append(row)
        if args.cascade == n:
            cascade_data = data
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
    if len(args.sizes) > 1:
        n = np.log([r["n"] for r in result["sizes"]])
        t = np.log([r["pick_s"] for r in result["sizes"]])
        slope = float(np.polyfit(n, t, 1)[0])
        result["slope"] = slope
        log(f"\nlog-log slope of pick time vs n: {slope:.3f}")
    if args.cascade:
        if cascade_data is None:
            raise SystemExit(f"--cascade {args.cascade} must be one of --sizes")
        log("\n| selector | first stage | keep q | top-B recall | coverage | batch PV / full's | fewer "
            "force-aware features | full s | cascade s |")
        log("|---|---|---|---|---|---|---|---|---|")
        result["cascade"] = run_cascade(cascade_data, args.cascade, args, model, params, config, store, log)
    if args.startup:
        log("\n| start-up | seconds |\n|---|---|")
        result["startup"] = run_startup(args, log)
    log(f"\n# load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    result["table"] = lines
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
