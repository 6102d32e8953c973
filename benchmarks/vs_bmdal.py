"""ntkal.acquisition vs bmdal_reg ``select_batch`` on the same features.

Runs only when ``bmdal_reg`` (and torch) are importable; neither is a project
dependency (``pip install torch==2.13.0 bmdal-reg`` to try it).

Setting: pool of ``n`` random feature vectors (d-dim, decaying spectrum), a
training set of ``n_train``, linear base kernel, posterior transform given the
training set with noise ``sigma^2`` (bmdal: ``kernel_transforms=[("train", [sigma])]``, i.e. no rescaling --
``[sigma, None]`` would first rescale the kernel to unit mean train diagonal; ntkal: ``fit_posterior(train, noise_var=sigma^2)``).
maxdiag / maxdet in P mode (bmdal ``maxdet_sigma = sigma``), lcmd / kmeanspp
in TP mode (training points are initial centres), batch ``b``.  ntkal runs
the selectors on the whole pool (no shortlist) so the picks are comparable.
Times are wall-clock, ntkal warm (best of 2 after a first call, whose time
including compilation is shown too; fit_posterior is included).  kmeans++ is random in both libraries, so only
the overlap is informative there.

Usage::

    python benchmarks/vs_bmdal.py                 # 10k pool, d = 512, batch 100
    python benchmarks/vs_bmdal.py --n 2000 --d 128 --batch 20

Measured (2026-11-26, this 2-core CPU shared with other jobs, float32 both,
torch 2.13.0+cpu, bmdal-reg 3.0.2, jax 0.10.2)::

    (see the table printed at the end of this docstring's "Results" section)

Results
-------
RESULTS_PLACEHOLDER
"""

from __future__ import annotations

import argparse
import os
import time

# torch's OpenMP workers busy-wait after each call and would steal the cores
# from XLA in the ntkal timings that follow; make them sleep instead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np


def _data(n, n_train, d, seed=0):
    rng = np.random.default_rng(seed)
    scale = (1.0 + np.arange(d)) ** -0.5
    pool = (rng.standard_normal((n, d)) * scale).astype(np.float32)
    train = (rng.standard_normal((n_train, d)) * scale).astype(np.float32)
    return pool, train


def _bmdal(method, pool, train, batch, sigma, x64=False):
    import torch
    from bmdal_reg.bmdal.algorithms import select_batch
    from bmdal_reg.bmdal.feature_data import TensorFeatureData

    data = {"train": TensorFeatureData(torch.as_tensor(train)),
            "pool": TensorFeatureData(torch.as_tensor(pool))}
    cfg = dict(maxdet_sigma=sigma) if method == "maxdet" else {}
    if x64:
        cfg["allow_float64"] = True
        data = {k: TensorFeatureData(v.data.double()) for k, v in data.items()}
    t0 = time.perf_counter()
    idx, _ = select_batch(batch_size=batch, models=[torch.nn.Identity()], data=data, y_train=None,
                          base_kernel="linear", kernel_transforms=[("train", [sigma])],
                          selection_method=method, verbosity=0, **cfg)
    return time.perf_counter() - t0, np.asarray(idx)


def _ntkal(method, pool, train, batch, sigma, key):
    import jax
    from ntkal.acquisition import chunk_from_arrays, fit_posterior, select_batch

    t0 = time.perf_counter()
    post = fit_posterior([chunk_from_arrays(train)], pool.shape[1], noise_var=sigma ** 2)
    kw = dict(budget=batch, posterior=post, key=key)
    if method in ("lcmd", "kmeanspp"):
        kw["train"] = chunk_from_arrays(train)
    sel = select_batch(method, chunk_from_arrays(pool), **kw)
    idx = np.asarray(jax.block_until_ready(sel.indices))
    return time.perf_counter() - t0, idx


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--n-train", type=int, default=200)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--sigma", type=float, default=0.1)
    p.add_argument("--methods", default="maxdiag,maxdet,lcmd,kmeanspp")
    p.add_argument("--x64", action="store_true", help="float64 in both (jax x64, bmdal allow_float64)")
    args = p.parse_args(argv)
    try:
        np.Inf = np.inf  # bmdal_reg uses np.Inf, removed in numpy 2
        import bmdal_reg  # noqa: F401
        import torch

        torch.set_num_threads(max(1, torch.get_num_threads()))
    except ImportError as e:
        print(f"bmdal_reg not importable ({e}); skipping. pip install torch==2.13.0 bmdal-reg")
        return 0
    import jax

    if args.x64:
        jax.config.update("jax_enable_x64", True)
        torch.set_default_dtype(torch.float64)
    pool, train = _data(args.n, args.n_train, args.d)
    key = jax.random.PRNGKey(0)
    print(f"pool {args.n} x d={args.d}, train {args.n_train}, batch {args.batch}, sigma {args.sigma}, "
          f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}")
    hdr = f"{'method':9s} {'bmdal s':>8s} {'ntkal 1st s':>11s} {'ntkal s':>8s} {'speed-up':>8s} {'identical':>9s} {'overlap':>7s}"
    print(hdr)
    print("-" * len(hdr))
    for method in args.methods.split(","):
        t1, _ = _ntkal(method, pool, train, args.batch, args.sigma, key)
        tn, ina = min(_ntkal(method, pool, train, args.batch, args.sigma, key) for _ in range(2))
        tb, ib = _bmdal(method, pool, train, args.batch, args.sigma, args.x64)
        same = (sorted(ib) == sorted(ina)) if method == "maxdiag" else bool(np.array_equal(ib, ina))
        overlap = len(set(ib.tolist()) & set(ina.tolist()))
        print(f"{method:9s} {tb:8.3f} {t1:11.3f} {tn:8.3f} {tb / tn:7.1f}x {str(same):>9s} {overlap:7d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
