"""Batch selectors against reference implementations written from their definitions."""

import jax
import numpy as np
import pytest

from ntkal.posterior import (
    SELECTORS, ScoreConfig, chunk_from_arrays, fit_posterior, posterior_arrays, pv_scores,
    qbc_force_disagreement, select_batch, select_kmeanspp, select_lcmd, select_maxdet,
    select_maxdist,
)


pytestmark = pytest.mark.usefixtures("x64")  # float64 for the whole module (tests/conftest.py)


def _rows(seed, n, r, d, pad_frac=0.3):
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(n, r, d)) * rng.uniform(0.5, 2.0, size=(n, 1, 1))
    mask = rng.random((n, r)) > pad_frac
    mask[:, 0] = True
    return np.where(mask[..., None], rows, 0.0), mask


# ---------------------------------------------------------------- references


def _ref_maxdet(rows, mask, t_rows, t_mask, s2, budget, reduction="total"):
    """Greedy max-PV recomputing the full posterior (A and its inverse) after each pick."""
    d = rows.shape[-1]
    a = s2 * np.eye(d) + sum((t_rows[i][t_mask[i]].T @ t_rows[i][t_mask[i]] for i in range(len(t_rows))),
                             np.zeros((d, d)))
    picks, scores = [], []
    for _ in range(budget):
        a_inv = np.linalg.inv(a)
        pv = []
        for i in range(len(rows)):
            phi = rows[i][mask[i]]
            v = s2 * np.einsum("rd,de,re->r", phi, a_inv, phi)
            pv.append({"total": v.sum(), "mean": v.mean(), "max": v.max()}[reduction])
        pv = np.array(pv)
        pv[picks] = -np.inf
        j = int(np.argmax(pv))
        picks.append(j)
        scores.append(pv[j])
        a = a + rows[j][mask[j]].T @ rows[j][mask[j]]
    return picks, scores


def _ref_sqdist(x, c, kernel):
    """Explicit feature-space squared distance (no kernel trick)."""
    if kernel == "trace":
        return float(np.sum((x - c) ** 2))
    return float(np.sum((x.T @ x - c.T @ c) ** 2))


def _ref_kdiag(x, kernel):
    return float(np.sum(x * x)) if kernel == "trace" else float(np.sum((x @ x.T) ** 2))


def _ref_distance_selector(method, rows, train, budget, kernel="trace", key=None):
    """MaxDist / LCMD / k-means++ from their definitions, recomputing all distances each step."""
    centres = list(train)
    picks, scores = [], []
    n = len(rows)
    for t in range(budget):
        avail = np.array([i not in picks for i in range(n)])
        if not centres:
            crit = np.array([_ref_kdiag(x, kernel) for x in rows])
            if method == "kmeanspp":
                g = np.asarray(jax.random.gumbel(jax.random.fold_in(key, t), (n,)))
                j = int(np.argmax(np.where(avail, g, -np.inf)))
            else:
                j = int(np.argmax(np.where(avail, crit, -np.inf)))
        else:
            dist = np.array([[_ref_sqdist(x, c, kernel) for c in centres] for x in rows])
            nearest = np.argmin(dist, axis=1)
            crit = dist[np.arange(n), nearest]
            if method == "maxdist":
                s = crit
            elif method == "lcmd":
                sizes = np.array([crit[nearest == c].sum() for c in range(len(centres))])
                s = np.where(nearest == np.argmax(sizes), crit, -np.inf)
            else:  # k-means++: P(i) ~ crit_i via Gumbel-max with the implementation's noise
                g = np.asarray(jax.random.gumbel(jax.random.fold_in(key, t), (n,)))
                with np.errstate(divide="ignore"):
                    s = np.log(crit) + g
            j = int(np.argmax(np.where(avail, s, -np.inf)))
        picks.append(j)
        scores.append(crit[j])
        centres.append(rows[j])
    return picks, scores


# ------------------------------------------------------------------- tests


@pytest.mark.parametrize("r,reduction,impl", [(1, "total", "kernel"), (1, "total", "feature"),
                                               (4, "mean", "kernel"), (4, "max", "feature")])
def test_maxdet_equals_bruteforce_posterior_recompute(r, reduction, impl):
    d, s2 = 6, 0.2
    rows, mask = _rows(0, 25, r, d)
    t_rows, t_mask = _rows(1, 4, r, d)
    post = fit_posterior([chunk_from_arrays(t_rows, t_mask)], d, noise_var=s2)
    sel = select_maxdet(chunk_from_arrays(rows, mask), budget=8, posterior=post,
                        score_config=ScoreConfig(reduction=reduction), maxdet_impl=impl)
    ref_picks, ref_scores = _ref_maxdet(rows, mask, t_rows, t_mask, s2, 8, reduction)
    assert list(np.asarray(sel.indices)) == ref_picks
    np.testing.assert_allclose(np.asarray(sel.scores), ref_scores, rtol=1e-8)
    pv = np.asarray(pv_scores(chunk_from_arrays(rows, mask), *posterior_arrays(post),
                              ScoreConfig(reduction=reduction)))
    assert int(sel.indices[0]) == int(np.argmax(pv))


