"""Sharded (4 host devices) vs single-device selection, run in a subprocess.

``XLA_FLAGS=--xla_force_host_platform_device_count=4`` must be set before JAX
is imported, so the comparison runs in a fresh interpreter; the rest of the
suite keeps its single device.
"""

import os
import socket
import subprocess
import sys
import textwrap

import jax

from ntkal.posterior import initialize_distributed, make_pool_mesh

_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax
    from ntkal.posterior import initialize_distributed, make_pool_mesh
    # multi-host set-up path, as far as one machine allows: 1 process, local coordinator
    assert initialize_distributed(f"localhost:{sys.argv[1]}", num_processes=1, process_id=0)
    assert jax.process_count() == 1 and len(jax.devices()) == 4, jax.devices()
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    from ntkal.posterior import (SELECTORS, chunk_from_arrays, fit_posterior, iterate_chunks,
                                   select_batch, shortlist_pool, ScoreConfig)

    rng = np.random.default_rng(0)
    n, r, d = 22, 3, 5                       # 22 is not a multiple of 4: padding path
    rows = rng.normal(size=(n, r, d)) * rng.uniform(0.5, 2, size=(n, 1, 1))
    mask = rng.random((n, r)) > 0.3
    mask[:, 0] = True
    ids = np.where(np.arange(n) % 7 == 3, -1, np.arange(n) + 1000)
    t_rows = rng.normal(size=(4, r, d))
    t_mask = np.ones((4, r), bool)
    post = fit_posterior([chunk_from_arrays(t_rows, t_mask)], d, noise_var=0.2)
    cands = chunk_from_arrays(rows, mask, ids)
    train = chunk_from_arrays(t_rows, t_mask)
    mesh1, mesh4 = make_pool_mesh(jax.devices()[:1]), make_pool_mesh()
    assert mesh4.devices.size == 4
    key = jax.random.PRNGKey(7)
    cases = [(m, {}) for m in SELECTORS] + [
        ("lcmd", {"kernel": "hs", "train": train})] + [
        ("maxdet", {"maxdet_impl": "kernel"})]
    for method, kw in cases:
        kw = dict(kw, budget=9, key=key, posterior=post)
        if method == "varred":
            kw["target_gram"] = np.einsum("nrd,nre->de", rows, rows)
        a = select_batch(method, cands, mesh=mesh1, **kw)
        b = select_batch(method, cands, mesh=mesh4, **kw)
        assert np.array_equal(np.asarray(a.indices), np.asarray(b.indices)), (method, kw, a, b)
        np.testing.assert_allclose(np.asarray(a.scores), np.asarray(b.scores), rtol=1e-10)
        print("ok", method, list(np.asarray(a.indices)))
    s1 = shortlist_pool(iterate_chunks(rows, mask, ids, chunk_size=10), post, 7, mesh=mesh1)
    s4 = shortlist_pool(iterate_chunks(rows, mask, ids, chunk_size=10), post, 7, mesh=mesh4)
    assert np.array_equal(np.asarray(s1.ids), np.asarray(s4.ids))
    np.testing.assert_allclose(np.asarray(s1.values), np.asarray(s4.values), rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(s1.rows), np.asarray(s4.rows))
    print("ok shortlist", list(np.asarray(s1.ids)))
    jax.distributed.shutdown()
    print("ALL-OK")
    """
)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_sharded_selection_equals_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(_free_port())], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ALL-OK" in proc.stdout, proc.stdout + proc.stderr[-4000:]
    assert proc.stdout.count("ok ") == 10


def test_single_process_mesh_helpers():
    assert jax.process_count() == 1
    assert initialize_distributed() is False  # no coordinator, one process: no-op
    mesh = make_pool_mesh()
    assert mesh.axis_names == ("pool",) and mesh.devices.size == len(jax.devices())
    assert make_pool_mesh(jax.devices()[:1]).devices.size == 1
