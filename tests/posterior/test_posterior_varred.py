"""Expected-variance-reduction selector and feature normalisation against explicit references."""

import numpy as np
import pytest

from ntkal.posterior import (
    apply_feature_scale, chunk_from_arrays, fit_feature_scale, fit_posterior, posterior_arrays,
    accumulate_second_moment, pv_scores, select_batch, target_second_moment,
)

pytestmark = pytest.mark.usefixtures("x64")


def _rows(rng, n, r, d, pad_frac=0.3):
    rows = rng.normal(size=(n, r, d)) * rng.uniform(0.3, 3.0, size=(n, 1, 1))
    mask = rng.random((n, r)) > pad_frac
    mask[:, 0] = True
    return np.where(mask[..., None], rows, 0.0), mask


def _total_var(x_obs, x_target, s2):
    """Σ_u posterior variance of target rows given observed rows, from the explicit kernel K = XXᵀ."""
    k_uu = x_target @ x_target.T
    if len(x_obs) == 0:
        return float(np.trace(k_uu))
    k_uo = x_target @ x_obs.T
    k_oo = x_obs @ x_obs.T + s2 * np.eye(len(x_obs))
    return float(np.trace(k_uu - k_uo @ np.linalg.solve(k_oo, k_uo.T)))


def _ref_varred(rows, mask, t_rows, t_mask, u_rows, s2, budget):
    """Greedy: the candidate whose observation lowers the target's total variance most, recomputed
    from scratch in kernel space (n × n solves, no feature-space update) after every pick."""
    obs = [t_rows[i][t_mask[i]] for i in range(len(t_rows))]
    picks, gains = [], []
    for _ in range(budget):
        x_obs = np.concatenate(obs) if obs else np.zeros((0, rows.shape[-1]))
        base = _total_var(x_obs, u_rows, s2)
        g = np.full(len(rows), -np.inf)
        for i in range(len(rows)):
            if i not in picks:
                g[i] = base - _total_var(np.concatenate([x_obs, rows[i][mask[i]]]), u_rows, s2)
        j = int(np.argmax(g))
        picks.append(j)
        gains.append(g[j])
        obs.append(rows[j][mask[j]])
    return picks, gains


@pytest.mark.parametrize("target", ["pool", "other", "pool_per_structure"])
def test_varred_equals_bruteforce_kernel_recompute(target):
    rng = np.random.default_rng(3)
    n, r, d, s2 = 14, 3, 6, 0.3
    rows, mask = _rows(rng, n, r, d)
    t_rows, t_mask = _rows(rng, 4, r, d)
    if target == "pool":
        u = rows[mask]
        gram = target_second_moment([chunk_from_arrays(u[:, None, :])], d)
    elif target == "other":
        u = rng.normal(size=(25, d)) * 0.7
        gram = target_second_moment([chunk_from_arrays(u[:, None, :])], d)
    else:  # every pool structure's rows divided by its Frobenius norm: each structure counts once
        u = np.concatenate([rows[i][mask[i]] / np.linalg.norm(rows[i][mask[i]]) for i in range(n)])
        gram = target_second_moment([chunk_from_arrays(rows, mask)], d, "per_structure")
    post = fit_posterior([chunk_from_arrays(t_rows, t_mask)], d, noise_var=s2)
    sel = select_batch("varred", chunk_from_arrays(rows, mask), budget=6, posterior=post, target_gram=gram)
    ref_picks, ref_gains = _ref_varred(rows, mask, t_rows, t_mask, u, s2, 6)
    assert list(np.asarray(sel.indices)) == ref_picks
    np.testing.assert_allclose(np.asarray(sel.scores), ref_gains, rtol=1e-8)
    assert np.all(np.diff(ref_gains) <= 1e-12)  # submodular: gains never grow


