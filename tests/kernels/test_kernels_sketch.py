"""The random sketch: E[S Sᵀ] = I, leaf-by-leaf generation, and error shrinking like 1/√d."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkal.kernels import make_sketch, select_params


@pytest.fixture(scope="module")
def params():
    rng = np.random.default_rng(0)
    net = {"params": {"a": {"w": rng.normal(size=(30, 20))}, "b": {"w": rng.normal(size=(40,))},
                      "readout": {"w": rng.normal(size=(16, 1))}}}
    return {"net": net, "e0": np.zeros(2)}


def grads_of(selection, g):
    out, start = [], 0
    for s in selection.sizes:
        out.append(jnp.asarray(g[start:start + s]))
        start += s
    return out


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_sketch_error_shrinks_like_inverse_sqrt_d(x64, params, kind):
    sel = select_params(params, "all")
    rng = np.random.default_rng(1)
    # gradients with a decaying spectrum, like NTK features
    g = rng.normal(size=(12, sel.num_params)) * (1.0 / np.arange(1, sel.num_params + 1)) ** 0.3
    gram = g @ g.T
    dims = [8, 32, 128, 512]
    errors = []
    for d in dims:
        errs = []
        for seed in range(12):
            blocks = make_sketch(sel, d, kind=kind, seed=seed).blocks(jnp.float64)
            proj = g @ np.concatenate([np.asarray(b) for b in blocks])
            approx = proj @ proj.T
            errs.append(np.linalg.norm(approx - gram) / np.linalg.norm(gram))
        errors.append(np.mean(errs))
    slope = np.polyfit(np.log(dims), np.log(errors), 1)[0]
    assert -0.65 < slope < -0.35, (slope, errors)
    assert errors[-1] < 0.25


def test_streamed_blocks_equal_hoisted_and_filter_invariant(x64, params):
    sel = select_params(params, "all")
    sub = select_params(params, "readout")
    assert sub.num_params == 16 and sel.num_params == 600 + 40 + 16
    g = np.random.default_rng(2).normal(size=sel.num_params)
    sk = make_sketch(sel, 64, seed=3, hoist=False)
    hoisted = make_sketch(sel, 64, seed=3, hoist=True)
    a = np.asarray(sk.project(grads_of(sel, g)))
    batched = jax.vmap(lambda x: sk.project(grads_of(sel, x)))(jnp.stack([g, 2 * g]))
    np.testing.assert_allclose(np.asarray(batched), np.stack([a, 2 * a]), rtol=1e-13)
    b = np.asarray(hoisted.project(grads_of(sel, g), hoisted.blocks(jnp.float64)))
    np.testing.assert_allclose(a, b, rtol=1e-13)
    # a leaf's block does not depend on the filter: the readout-only sketch is a sub-block
    ro = make_sketch(sub, 64, seed=3)
    full_blocks = hoisted.blocks(jnp.float64)
    ro_index = sel.indices.index(sub.indices[0])
    np.testing.assert_array_equal(np.asarray(ro.blocks(jnp.float64)[0]),
                                  np.asarray(full_blocks[ro_index]))
    # unsketched = concatenation; E[S Sᵀ] = I (empirically, over seeds)
    ident = make_sketch(sel, None)
    np.testing.assert_array_equal(np.asarray(ident.project(grads_of(sel, g))), g)
    s = np.concatenate([np.asarray(b) for b in make_sketch(sel, 4096, seed=0).blocks(jnp.float64)])
    sst = s @ s.T
    assert np.abs(np.diag(sst) - 1).max() < 0.1 and np.abs(sst - np.diag(np.diag(sst))).max() < 0.1
