"""Float32 (JAX, as the loop scores) vs float64 (host) posterior variance at tiny σ².

    python experiments/score_study.py            # writes experiments/results/score_study/features.npz
    python experiments/score_study_precision.py  # reads it

Joint features (pretrained, d = 512, median-trace scaling, trace-equalising w_F) of the score
study's pool with 5 hidden copies of labelled frames: prints Spearman(PV32, PV64), the copies'
ranks (0 = lowest PV of 605) in both precisions, and the median pool PV per σ².
"""

import numpy as np
from scipy.stats import spearmanr

from ntkal.posterior import (apply_feature_scale, chunk_from_arrays, fit_feature_scale, fit_posterior,
                               posterior_arrays, pv_scores)


def main() -> None:
    f = np.load("experiments/results/score_study/features.npz")
    tr = chunk_from_arrays(f["pretrained_512_train_rows"], f["pretrained_512_train_mask"])
    po = chunk_from_arrays(f["pretrained_512_pool_rows"], f["pretrained_512_pool_mask"])
    sq = np.sum(np.asarray(tr.rows) ** 2, -1)
    w_f = float(np.sqrt(sq[:, 0].sum() / sq[:, 1:].sum()))
    fs = fit_feature_scale(tr, "median_trace", row_groups=(0, 1, 1, 1, 1), group_weights=(1.0, w_f))
    trs, pos = apply_feature_scale(tr, fs), apply_feature_scale(po, fs)
    copy = f["is_copy"]
    print("| σ² | Spearman(PV32, PV64) | copy ranks (float64) | copy ranks (float32) | median pool PV | max copy PV |")
    print("|---|---|---|---|---|---|")
    for s2 in (1e-9, 1e-7, 1e-6, 1e-4, 1e-2):
        post = fit_posterior([trs], trs.rows.shape[-1], noise_var=s2)
        z = np.sqrt(s2) * np.asarray(pos.rows, np.float64) @ post.chol_inv.T
        pv64 = np.sum(z * z, axis=(1, 2))
        pv32 = np.asarray(pv_scores(pos, *posterior_arrays(post)))
        r64, r32 = np.argsort(np.argsort(pv64)), np.argsort(np.argsort(pv32))
        print(f"| {s2:g} | {spearmanr(pv64, pv32)[0]:.4f} | {r64[copy].tolist()} | {r32[copy].tolist()} | "
              f"{np.median(pv64):.2e} | {pv64[copy].max():.1e} |")


if __name__ == "__main__":
    main()
