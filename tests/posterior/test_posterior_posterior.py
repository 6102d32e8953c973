"""Feature-space posterior, PV scores and the streaming shortlist (float64)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkal.posterior import (
    FeatureChunk, ScoreConfig, ShortlistState, chunk_from_arrays, cholesky_with_jitter,
    feature_posterior, fit_posterior, iterate_chunks, merge_topk, posterior_arrays, pv_rows,
    pv_scores, shortlist_pool,
)


pytestmark = pytest.mark.usefixtures("x64")  # float64 for the whole module (tests/conftest.py)


def _problem(seed, n_t, n_p, r, d, pad_frac=0.3):
    """Random rows with random padding (padded rows filled with garbage)."""
    rng = np.random.default_rng(seed)
    def make(n):
        rows = rng.normal(size=(n, r, d))
        mask = rng.random((n, r)) > pad_frac
        mask[:, 0] = True
        rows = np.where(mask[..., None], rows, 1e6 * rng.normal(size=rows.shape))
        return rows, mask
    return make(n_t), make(n_p)


def _brute_cov(t_rows, t_mask, x_rows, x_mask, noise_var):
    """Posterior covariance k(x,x) - k(x,T)(K_TT + s2 I)^-1 k(T,x) in kernel space."""
    phi_t = t_rows[t_mask]  # (n_rows_T, d)
    phi_x = x_rows[x_mask]  # (r_valid, d)
    k_tt = phi_t @ phi_t.T
    k_xt = phi_x @ phi_t.T
    return phi_x @ phi_x.T - k_xt @ np.linalg.solve(k_tt + noise_var * np.eye(len(phi_t)), k_xt.T)


@pytest.mark.parametrize("kind,r,reduction", [
    ("energy", 1, "total"), ("force", 6, "total"), ("force", 6, "mean"), ("force", 6, "max"),
    ("joint", 7, "total")])
def test_pv_matches_kernel_space_brute_force(kind, r, reduction):
    d, s2 = 5, 0.3
    (tr, tm), (pr, pm) = _problem(1, 4, 9, r, d, pad_frac=0.0 if r == 1 else 0.3)
    post = fit_posterior(iterate_chunks(tr, tm, chunk_size=3), d, noise_var=s2)
    scores = np.asarray(pv_scores(chunk_from_arrays(pr, pm), *posterior_arrays(post),
                                  ScoreConfig(reduction=reduction)))
    for i in range(len(pr)):
        cov = np.diag(_brute_cov(tr, tm, pr[i], pm[i], s2))
        ref = {"total": cov.sum(), "mean": cov.mean(), "max": cov.max()}[reduction]
        np.testing.assert_allclose(scores[i], ref, rtol=1e-8, atol=0)


def test_row_groups_joint_energy_plus_mean_force():
    d, s2, r = 4, 0.2, 5
    (tr, tm), (pr, pm) = _problem(2, 3, 6, r, d)
    post = fit_posterior([chunk_from_arrays(tr, tm)], d, noise_var=s2)
    cfg = ScoreConfig(reduction="mean", row_groups=(0, 1, 1, 1, 1), group_weights=(1.0, 2.0))
    scores = np.asarray(pv_scores(chunk_from_arrays(pr, pm), *posterior_arrays(post), cfg))
    for i in range(len(pr)):
        full = np.diag(_brute_cov(tr, tm, pr[i], np.ones(r, bool), s2))
        f_valid = pm[i, 1:]
        ref = full[0] + 2.0 * full[1:][f_valid].mean()
        np.testing.assert_allclose(scores[i], ref, rtol=1e-8)


@pytest.mark.parametrize("reduction", ["mean", "max"])
def test_per_atom_units_joint_features(reduction):
    """Joint rows [E, x1,y1,z1, x2,y2,z2, x3,y3,z3]: energy + mean/max over valid atoms."""
    d, s2, n_atoms = 4, 0.2, 3
    r = 1 + 3 * n_atoms
    (tr, tm), (pr, _) = _problem(8, 3, 5, r, d, pad_frac=0.0)
    atom_ok = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]], bool)
    pm = np.concatenate([np.ones((5, 1), bool), np.repeat(atom_ok, 3, axis=1)], axis=1)
    pr = np.where(pm[..., None], pr, 123.0)
    post = fit_posterior([chunk_from_arrays(tr, tm)], d, noise_var=s2)
    cfg = ScoreConfig(reduction=reduction, row_groups=(0,) + (1,) * (r - 1),
                      row_units=(0,) + tuple(1 + np.arange(r - 1) // 3))
    scores = np.asarray(pv_scores(chunk_from_arrays(pr, pm), *posterior_arrays(post), cfg))
    for i in range(5):
        full = np.diag(_brute_cov(tr, tm, pr[i], np.ones(r, bool), s2))
        per_atom = full[1:].reshape(n_atoms, 3).sum(1)[atom_ok[i]]
        ref = full[0] + (per_atom.mean() if reduction == "mean" else per_atom.max())
        np.testing.assert_allclose(scores[i], ref, rtol=1e-8)


def test_chunked_posterior_and_scores_equal_unchunked():
    d, r = 6, 3
    (tr, tm), (pr, pm) = _problem(3, 11, 23, r, d)
    ref_post = fit_posterior([chunk_from_arrays(tr, tm)], d, noise_var=0.1)
    ref = np.asarray(pv_scores(chunk_from_arrays(pr, pm), *posterior_arrays(ref_post)))
    for cs in (1, 4, 5, 11, 40):  # 4, 5: last chunk partial
        post = fit_posterior(iterate_chunks(tr, tm, chunk_size=cs), d, noise_var=0.1)
        np.testing.assert_allclose(post.chol, ref_post.chol, rtol=1e-12, atol=1e-14)
        got = np.concatenate([np.asarray(pv_scores(c, *posterior_arrays(post)))[c.ids >= 0]
                              for c in iterate_chunks(pr, pm, chunk_size=cs)])
        np.testing.assert_allclose(got, ref, rtol=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 7, 50])
def test_shortlist_chunked_equals_unchunked_topm(chunk_size):
    d, r, m = 5, 2, 8
    (tr, tm), (pr, pm) = _problem(4, 5, 23, r, d)
    post = fit_posterior([chunk_from_arrays(tr, tm)], d, noise_var=0.2)
    ids = np.arange(100, 123)
    full = np.asarray(pv_scores(chunk_from_arrays(pr, pm, ids), *posterior_arrays(post)))
    order = np.lexsort((ids, -full))[:m]
    st = shortlist_pool(iterate_chunks(pr, pm, ids, chunk_size=chunk_size), post, m)
    np.testing.assert_array_equal(np.asarray(st.ids), ids[order])
    np.testing.assert_allclose(np.asarray(st.values), full[order], rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(st.rows), np.where(pm[order][..., None], pr[order], 0))
    assert int(st.n_seen) == 23


def test_shortlist_larger_than_pool_leaves_empty_slots():
    (tr, tm), (pr, pm) = _problem(5, 3, 4, 1, 3, pad_frac=0)
    post = fit_posterior([chunk_from_arrays(tr, tm)], 3, noise_var=0.2)
    st = shortlist_pool(iterate_chunks(pr, pm, chunk_size=3), post, 6)
    assert list(np.asarray(st.ids)[4:]) == [-1, -1] and np.all(np.isneginf(st.values[4:]))


def test_padded_rows_and_graphs_never_matter():
    d, r = 4, 3
    (tr, tm), (pr, pm) = _problem(6, 4, 5, r, d)
    post = fit_posterior([chunk_from_arrays(tr, tm)], d, noise_var=0.2)
    base = np.asarray(pv_rows(chunk_from_arrays(pr, pm), *posterior_arrays(post)))
    # NaN / huge garbage in padded rows, in padded graphs, and in padded train rows
    pr2 = np.where(pm[..., None], pr, np.nan)
    tr2 = np.where(tm[..., None], tr, np.inf)
    tr2 = np.concatenate([tr2, np.full((2, r, d), np.nan)])
    tm2 = np.concatenate([tm, np.ones((2, r), bool)])
    t_ids = np.concatenate([np.arange(4), [-1, -1]])
    post2 = fit_posterior([chunk_from_arrays(tr2, tm2, t_ids)], d, noise_var=0.2)
    np.testing.assert_array_equal(post2.chol, post.chol)
    got = np.asarray(pv_rows(chunk_from_arrays(pr2, pm), *posterior_arrays(post2)))
    np.testing.assert_array_equal(got, base)
    assert np.all(got[~pm] == 0)
    c = chunk_from_arrays(np.concatenate([pr, np.full((1, r, d), 7.0)]),
                          np.concatenate([pm, np.ones((1, r), bool)]), [0, 1, 2, 3, 4, -1])
    s = np.asarray(pv_scores(c, *posterior_arrays(post)))
    assert np.isneginf(s[-1])


def test_pv_never_increases_and_train_points_below_noise_level():
    d, r, s2 = 6, 3, 0.05
    (tr, tm), (pr, pm) = _problem(7, 6, 10, r, d)
    fns = feature_posterior(noise_var=s2)
    state = fns.init(d)
    pool = chunk_from_arrays(pr, pm)
    prev = np.asarray(pv_rows(pool, *posterior_arrays(fns.finalize(state))))
    for i in range(len(tr)):
        state = fns.update(chunk_from_arrays(tr[i:i + 1], tm[i:i + 1]), state)
        post = fns.finalize(state)
        cur = np.asarray(pv_rows(pool, *posterior_arrays(post)))
        assert np.all(cur <= prev + 1e-12)
        prev = cur
        own = np.asarray(pv_rows(chunk_from_arrays(tr[i:i + 1], tm[i:i + 1]), *posterior_arrays(post)))
        assert np.all(own <= s2) and own.sum() <= s2 * tm[i].sum()


def test_cholesky_jitter_warns_with_amount():
    a = np.ones((3, 3))  # singular PSD
    with pytest.warns(RuntimeWarning, match=r"added jitter \d\.\d+e[-+]\d+"):
        chol, added = cholesky_with_jitter(a)
    assert added > 0
    np.testing.assert_allclose(chol @ chol.T, a + added * np.eye(3), atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cholesky_with_jitter(np.eye(2))[1] == 0.0


def test_merge_topk_ties_go_to_smaller_id():
    d = 2
    st = ShortlistState(jnp.full((3,), -jnp.inf), jnp.full((3,), -1, jnp.int32),
                        jnp.zeros((3, 1, d)), jnp.zeros((3, 1), bool), jnp.zeros((), jnp.int32))
    c = FeatureChunk(jnp.ones((5, 1, d)), jnp.ones((5, 1), bool), jnp.array([9, 4, 7, 1, -1], jnp.int32))
    out = jax.jit(merge_topk)(st, c, jnp.array([1.0, 1.0, 2.0, 1.0, 5.0]))
    assert list(np.asarray(out.ids)) == [7, 1, 4]


def test_errors_are_clear():
    post = fit_posterior([], 4, noise_var=0.1)
    with pytest.raises(ValueError, match="dimension mismatch"):
        shortlist_pool(iterate_chunks(np.zeros((3, 1, 5)), chunk_size=2), post, 2)
    with pytest.raises(ValueError, match="dimension mismatch"):
        fns = feature_posterior(0.1)
        fns.update(chunk_from_arrays(np.zeros((2, 1, 3))), fns.init(4))
    with pytest.raises(ValueError, match="empty pool"):
        shortlist_pool(iter([]), post, 2)
    with pytest.raises(ValueError, match="empty pool"):
        shortlist_pool([chunk_from_arrays(np.ones((2, 1, 4)), ids=[-1, -1])], post, 2)
    with pytest.raises(ValueError, match="noise_var"):
        feature_posterior(noise_var=0.0)
    with pytest.raises(ValueError, match="reduction"):
        ScoreConfig(reduction="median")


def test_evidence_noise_var_matches_bruteforce_marginal_likelihood():
    """Argmax over λ of max_s log N(y; 0, s(ΦΦᵀ + λI)), computed with scipy, equals the
    eigendecomposition-based evidence; and it recovers the generating noise ratio."""
    from scipy.optimize import minimize_scalar
    from scipy.stats import multivariate_normal
    from ntkal.posterior import evidence_noise_var

    rng = np.random.default_rng(0)
    n, d, s_true, lam_true = 60, 8, 2.0, 1e-2
    phi = rng.normal(size=(n, d))
    y = phi @ rng.normal(scale=np.sqrt(s_true), size=d) + rng.normal(scale=np.sqrt(s_true * lam_true), size=n)
    grid = np.logspace(-4, 0, 17)
    got = evidence_noise_var(phi, y, grid=grid)

    def best_loglik(lam):
        k = phi @ phi.T + lam * np.eye(n)
        res = minimize_scalar(lambda ls: -multivariate_normal(np.zeros(n), np.exp(ls) * k).logpdf(y),
                              bounds=(-10, 10), method="bounded")
        return -res.fun

    brute = grid[int(np.argmax([best_loglik(lam) for lam in grid]))]
    assert got == brute
    assert 10 ** -2.75 <= got <= 10 ** -1.25  # within a decade-and-a-half of the truth (1e-2)
    with pytest.raises(ValueError, match="at least 2"):
        evidence_noise_var(phi[:1], y[:1])