def test_varred_prefers_representative_over_outlier():
    """A lone large-norm outlier has the largest PV (16 vs ~1); varred over the pool picks the dense
    cluster, whose 30 members share the variance one pick removes (gain ~27 vs ~16)."""
    rng = np.random.default_rng(0)
    d = 4
    cluster = np.array([1.0, 0, 0, 0]) + 0.05 * rng.normal(size=(30, d))
    outlier = np.array([[0, 0, 0, 4.0]])
    rows = np.concatenate([cluster, outlier])[:, None, :]
    post = fit_posterior([], d, noise_var=0.1)
    chunk = chunk_from_arrays(rows)
    pv = np.asarray(pv_scores(chunk, *posterior_arrays(post)))
    assert int(np.argmax(pv)) == 30
    sel = select_batch("varred", chunk, budget=1, posterior=post,
                       target_gram=target_second_moment([chunk], d))
    assert int(sel.indices[0]) < 30


def test_per_structure_target_moment_against_explicit_sums():
    rng = np.random.default_rng(5)
    rows, mask = _rows(rng, 7, 3, 4)
    ids = np.arange(7)
    ids[5] = -1  # a padding slot: never part of the target
    chunks = [chunk_from_arrays(rows[:4], mask[:4], ids[:4]), chunk_from_arrays(rows[4:], mask[4:], ids[4:])]
    want_plain = sum(rows[i][mask[i]].T @ rows[i][mask[i]] for i in range(7) if ids[i] >= 0)
    want_each = sum(rows[i][mask[i]].T @ rows[i][mask[i]] / np.sum(rows[i][mask[i]] ** 2)
                    for i in range(7) if ids[i] >= 0)
    np.testing.assert_allclose(target_second_moment(chunks, 4), want_plain, rtol=1e-12)
    np.testing.assert_allclose(target_second_moment(chunks, 4, "per_structure"), want_each, rtol=1e-12)
    np.testing.assert_allclose(np.trace(want_each), 6.0, rtol=1e-12)  # one per valid structure
    # streamed while the chunks pass through: the same sums, the chunks unchanged
    out = np.zeros((4, 4))
    passed = list(accumulate_second_moment(chunks, out, "per_structure"))
    np.testing.assert_allclose(out, want_each, rtol=1e-12)
    assert all(a is b for a, b in zip(passed, chunks))
    # rescaling a structure changes its weight in the plain moment only
    scaled = rows * rng.uniform(0.1, 10, size=(7, 1, 1))
    again = [chunk_from_arrays(scaled[:4], mask[:4], ids[:4]), chunk_from_arrays(scaled[4:], mask[4:], ids[4:])]
    np.testing.assert_allclose(target_second_moment(again, 4, "per_structure"), want_each, rtol=1e-12)
    assert not np.allclose(target_second_moment(again, 4), want_plain)
    with pytest.raises(ValueError, match="weighting"):
        target_second_moment(chunks, 4, "per_atom")


def test_per_structure_target_follows_the_many_not_the_large():
    """Five large-norm structures (high forces) along one direction, thirty ordinary ones along
    another: the plain target moment is dominated by the five (5·3² > 30·1), so varred reduces
    variance along them; counting each structure once, it serves the thirty."""
    rng = np.random.default_rng(2)
    d = 4
    large = np.array([0, 0, 3.0, 0]) + 0.05 * rng.normal(size=(5, d))
    many = np.array([1.0, 0, 0, 0]) + 0.05 * rng.normal(size=(30, d))
    chunk = chunk_from_arrays(np.concatenate([large, many])[:, None, :])
    post = fit_posterior([], d, noise_var=0.1)
    plain = select_batch("varred", chunk, budget=1, posterior=post, target_gram=target_second_moment([chunk], d))
    each = select_batch("varred", chunk, budget=1, posterior=post,
                        target_gram=target_second_moment([chunk], d, "per_structure"))
    assert int(plain.indices[0]) < 5 and int(each.indices[0]) >= 5


