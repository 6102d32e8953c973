"""What does a user-given target set change in a kernel arm's picks? Replayed without fine-tuning.

Like ``diagnose_picks.py``: with ``featurize_with = "pretrained"`` a kernel arm's picks depend
only on the pretrained model, the pool and the labelled set, so its whole pick sequence can be
replayed from each seed's round-0 set (read from the point's saved state). The replay is the
loop's own acquisition step, :func:`ntkal.loop.select_round` on a context from
:func:`ntkal.loop.make_context` (same key, candidates, exclusions and evidence labels as the
run), without labelling or fine-tuning: once with the study's config (the replay must reproduce
the study's picks exactly) and once per ``--target-split``, with ``variance_target =
"target_set"`` and that split, *unlabelled*, as the target whose summed posterior variance the
picks reduce (what ``ntkal select --target`` and ``[data] target_set`` do). No test error is computed, so
a test split may serve as the target here; in a study, target one split and evaluate another.

For each seed and target it prints the share of picks from each part of the pool (the
``[data] pool`` entries, in order) and the largest force component of the picks (labels, eV/Å).

Usage::

    python experiments/diagnose_target.py experiments/configs/pool_shift_payoff.toml \\
        --point joint-varred-d512-k4-med-ev-pre-rp32 --seeds 0 1 2 3 4 --target-split val
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from diagnose_picks import replay_parser, saved_picks  # noqa: E402  (shared by the replays)


def main(argv=None) -> int:
    p = replay_parser(__doc__)
    p.add_argument("--target-split", action="append", default=[],
                   help="a split of the config's dataset used, unlabelled, as varred's target")
    args = p.parse_args(argv)

    import dataclasses

    from ntkal import datasets
    from ntkal.experiment.config import load_sweep, sweep_label
    from ntkal.experiment.run import load_data, load_initial
    from ntkal.loop import init_state, make_context, select_round
    from ntkal.models import load_pretrained

    points = {(sweep_label(c), c.loop.seed): c for c in load_sweep(args.config)}
    first = points[(args.point, args.seeds[0])]
    if first.loop.featurize_with != "pretrained" or first.loop.selector != "varred":
        raise SystemExit(f"{args.point}: needs pretrained features and the varred selector")
    data_cfg = first.data
    if data_cfg.from_files:
        raise SystemExit("target splits come from a generator dataset, not from files")
    model, params, _ = load_pretrained(first.checkpoint)
    pool_atoms, tests = load_data(data_cfg, progress=False)
    initial_atoms = load_initial(data_cfg, progress=False)
    targets = {"pool (the study's)": None}
    for split in args.target_split:  # a test split: the study's own subsample of it (max_test)
        targets[f"split {split!r}"] = list(tests[split] if split in tests else datasets.load_split(
            data_cfg.dataset, split, size=data_cfg.size, seed=data_cfg.seed, cache_dir=data_cfg.cache_dir,
            progress=False))
    parts, start = [], 0  # the pool's parts, in [data] pool order: (name, first id, end id)
    for spec in data_cfg.pool:
        split, _, count = spec.partition(":")
        n = int(count) if count else sum(1 for _ in datasets.load_split(
            data_cfg.dataset, split, size=data_cfg.size, seed=data_cfg.seed, cache_dir=data_cfg.cache_dir,
            progress=False))
        parts.append((split, start, start + n))
        start += n
    if start != len(pool_atoms):
        raise SystemExit(f"the pool parts {parts} do not add up to the pool's {len(pool_atoms)} structures")
    fmax = np.array([np.abs(a.get_forces()).max() for a in pool_atoms])

    rows = []
    head = " | ".join(f"from {name}" for name, _, _ in parts)
    print(f"# {args.config}, point {args.point}; pool {len(pool_atoms)} "
          f"({', '.join(f'{n} {b - a}' for n, a, b in parts)}); targets: "
          f"{', '.join(f'{k} ({len(pool_atoms) if v is None else len(v)})' for k, v in targets.items())}")
    print(f"| target | seed | {head} | median max abs F (eV/Å) |")
    print("|---|---|" + "---|" * len(parts) + "---|")

    def describe(name, seed, picks, seconds=None):
        picks = np.asarray(picks, np.int64)
        shares = {part: float(np.mean((picks >= a) & (picks < b))) for part, a, b in parts}
        row = {"target": name, "seed": seed, "picks": len(picks), "shares": shares,
               "median_fmax": float(np.median(fmax[picks])), "ids": [int(i) for i in picks]}
        rows.append(row)
        took = "" if seconds is None else f" ({seconds:.0f} s)"
        cells = " | ".join(f"{100 * v:.1f} %" for v in shares.values())
        print(f"| {name} | {seed} | {cells} | {row['median_fmax']:.2f}{took} |", flush=True)

    caches = {name: {} for name in targets}  # one feature cache per structure set (pool + initial + target)
    folder = ROOT / first.out / "points"
    for seed in args.seeds:
        base = points[(args.point, seed)].loop
        study, rand = saved_picks(folder, args.point, args.random, seed, base.initial)
        if rand is not None:
            describe(f"random arm ({args.random})", seed, rand)
        for name, target in targets.items():
            t = time.perf_counter()
            # the run's loop without replay (it only enters the fine-tunes, which are skipped)
            config = dataclasses.replace(base, replay=0) if target is None else dataclasses.replace(
                base, replay=0, variance_target="target_set")
            ctx = make_context(model, params, pool_atoms, {}, None, config, progress=False,
                               cache=caches[name], initial_atoms=initial_atoms, target_atoms=target or ())
            labelled = study[:base.initial].copy()
            state = init_state(ctx)._replace(round=1, labelled=labelled)
            for _ in range(base.rounds):
                picks = select_round(state, ctx, [pool_atoms[i] for i in state.labelled])
                state = state._replace(round=state.round + 1,
                                       labelled=np.concatenate([state.labelled, picks.ids]))
            picked = state.labelled[base.initial:]
            if target is None and not np.array_equal(picked, study[base.initial:base.initial + len(picked)]):
                same = len(np.intersect1d(picked, study[base.initial:]))
                raise SystemExit(f"seed {seed}: the replay does not reproduce the study's picks ({same} of "
                                 f"{len(picked)} shared)")
            describe(name, seed, picked, time.perf_counter() - t)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
    return 0

if __name__ == "__main__":
    sys.exit(main())