def test_maxdiag_is_topk_pv():
    rows, mask = _rows(2, 20, 3, 5)
    post = fit_posterior([], 5, noise_var=0.1)
    sel = select_batch("maxdiag", chunk_from_arrays(rows, mask, np.arange(20) + 50), budget=5,
                       posterior=post)
    pv = np.asarray(pv_scores(chunk_from_arrays(rows, mask), *posterior_arrays(post)))
    assert list(np.asarray(sel.indices)) == list(np.argsort(-pv)[:5])
    assert list(np.asarray(sel.ids)) == list(np.argsort(-pv)[:5] + 50)


@pytest.mark.parametrize("method,kernel,with_train", [
    ("lcmd", "trace", False), ("lcmd", "hs", True), ("lcmd", "trace", True),
    ("maxdist", "hs", False), ("maxdist", "trace", True)])
def test_distance_selectors_match_reference(method, kernel, with_train):
    rows, mask = _rows(3, 24, 3, 4)
    t_rows, t_mask = _rows(4, 3, 3, 4)
    train = chunk_from_arrays(t_rows, t_mask) if with_train else None
    sel = select_batch(method, chunk_from_arrays(rows, mask), budget=7, train=train, kernel=kernel)
    ref, ref_scores = _ref_distance_selector(method, rows, list(t_rows) if with_train else [], 7, kernel)
    assert list(np.asarray(sel.indices)) == ref
    np.testing.assert_allclose(np.asarray(sel.scores), ref_scores, rtol=1e-6, atol=1e-9)


def test_lcmd_with_posterior_uses_whitened_rows():
    d, s2 = 4, 0.3
    rows, mask = _rows(5, 20, 2, d)
    t_rows, t_mask = _rows(6, 5, 2, d)
    post = fit_posterior([chunk_from_arrays(t_rows, t_mask)], d, noise_var=s2)
    a = s2 * np.eye(d) + sum(t_rows[i][t_mask[i]].T @ t_rows[i][t_mask[i]] for i in range(5))
    w = np.sqrt(s2) * np.linalg.inv(np.linalg.cholesky(a))  # z = sigma L^-1 phi
    z, tz = rows @ w.T, t_rows @ w.T
    sel = select_lcmd(chunk_from_arrays(rows, mask), budget=6, posterior=post,
                      train=chunk_from_arrays(t_rows, t_mask))
    assert list(np.asarray(sel.indices)) == _ref_distance_selector("lcmd", z, list(tz), 6)[0]


@pytest.mark.parametrize("with_train", [False, True])
def test_kmeanspp_matches_gumbel_reference(with_train):
    rows, mask = _rows(7, 18, 2, 3)
    t_rows, t_mask = _rows(8, 2, 2, 3)
    key = jax.random.PRNGKey(3)
    train = chunk_from_arrays(t_rows, t_mask) if with_train else None
    sel = select_kmeanspp(chunk_from_arrays(rows, mask), budget=6, key=key, train=train)
    ref = _ref_distance_selector("kmeanspp", rows, list(t_rows) if with_train else [], 6, key=key)[0]
    assert list(np.asarray(sel.indices)) == ref


def test_kmeanspp_samples_proportional_to_squared_distance():
    rng = np.random.default_rng(9)
    rows = rng.normal(size=(4, 1, 2))
    centre = np.zeros((1, 1, 2))
    d2 = np.sum(rows[:, 0] ** 2, axis=1)
    cands, train = chunk_from_arrays(rows), chunk_from_arrays(centre)
    n = 120
    counts = np.zeros(4)
    programs = {}  # the 120 draws own one compiled program (without it, each call compiles anew)
    for k in jax.random.split(jax.random.PRNGKey(0), n):
        counts[int(select_kmeanspp(cands, budget=1, key=k, train=train, compiled=programs).indices[0])] += 1
    assert len(programs) == 1
    expected = n * d2 / d2.sum()
    assert np.all(np.abs(counts - expected) < 4 * np.sqrt(expected) + 3)


def test_random_selector_distinct_valid_seeded():
    rows, mask = _rows(10, 15, 1, 3, pad_frac=0)
    ids = np.where(np.arange(15) % 4 == 0, -1, np.arange(15))  # some padded slots
    c = chunk_from_arrays(rows, mask, ids)
    a = select_batch("random", c, budget=11, key=jax.random.PRNGKey(1))
    b = select_batch("random", c, budget=11, key=jax.random.PRNGKey(2))
    idx = np.asarray(a.indices)
    assert len(set(idx)) == 11 and np.all(ids[idx] >= 0)
    assert list(idx) != list(np.asarray(b.indices))