def test_varred_needs_target():
    post = fit_posterior([], 3, noise_var=0.1)
    c = chunk_from_arrays(np.ones((4, 1, 3)))
    with pytest.raises(ValueError, match="target_gram"):
        select_batch("varred", c, budget=1, posterior=post)
    with pytest.raises(ValueError, match="target_gram must be"):
        select_batch("varred", c, budget=1, posterior=post, target_gram=np.eye(2))


@pytest.mark.parametrize("mode", ["mean_trace", "median_trace", "per_structure"])
def test_feature_scale_modes(mode):
    rng = np.random.default_rng(1)
    rows, mask = _rows(rng, 9, 4, 5)
    groups = (0, 1, 1, 1)
    chunk = chunk_from_arrays(rows, mask)
    fs = fit_feature_scale(chunk, mode, row_groups=groups, group_weights=(1.0, 0.5))
    out = np.asarray(apply_feature_scale(chunk, fs).rows)
    w = np.array([1.0, 0.5, 0.5, 0.5])
    if mode == "per_structure":  # each group of each structure has norm² = weight²
        for i in range(9):
            e = np.sum(out[i, 0] ** 2)
            f = np.sum(out[i, 1:][mask[i, 1:]] ** 2)
            np.testing.assert_allclose(e, 1.0, rtol=1e-12)
            if mask[i, 1:].any():
                np.testing.assert_allclose(f, 0.25, rtol=1e-12)
        # invariant to rescaling a structure: the cosine kernel ignores norms
        scaled = chunk_from_arrays(rows * rng.uniform(0.1, 10, size=(9, 1, 1)), mask)
        np.testing.assert_allclose(np.asarray(apply_feature_scale(scaled, fs).rows), out, rtol=1e-12)
    else:
        traces = np.sum((rows * w[None, :, None]) ** 2, axis=(1, 2))
        centre = traces.mean() if mode == "mean_trace" else np.median(traces)
        np.testing.assert_allclose(out, rows * w[None, :, None] / np.sqrt(centre), rtol=1e-12)
    with pytest.raises(ValueError, match="normalisation"):
        fit_feature_scale(chunk, "bogus")


@pytest.mark.parametrize("weighting", ["none", "per_structure"])
def test_pipeline_passes_the_target_weighting_to_varred(weighting):
    """``shortlist_and_select`` (the one pick pipeline) with a shortlist of the whole pool equals
    ``select_batch`` on the scaled pool with the target moment of ``weighting``, computed here."""
    import jax
    from ntkal.acquire import AcquisitionConfig
    from ntkal.acquire.pipeline import shortlist_and_select
    rng = np.random.default_rng(7)
    n, r, d, budget = 20, 3, 5, 4
    rows, mask = _rows(rng, n, r, d)
    rows[:3] *= 6.0  # three large-norm structures, as high-force frames are
    t_rows, t_mask = _rows(rng, 5, r, d)
    train = chunk_from_arrays(t_rows, t_mask)
    scale = fit_feature_scale(train, "median_trace")
    train_scaled = apply_feature_scale(train, scale)
    post = fit_posterior([train_scaled], d, noise_var=0.05)
    pool = chunk_from_arrays(rows, mask)
    config = AcquisitionConfig(selector="varred", shortlist=n, target_weighting=weighting)
    ids, scores, _ = shortlist_and_select(config, post, scale, train_scaled,
                                          [chunk_from_arrays(rows[:8], mask[:8], np.arange(8)),
                                           chunk_from_arrays(rows[8:], mask[8:], np.arange(8, n))],
                                          budget, jax.random.key(0), n_candidates=n)
    scaled = apply_feature_scale(pool, scale)
    ref = select_batch("varred", scaled, budget=budget, posterior=post,
                       target_gram=target_second_moment([scaled], d, weighting))
    assert ids.tolist() == np.asarray(ref.indices).tolist()
    np.testing.assert_allclose(scores, np.asarray(ref.scores), rtol=1e-8)
    other = "per_structure" if weighting == "none" else "none"
    alt = select_batch("varred", scaled, budget=budget, posterior=post,
                       target_gram=target_second_moment([scaled], d, other))
    assert not np.allclose(scores, np.asarray(alt.scores), rtol=1e-3)  # the weighting matters here


