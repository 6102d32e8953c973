"""Score study: does posterior variance measure novelty, and which normalisation/σ²/d makes it so?

    python experiments/score_study.py --out experiments/results/score_study

Set-up (OC20-like, the pretrained ``oc20_like`` model): a pool of ``--pool`` target-distribution
train frames, a labelled set of ``--labelled`` other frames, and ``--copies`` exact copies of
labelled frames hidden in the pool. The model is fine-tuned on the labelled set (the loop's
round-0 recipe). Joint features (energy row + ``--probes`` force-probe rows, unit weights) are
computed once per (parameters, sketch width d); every normalisation × σ² × reduction × kernel
block is then a cheap post-processing of the same rows. For each combination we report

* the copies' ranks among the pool by PV (0 = lowest; a copy of a labelled frame should be ~0),
* Spearman ρ between PV and the realised per-structure force MAE of the fine-tuned model
  (what selection should find), and between PV and the frame's max |F| label (the norm effect),
* the mean realised force MAE of the top-16 PV frames relative to the pool mean.

Writes ``score_study.json`` and ``score_study.md`` (the table) to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np


def spearman(a, b) -> float:
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def ml_noise_ratio(phi: np.ndarray, y: np.ndarray, grid=np.logspace(-9, 1, 101)) -> float:
    """σ²/s maximising the evidence of y = Φw + ε, w ~ N(0, s I), ε ~ N(0, σ² I) (s profiled out).

    Args:
      phi: (n, d) feature rows (already normalised); y: (n,) targets in the same scaling.
    """
    mu, u = np.linalg.eigh(phi @ phi.T)
    mu = np.maximum(mu, 0.0)
    proj = (u.T @ y) ** 2
    n = len(y)
    best, arg = -np.inf, grid[0]
    for lam in grid:
        s_hat = float(np.sum(proj / (mu + lam))) / n
        ll = -0.5 * n * np.log(s_hat) - 0.5 * float(np.sum(np.log(mu + lam)))
        if ll > best:
            best, arg = ll, lam
    return float(arg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="experiments/results/score_study")
    parser.add_argument("--size", default="default")
    parser.add_argument("--pool", type=int, default=600)
    parser.add_argument("--labelled", type=int, default=64)
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--probes", type=int, default=4)
    parser.add_argument("--dims", default="128,512")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import jax
    from ntkal import datasets
    from ntkal.posterior import (ScoreConfig, apply_feature_scale, chunk_from_arrays,
                                   fit_feature_scale, fit_posterior, posterior_arrays, pv_scores)
    from ntkal.data import batch_structures, bucket, structures_from_atoms
    from ntkal.kernels import KernelConfig, make_feature_map
    from ntkal.kernels.split import GraphSizes
    from ntkal.models import energy_and_forces_fn, load_pretrained
    from ntkal.train import TrainConfig, fit

    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, pretrained, _ = load_pretrained("oc20_like")
    frames = [a for a in datasets.load_split("oc20_like", "train", size=args.size, seed=0,
                                              cache_dir="data_cache", progress=False)
              if not datasets.oc20_is_source(a)]
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(frames))
    lab_ids = order[:args.labelled]
    pool_ids = order[args.labelled:args.labelled + args.pool]
    copy_ids = lab_ids[rng.choice(args.labelled, args.copies, replace=False)]
    cutoff, elements = model.config.cutoff, model.config.elements
    to_s = lambda ids: [s for _, s in structures_from_atoms([frames[i] for i in ids], cutoff,
                                                          elements=elements, require_labels=True)]
    labelled = to_s(lab_ids)
    pool = to_s(np.concatenate([pool_ids, copy_ids]))
    is_copy = np.zeros(len(pool), bool)
    is_copy[-args.copies:] = True
    print(f"pool {len(pool)} (incl. {args.copies} copies), labelled {len(labelled)}", flush=True)

    train_cfg = TrainConfig(max_epochs=args.epochs, batch_size=8, learning_rate=2e-3, patience=1000,
                            seed=args.seed)
    finetuned = fit(model, pretrained, labelled, None, train_cfg, progress=False).params
    print(f"fine-tuned in {time.perf_counter() - t0:.0f} s", flush=True)

    sizes = GraphSizes(bucket(max(s.n_atoms for s in pool + labelled)),
                       bucket(max(s.n_edges for s in pool + labelled)))
    chunk = 16
    n_node, n_edge = bucket(chunk * sizes.max_atoms + 1), bucket(chunk * sizes.max_edges)

    def graphs(structs):
        for k in range(0, len(structs), chunk):
            part = structs[k:k + chunk]
            yield len(part), batch_structures(part, n_graph=chunk + 1, n_node=n_node, n_edge=n_edge)

    # realised per-structure force MAE of the fine-tuned model, and max |F| of the label
    ef = jax.jit(energy_and_forces_fn(model.energy))
    err, fmax = [], []
    for n, g in graphs(pool):
        _, f = ef(finetuned, g)
        f = np.asarray(f)
        start = 0
        for s in pool[len(err):len(err) + n]:
            d = np.abs(f[start:start + s.n_atoms] - s.forces)[s.free]
            err.append(float(d.mean()))
            fmax.append(float(np.linalg.norm(s.forces[s.free], axis=1).max()))
            start += s.n_atoms
    err, fmax = np.array(err), np.array(fmax)
    print(f"realised F-MAE on pool: mean {err.mean():.4f}, copies {err[is_copy].mean():.4f}", flush=True)

    def features(params, d):
        kcfg = KernelConfig(kind="joint", sketch_dim=d, num_probes=args.probes, w_energy=1.0, w_force=1.0)
        fmap = make_feature_map(model, kcfg, pretrained)
        out_rows, out_mask = [], []
        for structs in (labelled, pool):
            rows, masks = [], []
            for n, g in graphs(structs):
                r, m = fmap.apply(params, g, sizes=sizes)
                rows.append(np.asarray(r)[:n])
                masks.append(np.asarray(m)[:n])
            out_rows.append(np.concatenate(rows))
            out_mask.append(np.concatenate(masks))
        return out_rows, out_mask

    feats = {}
    for d in [int(x) for x in args.dims.split(",")]:
        t = time.perf_counter()
        feats[("pretrained", d)] = features(pretrained, d)
        print(f"features pretrained d={d}: {time.perf_counter() - t:.0f} s", flush=True)
    d0 = int(args.dims.split(",")[0])
    t = time.perf_counter()
    feats[("finetuned", d0)] = features(finetuned, d0)
    print(f"features finetuned d={d0}: {time.perf_counter() - t:.0f} s", flush=True)

    energy_fn = jax.jit(model.energy)

    def residuals(params):
        out = []
        for n, g in graphs(labelled):
            e = np.asarray(energy_fn(params, g))[:n]
            out.extend(s.energy - ei for s, ei in zip(labelled[len(out):len(out) + n], e))
        return np.array(out)

    res = {"pretrained": residuals(pretrained), "finetuned": residuals(finetuned)}
    ml = {}
    np.savez_compressed(out / "features.npz", err=err, fmax=fmax, is_copy=is_copy,
                        **{f"{w}_{d}_{part}_{k}": arr for (w, d), pair in feats.items()
                           for k, arrs in zip(("rows", "mask"), pair)
                           for part, arr in zip(("train", "pool"), arrs)},
                        **{f"residual_{k}": v for k, v in res.items()})
    records = []
    blocks = {"energy": slice(0, 1), "force": slice(1, None), "joint": slice(0, None)}
    for (which, d), ((t_rows, p_rows), (t_mask, p_mask)) in feats.items():
        for block, sl in blocks.items():
            tr = chunk_from_arrays(t_rows[:, sl], t_mask[:, sl])
            po = chunk_from_arrays(p_rows[:, sl], p_mask[:, sl])
            r = tr.rows.shape[1]
            groups = tuple([0] + [1] * (r - 1)) if block == "joint" else None
            for norm in ("mean_trace", "median_trace", "per_structure"):
                weights = None
                if block == "joint" and norm != "per_structure":  # trace-equalising w_F
                    sq = np.sum(np.asarray(tr.rows) ** 2, -1)
                    w_f = float(np.sqrt(sq[:, 0].sum() / sq[:, 1:].sum()))
                    weights = (1.0, w_f)
                elif block == "joint":
                    weights = (1.0, 1.0)
                fs = fit_feature_scale(tr, norm, row_groups=groups, group_weights=weights)
                tr_s, po_s = apply_feature_scale(tr, fs), apply_feature_scale(po, fs)
                if block == "energy":  # evidence-optimal σ² for the energy block, same scaling
                    phi_raw = np.asarray(tr.rows)[:, 0]
                    phi_s = np.asarray(tr_s.rows)[:, 0]
                    factor = np.linalg.norm(phi_s, axis=1) / np.maximum(np.linalg.norm(phi_raw, axis=1), 1e-30)
                    ml[f"{which}-d{d}-{norm}"] = ml_noise_ratio(phi_s, res[which] * factor)
                prior = np.sum(np.asarray(po_s.rows) ** 2, axis=(1, 2))
                for s2 in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0):
                    post = fit_posterior([tr_s], d, noise_var=s2)
                    for red in ("total", "max"):
                        if red == "max" and block == "energy":
                            continue
                        # float64 on the host (σ² down to 1e-6 of the unit; JAX runs float32 here)
                        z = np.sqrt(s2) * np.asarray(po_s.rows, np.float64) @ post.chol_inv.T
                        v = np.where(np.asarray(po_s.row_mask), np.sum(z * z, -1), 0.0)
                        pv = v.sum(-1) if red == "total" else v.max(-1)
                        rank = np.argsort(np.argsort(pv))
                        top = np.argsort(-pv)[:16]
                        records.append({
                            "params": which, "d": d, "kernel": block, "norm": norm, "noise_var": s2,
                            "reduction": red,
                            "copy_ranks": rank[is_copy].tolist(),
                            "copy_rank_mean_pct": float(100 * rank[is_copy].mean() / len(pv)),
                            "spearman_err": spearman(pv, err), "spearman_fmax": spearman(pv, fmax),
                            "top16_err_ratio": float(err[top].mean() / err.mean()),
                            "median_pv_over_s2": float(np.median(pv) / s2),
                            "median_prior_over_s2": float(np.median(prior) / s2),
                        })
    result = {"args": vars(args), "n_pool": len(pool), "pool_force_mae": float(err.mean()),
              "ml_noise_var_energy": ml,
              "spearman_err_fmax": spearman(err, fmax), "records": records,
              "wall_s": time.perf_counter() - t0}
    (out / "score_study.json").write_text(json.dumps(result, indent=1))
    lines = [f"Pool {len(pool)} frames ({args.copies} copies of labelled frames), {len(labelled)} labelled; "
             f"Spearman(realised F-MAE, max|F| label) = {result['spearman_err_fmax']:.2f}; "
             f"wall {result['wall_s']:.0f} s.", "",
             "Evidence-maximising σ² (relative to the normalised unit) for the energy block, from the "
             "labelled set's energy residuals: " + ", ".join(f"{k}: {v:.2g}" for k, v in ml.items()), "",
             "| params | d | kernel | norm | σ² | red. | copy ranks (of %d) | copy mean pct | ρ(PV, err) | ρ(PV, max F) | top-16 err / mean | median PV/σ² |" % len(pool),
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['params']} | {r['d']} | {r['kernel']} | {r['norm']} | {r['noise_var']:g} | "
                     f"{r['reduction']} | {r['copy_ranks']} | {r['copy_rank_mean_pct']:.0f} | "
                     f"{r['spearman_err']:.2f} | {r['spearman_fmax']:.2f} | {r['top16_err_ratio']:.2f} | "
                     f"{r['median_pv_over_s2']:.2g} |")
    (out / "score_study.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}/score_study.md ({len(records)} rows) in {result['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