@pytest.mark.parametrize("method", SELECTORS)
def test_same_seed_same_picks_and_padded_never_picked(method):
    rows, mask = _rows(11, 16, 2, 3)
    ids = np.where(np.arange(16) % 5 == 2, -1, np.arange(16) + 100)
    rows[ids < 0] = 50.0  # large garbage in padded graphs must not attract picks
    c = chunk_from_arrays(rows, mask, ids)
    post = fit_posterior([], 3, noise_var=0.1)
    kw = dict(budget=6, key=jax.random.PRNGKey(5), posterior=post)
    if method == "varred":
        kw["target_gram"] = np.eye(3)
    a, b = select_batch(method, c, **kw), select_batch(method, c, **kw)
    np.testing.assert_array_equal(np.asarray(a.indices), np.asarray(b.indices))
    assert np.all(np.asarray(a.ids) >= 100)
    assert len(set(np.asarray(a.indices))) == 6


def test_selector_errors():
    rows, mask = _rows(12, 5, 2, 3)
    c = chunk_from_arrays(rows, mask)
    post = fit_posterior([], 3, noise_var=0.1)
    with pytest.raises(ValueError, match="budget"):
        select_maxdet(c, budget=6, posterior=post)
    with pytest.raises(ValueError, match="empty pool"):
        select_maxdist(chunk_from_arrays(rows, mask, -np.ones(5)), budget=1)
    with pytest.raises(ValueError, match="empty pool"):
        select_maxdist(chunk_from_arrays(np.zeros((0, 2, 3))), budget=1)
    with pytest.raises(ValueError, match="dimension mismatch"):
        select_maxdet(c, budget=2, posterior=fit_posterior([], 4, noise_var=0.1))
    with pytest.raises(ValueError, match="incompatible"):
        select_lcmd(c, budget=2, train=chunk_from_arrays(np.zeros((2, 2, 4))))
    with pytest.raises(ValueError, match="PRNG key"):
        select_kmeanspp(c, budget=2)
    with pytest.raises(ValueError, match="posterior"):
        select_maxdet(c, budget=2)
    with pytest.raises(ValueError, match="unknown selector"):
        select_batch("bait", c, budget=2)


def test_qbc_force_disagreement_definition():
    rng = np.random.default_rng(13)
    f = rng.normal(size=(4, 3, 5, 3))
    mask = rng.random((3, 5)) > 0.3
    mask[:, 0] = True
    f_garbage = np.where(mask[None, ..., None], f, 1e6)
    got = np.asarray(qbc_force_disagreement(f_garbage, mask))
    for s in range(3):
        fa = f[:, s][:, mask[s]]  # (models, atoms, 3)
        ref = np.mean(np.sum(np.mean((fa - fa.mean(0)) ** 2, axis=0), axis=-1))
        np.testing.assert_allclose(got[s], ref, rtol=1e-12)
    got_max = np.asarray(qbc_force_disagreement(f_garbage, mask, reduction="max"))
    assert np.all(got_max >= got - 1e-12)
    with pytest.raises(ValueError, match="at least 2 models"):
        qbc_force_disagreement(f[:1], mask)


def test_second_call_does_not_recompile(caplog):
    import logging

    rows, mask = _rows(14, 16, 2, 3)
    compiled = {}  # the owner of the programs (an Acquirer's store, a make_selector selector)
    select_maxdist(chunk_from_arrays(rows, mask), budget=6, compiled=compiled)
    before = dict(compiled)
    with jax.log_compiles(True), caplog.at_level(logging.DEBUG):
        select_maxdist(chunk_from_arrays(rows[::-1].copy(), mask[::-1].copy()), budget=6, compiled=compiled)
    assert len(before) == 1 and compiled.keys() == before.keys()  # found again, nothing new built
    assert all(compiled[k] is before[k] for k in before)
    assert not [r for r in caplog.records if "_core" in r.getMessage() and "ompil" in r.getMessage()]


@pytest.mark.parametrize("method", ["lcmd", "maxdist", "kmeanspp"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_distance_selectors_pick_every_candidate_of_a_pool_with_repeated_frames(method, dtype):
    """A pool that repeats frames (copies at distance 0 from their picked twin, up to rounding)
    still yields ``budget`` distinct candidates when the budget takes every one of them."""
    rows, mask = _rows(21, 7, 2, 3, pad_frac=0)
    rows = np.concatenate([rows, rows[[1, 4, 4]]]).astype(dtype)
    mask = np.concatenate([mask, mask[[1, 4, 4]]])
    t_rows, t_mask = _rows(22, 2, 2, 3, pad_frac=0)
    for train in (None, chunk_from_arrays(t_rows.astype(dtype), t_mask)):
        sel = select_batch(method, chunk_from_arrays(rows, mask), budget=10, train=train,
                           key=jax.random.PRNGKey(0), dtype=dtype)
        assert sorted(np.asarray(sel.indices).tolist()) == list(range(10))
