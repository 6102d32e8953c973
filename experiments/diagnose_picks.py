"""Which frames would a kernel arm pick under other acquisition settings? Replayed without fine-tuning.

With ``featurize_with = "pretrained"`` a kernel arm's picks depend only on the pretrained model,
the pool and the labelled set (the evidence σ² uses the pretrained model's residuals), never on
the fine-tunes. So a study's whole pick sequence can be replayed offline from its round-0 set
(read from the point's saved state) under other acquisition settings, in minutes instead of a
study's hour. For each seed and setting this prints the largest force component of the picked
frames (labels, eV/Å) — the kernel arms' picks are high-force frames, which costs mean error —
and the median ratio of the picks' posterior variance (as the shortlist scored them) to σ², and
checks that the replay with the point's own settings reproduces the study's picks exactly.

Usage::

    python experiments/diagnose_picks.py experiments/configs/oc20_payoff_large_huber.toml \\
        --point joint-varred-d512-k4-med-ev-pre-rp32 --seeds 0 1 2 3 4 \\
        --variant target_weighting=per_structure --variant feature_norm=per_structure
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from diagnose_finetune import parse_variant  # noqa: E402  ("k=v[,k=v]" overrides)


def replay_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments every pick replay takes: the study config, the arm, the random arm, seeds, JSON."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path)
    p.add_argument("--point", required=True, help="a kernel arm's label (its point folder without -seedN)")
    p.add_argument("--random", default="random-rp32", help="the random arm's label (its picks as a reference)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--json", type=Path)
    return p


def saved_picks(folder: Path, point: str, random: str, seed: int, initial: int):
    """``(labelled, random_picks)``: the arm's labelled ids (round 0 first, in pick order) and the
    random arm's picks after round 0 (``None`` if it has no saved state), from the points' states."""
    from ntkal.loop import load_state
    loaded = load_state(folder / f"{point}-seed{seed}")
    if loaded is None:
        raise SystemExit(f"no saved state for {point} seed {seed} in {folder}")
    rand = load_state(folder / f"{random}-seed{seed}")
    return (np.asarray(loaded[0].labelled, np.int64),
            None if rand is None else np.asarray(rand[0].labelled, np.int64)[initial:])


def main(argv=None) -> int:
    p = replay_parser(__doc__)
    p.add_argument("--variant", action="append", default=[], help="LoopConfig overrides, k=v[,k=v]")
    args = p.parse_args(argv)

    import jax
    from ntkal.data import labels_of
    from ntkal.experiment.config import load_sweep, sweep_label
    from ntkal.experiment.run import load_data, load_initial
    from ntkal.loop import _kernel_picks, init_state, make_context
    from ntkal.models import load_pretrained

    points = {(sweep_label(c), c.loop.seed): c for c in load_sweep(args.config)}
    first = points[(args.point, args.seeds[0])]
    if first.loop.featurize_with != "pretrained":
        raise SystemExit(f"{args.point} featurises with the fine-tuned model: its picks cannot be replayed")
    model, pretrained, _ = load_pretrained(first.checkpoint)
    pool, _ = load_data(first.data, progress=False)
    initial_atoms = load_initial(first.data, progress=False)
    fmax = np.array([np.abs(a.get_forces()).max() for a in pool])
    folder = ROOT / first.out / "points"
    cache: dict = {}  # pool features: the same pretrained model and pool for every seed and setting
    settings = [("the point's own", {})] + [(v, parse_variant(v)) for v in args.variant]
    rows = []

    def describe(name, seed, picks, seconds=None, snr=None):
        f = fmax[np.asarray(picks, np.int64)]
        row = {"setting": name, "seed": seed, "picks": len(f), "median": float(np.median(f)),
               "p90": float(np.quantile(f, 0.9)), "max": float(f.max()), "above5": float(np.mean(f > 5.0)),
               "pv_over_noise_median": None if snr is None else float(np.median(snr))}
        rows.append({**row, "ids": [int(i) for i in picks]})
        took = "" if seconds is None else f" ({seconds:.0f} s)"
        ratio = "" if snr is None else f"{np.median(snr):.3g}"
        print(f"| {name} | {seed} | {row['picks']} | {row['median']:.2f} | {row['p90']:.2f} | {row['max']:.1f} | "
              f"{100 * row['above5']:.1f} % | {ratio}{took} |", flush=True)

    print(f"# {args.config}, point {args.point}; pool {len(pool)} frames: max |F| median {np.median(fmax):.2f}, "
          f"90th percentile {np.quantile(fmax, 0.9):.2f}, {100 * np.mean(fmax > 5):.1f} % above 5 eV/Å")
    print("| setting | seed | picks | median max abs F (eV/Å) | 90th pct | max | above 5 eV/Å | "
          "median PV/σ² of the picks |")
    print("|---|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        base = points[(args.point, seed)].loop
        study, randomised = saved_picks(folder, args.point, args.random, seed, base.initial)
        round0 = study[:base.initial]
        if randomised is not None:
            describe(f"random arm ({args.random})", seed, randomised)
        for name, overrides in settings:
            t = time.perf_counter()
            loop = dataclasses.replace(base, replay=0, **overrides)  # replay only enters the fine-tunes
            ctx = make_context(model, pretrained, pool, {}, None, loop, progress=False, cache=cache,
                               initial_atoms=initial_atoms)
            state = init_state(ctx)
            labelled, snr = round0.copy(), []
            initial_energies = [labels_of(a)[0] for a in ctx.initial_atoms]
            for r in range(1, loop.rounds + 1):
                unlabelled = np.setdiff1d(np.arange(len(pool)), labelled)
                energies = ([pool[i].get_potential_energy() for i in labelled] + initial_energies
                            if loop.uses_evidence else None)
                ids, _, pv, noise_var = _kernel_picks(state._replace(labelled=labelled), ctx, unlabelled,
                                                      jax.random.key(r), loop.batch, energies)
                snr.extend(np.asarray(pv, np.float64) / noise_var)  # ≫ 1: σ² hardly enters the gains
                labelled = np.concatenate([labelled, np.asarray(ids, np.int64)])
            picks = labelled[base.initial:]
            if not overrides and not np.array_equal(picks, study[base.initial:base.initial + len(picks)]):
                raise SystemExit(f"seed {seed}: the replay does not reproduce the study's picks")
            describe(name, seed, picks, time.perf_counter() - t, snr)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