def test_force_noise_factor_makes_the_pipeline_heteroscedastic():
    """``shortlist_and_select`` with a per-candidate noise factor f_i equals greedy variance
    reduction recomputed in kernel space with label noise σ²·f_i on candidate i's rows (σ² on the
    training rows) and the *unweighted* pool as the target; the soft weight moves the picks away
    from the three large-norm structures that homoscedastic varred takes first."""
    import jax
    from ntkal.acquire import AcquisitionConfig
    from ntkal.acquire.pipeline import force_noise_factor, shortlist_and_select
    rng = np.random.default_rng(11)
    n, r, d, budget, s2 = 18, 3, 5, 4, 0.05
    rows, mask = _rows(rng, n, r, d)
    rows[:3] *= 6.0  # three large-norm structures, as high-force frames are
    fmax = np.concatenate([[8.0, 9.0, 12.0], rng.uniform(0.2, 1.5, n - 3)])  # their predicted max |F|
    factor = force_noise_factor(fmax, np.arange(n), 2.0)
    np.testing.assert_allclose(factor, 1 + (fmax / (2.0 * np.median(fmax))) ** 2, rtol=1e-12)
    t_rows, t_mask = _rows(rng, 5, r, d)
    train = chunk_from_arrays(t_rows, t_mask)
    scale = fit_feature_scale(train, "median_trace")
    train_scaled = apply_feature_scale(train, scale)
    post = fit_posterior([train_scaled], d, noise_var=s2)
    config = AcquisitionConfig(selector="varred", shortlist=n)
    stream = [chunk_from_arrays(rows[:7], mask[:7], np.arange(7)),
              chunk_from_arrays(rows[7:], mask[7:], np.arange(7, n))]
    ids, scores, _ = shortlist_and_select(config, post, scale, train_scaled, stream, budget,
                                          jax.random.key(0), n_candidates=n, noise_factor=factor)
    pool = np.asarray(apply_feature_scale(chunk_from_arrays(rows, mask), scale).rows)
    t_sc = np.asarray(train_scaled.rows)
    u = pool[mask]

    def total_var(obs):  # Σ_u posterior variance, noise σ²·f per observed row
        x = np.concatenate([o for o, _ in obs])
        noise = np.concatenate([np.full(len(o), s2 * f) for o, f in obs])
        k_uo = u @ x.T
        return np.trace(u @ u.T - k_uo @ np.linalg.solve(x @ x.T + np.diag(noise), k_uo.T))

    obs = [(t_sc[i][t_mask[i]], 1.0) for i in range(len(t_sc))]
    ref, gains = [], []
    for _ in range(budget):
        base = total_var(obs)
        g = [-np.inf if i in ref else base - total_var(obs + [(pool[i][mask[i]], factor[i])]) for i in range(n)]
        ref.append(int(np.argmax(g)))
        gains.append(max(g))
        obs.append((pool[ref[-1]][mask[ref[-1]]], factor[ref[-1]]))
    assert ids.tolist() == ref
    np.testing.assert_allclose(scores, gains, rtol=1e-8)
    plain, _, _ = shortlist_and_select(config, post, scale, train_scaled, stream, budget,
                                       jax.random.key(0), n_candidates=n)
    assert set(plain.tolist()) & {0, 1, 2} and not set(ids.tolist()) & {0, 1, 2}


def test_force_noise_factor_is_one_without_a_reference_force():
    from ntkal.acquire.pipeline import force_noise_factor
    np.testing.assert_array_equal(force_noise_factor(np.zeros(5), np.arange(5), 1.0), np.ones(5))
    with pytest.raises(ValueError, match="force_noise_scale"):
        from ntkal.acquire import AcquisitionConfig
        AcquisitionConfig(force_noise_scale=-1.0)
