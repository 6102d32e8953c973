"""Batch selectors on a shortlist of candidates, sharded over a 1-D pool mesh.

Every selector is a pure function::

    select_xxx(candidates, *, budget, key=None, ...) -> Selection(indices, ids, scores)

``candidates`` is a :class:`FeatureChunk` (typically
``ShortlistState.as_chunk()``); ``indices`` index its graph axis.  Methods
(cf. Holzmueller et al. 2023, JMLR 24(164), "A Framework and Benchmark for
Deep Batch Active Learning for Regression"):

``random``
  Uniform without replacement (priorities ``U(0,1)`` drawn for the whole
  candidate array from ``key``; per-pick score = priority).
``maxdiag``
  Top-``budget`` posterior variance, no updates (naive active learning).
``maxdet``
  Greedy max posterior variance with a rank-``r`` posterior update after each
  pick (for ``r = 1`` identical to greedy MaxDet of ``K + sigma^2 I``).
  Whitened rows ``z`` (``z z'^T`` = posterior covariance) are updated in
  place after picking ``S`` (rows ``z_S``, ``r x d``):

  .. math:: z \\leftarrow z\\,(I - z_S^\\top (z_S z_S^\\top + \\sigma^2 I)^{-1} z_S)^{1/2}
            = z - (z z_S^\\top) E\\,\\mathrm{diag}(\\rho)\\,E^\\top z_S,

  with :math:`z_S z_S^\\top = E\\,\\mathrm{diag}(\\mu) E^\\top` and
  :math:`\\rho = 1 / ((\\mu + \\sigma^2)(1 + \\sqrt{\\sigma^2/(\\mu+\\sigma^2)}))`:
  ``O(n r^2 d)`` per pick, memory ``O(n r d)``.  Scores use the
  :class:`ScoreConfig` reduction (trace by default).  Training data enter
  through the posterior.  Alternatively (``maxdet_impl="kernel"``, the
  default when ``budget r <= d``) ``z`` stays fixed and a blocked pivoted
  Cholesky factor ``c`` (``n x r x budget r``) is grown, with posterior
  covariance ``z_a z_b^T - c_a c_b^T`` -- bmdal's kernel-space MaxDet.
``varred``
  Expected reduction of the *total* posterior variance over a target set U
  (the pool, or a user-given set): greedy I-optimal design. With whitened
  rows ``z`` and the target's whitened second moment
  :math:`G = \\sum_{u \\in U} z_u^\\top z_u` (``d x d``, accumulated chunk by
  chunk, so U is never stored), observing candidate ``x`` lowers
  :math:`\\sum_u \\mathrm{tr}\\,\\Sigma(u)` by

  .. math:: \\Delta(x) = \\mathrm{tr}\\big((z_x z_x^\\top + \\sigma^2 I)^{-1} z_x G z_x^\\top\\big).

  After each pick the MaxDet update ``z <- z M`` (``M`` symmetric, see above)
  is applied to the candidates and ``G <- M G M`` to the target, so later
  picks see the conditioned posterior. Unlike max-PV it prefers candidates
  whose uncertainty is *shared* with many targets (representative ones) over
  isolated outliers; a density-weighted max-PV falls out as its first pick.
  Needs ``posterior`` and ``target_gram`` (:func:`target_second_moment`).
``maxdist``
  Greedy farthest point: argmax of the squared distance to the nearest centre.
``lcmd``
  Largest-cluster maximum distance: every candidate belongs to its nearest
  centre's cluster; cluster size = sum of its members' squared distances to
  the centre; pick the member of the largest cluster farthest from its centre.
``kmeanspp``
  k-means++ seeding: sample with probability proportional to the squared
  distance to the nearest centre (Gumbel-max with ``key``; the first pick
  without centres is uniform).

Distances use :mod:`ntkal.posterior.structure_kernel` (``kernel="trace"``
by default) on whitened rows if a ``posterior`` is given (the posterior
kernel, bmdal's ``train`` transform), raw rows otherwise.  Train+pool mode
(``train`` chunk given; distance methods only): training structures are the
initial centres (clusters ``1..n_T``), as in the paper's TP mode.  Without
centres the first pick of ``maxdist`` and ``lcmd`` is ``argmax k(x, x)``.

Sharding: candidates are split over the mesh; every pick is a
:func:`global_argmax` (ties -> lowest index) and the picked rows are
broadcast with :func:`gather_picked`, so picks do not depend on the device
count.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ntkal.cache.owned import build_once
from ntkal.posterior._chunk import FeatureChunk, Selection, masked_rows
from ntkal.posterior.posterior import Posterior
from ntkal.posterior.scores import ScoreConfig, compute_dtype, posterior_arrays, reduce_rows, whiten
from ntkal.posterior.sharding import (
    POOL_AXIS, gather_picked, global_argmax, local_offset, make_pool_mesh,
    replicated, sharded,
)
from ntkal.posterior.structure_kernel import StructureKernel, kernel_cross, kernel_diag, sq_dist_to

__all__ = [
    "SELECTORS",
    "select_batch",
    "make_selector",
    "select_random",
    "select_maxdiag",
    "select_maxdet",
    "select_maxdist",
    "select_lcmd",
    "select_kmeanspp",
    "maxdet_update",
    "target_second_moment",
    "accumulate_second_moment",
    "varred_gains",
]

from ntkal.posterior.names import SELECTORS, TARGET_WEIGHTINGS  # noqa: E402  (re-exported)
_NEEDS_KEY = ("random", "kmeanspp")
_NEEDS_POSTERIOR = ("maxdiag", "maxdet", "varred")
_DISTANCE = ("maxdist", "lcmd", "kmeanspp")
_TRAIN_BLOCK = 256


def _observation_coefficients(z_s: jnp.ndarray, noise_var):
    """Eigenbasis ``E``, ``ρ`` and ``μ + σ²`` of observing rows ``z_s`` (``r x d``): conditioning
    multiplies whitened rows by ``M = I − z_sᵀ E diag(ρ) Eᵀ z_s`` (see the module docstring)."""
    gram = z_s @ z_s.T
    mu, e = jnp.linalg.eigh(0.5 * (gram + gram.T))
    tot = jnp.maximum(mu, 0.0) + noise_var
    rho = 1.0 / (tot * (1.0 + jnp.sqrt(noise_var / tot)))
    return e, rho, tot


def maxdet_update(z: jnp.ndarray, z_s: jnp.ndarray, noise_var, row_var=None):
    """Condition whitened rows on observing structure ``S`` (rank-``r`` update).

    Args:
      z: ``(n, r, d)`` whitened rows (``z z'^T`` = posterior covariance).
      z_s: ``(r, d)`` whitened rows of the observed structure (padded rows 0).
      noise_var: :math:`\\sigma^2`.
      row_var: optional ``(n, r)`` current per-row variances ``|z|^2``.

    Returns:
      ``(z', row_var')``: rows whose inner products are the updated posterior
      covariance, and the updated per-row variances
      ``row_var - diag(k (z_S z_S^T + sigma^2 I)^{-1} k^T)`` with ``k = z z_S^T``
      (``None`` if ``row_var`` is ``None``).
    """
    e, rho, tot = _observation_coefficients(z_s, noise_var)
    n, r, d = z.shape
    k = (z.reshape(n * r, d) @ z_s.T).reshape(n, r, -1)  # reshaped GEMMs: einsum lowers poorly on CPU
    z_new = z - (k.reshape(n * r, -1) @ (((e * rho) @ e.T) @ z_s)).reshape(n, r, d)
    if row_var is None:
        return z_new, None
    ke = k @ e  # (n, r, r) in the eigenbasis of the observed block
    return z_new, jnp.maximum(row_var - jnp.sum(ke * ke / tot, axis=-1), 0.0)


def target_second_moment(chunks, dim: int, weighting: str = "none") -> np.ndarray:
    """The target set U's second moment (``(d, d)`` float64) over the valid rows of its chunks.

    ``weighting="none"``: ``Φ_Uᵀ Φ_U = Σ_u Φ_uᵀ Φ_u``, so a structure counts with its squared
    feature norm (high-force structures, whose force rows are large, dominate it);
    ``"per_structure"``: ``Σ_u Φ_uᵀ Φ_u / ‖Φ_u‖²_F``, every target structure counts once
    (structures with all-zero features are left out). :func:`select_batch` whitens it with the
    posterior (``G = σ² L⁻¹ M L⁻ᵀ``). Streams: memory ``O(d²)``.
    """
    if weighting not in TARGET_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {TARGET_WEIGHTINGS}, got {weighting!r}")
    out = np.zeros((dim, dim), np.float64)
    for chunk in chunks:
        rows = np.asarray(chunk.rows, np.float64)
        keep = np.asarray(chunk.row_mask, bool) & (np.asarray(chunk.ids) >= 0)[:, None]
        if weighting == "per_structure":
            norm2 = np.sum(np.where(keep[..., None], rows * rows, 0.0), axis=(1, 2))
            rows = rows / np.sqrt(np.where(norm2 > 0, norm2, 1.0))[:, None, None]
        x = rows[keep]
        out += x.T @ x
    return out


def accumulate_second_moment(chunks, out: np.ndarray, weighting: str = "none"):
    """Yield ``chunks`` unchanged while adding each one's target moment
    (:func:`target_second_moment` with ``weighting``) to ``out`` (``(d, d)``, in place): gathered
    during a pass that streams the pool anyway (e.g. the shortlist)."""
    for chunk in chunks:
        out += target_second_moment([chunk], out.shape[0], weighting)
        yield chunk


def varred_gains(z: jnp.ndarray, gram: jnp.ndarray, noise_var, row_ok: jnp.ndarray) -> jnp.ndarray:
    """Total-variance reduction over the target of observing each candidate, ``(n,)``.

    Args:
      z: ``(n, r, d)`` whitened candidate rows.
      gram: ``(d, d)`` whitened target second moment ``G``.
      noise_var: σ².
      row_ok: ``(n, r)`` valid rows (invalid rows are ignored: they are observed by nobody).
    """
    n, r, d = z.shape
    zm = jnp.where(row_ok[..., None], z, 0.0)
    zg = (zm.reshape(n * r, d) @ gram).reshape(n, r, d)
    b = jnp.einsum("nid,njd->nij", zg, zm)  # z G zᵀ
    k = jnp.einsum("nid,njd->nij", zm, zm) + noise_var * jnp.eye(r, dtype=z.dtype)[None]
    return jnp.trace(jnp.linalg.solve(k, b), axis1=-2, axis2=-1)


def _core(x, rmask, ids, tx, trmask, tids, key, chol_inv_t, sigma, tgram, *, method, budget, n_global,
          kernel, score_config, use_posterior, maxdet_impl):
    """One device's part of :func:`select_batch` (traced under ``shard_map`` and ``jit``, every
    keyword static): ``budget`` greedy picks with ``method``.

    Args:
      x, rmask, ids: this device's candidates: rows ``(n_local, r, d)``, row mask ``(n_local, r)``,
        ids ``(n_local,)`` (-1: padding).
      tx, trmask, tids: the training chunk (replicated; rows ``(n_T, r, d)``, distance methods).
      key: PRNG key (``random``, ``kmeanspp``).
      chol_inv_t, sigma: posterior arrays (:func:`posterior_arrays`; identity and 1 without one).
      tgram: ``(d, d)`` raw target second moment (``varred``).

    Returns:
      ``(picks, scores)``: ``(budget,)`` global candidate indices in pick order and the criterion
      of each at the time of its pick (replicated).
    """
    loc = _local_candidates(x, rmask, ids, tx, trmask, tids, chol_inv_t, sigma, use_posterior)
    if method == "random":
        priorities = _local_part(loc, jax.random.uniform(key, (n_global,), loc.z.dtype))
        return _pick_by_fixed_score(loc, priorities, budget)
    if method == "maxdiag":
        return _pick_by_fixed_score(loc, reduce_rows(jnp.sum(loc.z * loc.z, -1), loc.row_ok, score_config), budget)
    if method == "varred":
        return _pick_varred(loc, chol_inv_t, sigma, tgram, budget)
    if method == "maxdet":
        return _pick_maxdet(loc, sigma, budget, score_config, maxdet_impl)
    return _pick_by_distance(loc, tids, key, method=method, budget=budget, n_global=n_global, kernel=kernel)


class _Local(NamedTuple):
    """This device's block of the candidate axis, prepared for the pick loops (inside ``shard_map``).

    Attributes:
      n_local: candidates on this device (static int).
      offset: global index of the first local candidate (traced int32 scalar).
      global_index: ``(n_local,)`` int32 global index of every local candidate.
      valid: ``(n_local,)`` bool, real candidates (id >= 0).
      row_ok: ``(n_local, r)`` bool, valid rows of real candidates.
      z: ``(n_local, r, d)`` candidate rows: whitened with a posterior, masked raw rows without.
      tz: ``(n_train, r, d)`` the training rows, transformed like ``z`` (replicated).
      neg: ``-inf`` in the compute dtype (the score of a candidate that cannot be picked).
    """

    n_local: int
    offset: jnp.ndarray
    global_index: jnp.ndarray
    valid: jnp.ndarray
    row_ok: jnp.ndarray
    z: jnp.ndarray
    tz: jnp.ndarray
    neg: jnp.ndarray


def _local_candidates(x, rmask, ids, tx, trmask, tids, chol_inv_t, sigma, use_posterior) -> _Local:
    """Index, mask and transform this device's candidate rows (and the replicated training rows).

    ``x`` is ``(n_local, r, d)``, ``rmask`` ``(n_local, r)``, ``ids`` ``(n_local,)`` (-1: padding);
    ``tx, trmask, tids`` the same for the training chunk. With ``use_posterior`` the rows are
    whitened (``z = σ L⁻¹ φ``, :func:`whiten`), else padded rows are zeroed (:func:`masked_rows`).
    """
    nl = x.shape[0]
    off = local_offset(nl)
    gidx_local = off + jnp.arange(nl, dtype=jnp.int32)
    valid = ids >= 0
    cand, tr = FeatureChunk(x, rmask, ids), FeatureChunk(tx, trmask, tids)
    if use_posterior:
        z, tz = whiten(cand, chol_inv_t, sigma), whiten(tr, chol_inv_t, sigma)
    else:
        z, tz = masked_rows(cand, x.dtype), masked_rows(tr, x.dtype)
    neg = jnp.array(-jnp.inf, z.dtype)
    row_ok = rmask & valid[:, None]
    return _Local(nl, off, gidx_local, valid, row_ok, z, tz, neg)


def _no_picks(loc: _Local, budget: int):
    """The initial pick-loop carry ``(selected, picks, scores)``: ``(n_local,)`` bool all False,
    ``(budget,)`` int32 and ``(budget,)`` compute-dtype zeros."""
    return (jnp.zeros((loc.n_local,), bool), jnp.zeros((budget,), jnp.int32),
            jnp.zeros((budget,), loc.z.dtype))


def _record_pick(loc: _Local, carry, t, crit, s):
    """Pick number ``t``: the global argmax of ``s`` over the real candidates not picked yet (ties
    -> lowest global index).

    ``carry`` starts with ``(selected, picks, scores)`` (:func:`_no_picks`; further entries pass
    through); ``crit`` and ``s`` are ``(n_local,)``. Records the pick's global index and its
    ``crit`` value; returns ``(carry', global index)``.
    """
    sel, picks, scs = carry[:3]
    _, g = global_argmax(jnp.where(loc.valid & ~sel, s, loc.neg))
    val = gather_picked(crit, g)
    return (sel | (loc.global_index == g), picks.at[t].set(g), scs.at[t].set(val)) + carry[3:], g


def _local_part(loc: _Local, values):
    """This device's block ``(n_local,)`` of a ``(n_global,)`` array computed on every device."""
    return jax.lax.dynamic_slice(values, (loc.offset,), (loc.n_local,))


def _pick_by_fixed_score(loc: _Local, crit, budget: int):
    """``random`` and ``maxdiag``: the ``budget`` best of one ``(n_local,)`` score, no updates.
    Returns ``(picks, scores)``, ``(budget,)`` each."""

    def body(t, carry):
        return _record_pick(loc, carry, t, crit, crit)[0]

    out = jax.lax.fori_loop(0, budget, body, _no_picks(loc, budget))
    return out[1], out[2]


def _conditioning_matrix(z_s, noise_var):
    """``M = I − z_sᵀ E diag(ρ) Eᵀ z_s`` (``(d, d)``, symmetric): whitened rows ``z`` conditioned on
    observing the rows ``z_s`` (``(r, d)``) are ``z M`` (see the module docstring)."""
    e, rho, _ = _observation_coefficients(z_s, noise_var)
    return jnp.eye(z_s.shape[1], dtype=z_s.dtype) - z_s.T @ ((e * rho) @ e.T) @ z_s


def _pick_varred(loc: _Local, chol_inv_t, sigma, tgram, budget: int):
    """``varred``: greedy total-variance reduction over the target (:func:`varred_gains`); after
    each pick the candidates ``z <- z M`` and the whitened target moment ``G <- M G M``.

    ``chol_inv_t`` and ``tgram`` are ``(d, d)``: ``tgram`` is the raw target moment ``Φ_UᵀΦ_U``.
    Returns ``(picks, scores)``, ``(budget,)`` each.
    """
    noise_var = sigma * sigma
    # whitened target moment G = σ² L⁻¹ M L⁻ᵀ = chol_inv_t-transformed (row convention)
    g0 = noise_var * (chol_inv_t.T @ tgram @ chol_inv_t)

    def body(t, carry):
        z_, g_ = carry[3:]
        crit = varred_gains(z_, g_, noise_var, loc.row_ok)
        carry, gp = _record_pick(loc, carry, t, crit, crit)
        m_ = _conditioning_matrix(gather_picked(z_, gp), noise_var)
        z_new = (z_.reshape(-1, z_.shape[-1]) @ m_).reshape(z_.shape)
        return carry[:3] + (z_new, m_ @ g_ @ m_)

    out = jax.lax.fori_loop(0, budget, body, _no_picks(loc, budget) + (loc.z, g0))
    return out[1], out[2]


def _pick_maxdet(loc: _Local, sigma, budget: int, score_config, maxdet_impl: str):
    """``maxdet``: greedy max posterior variance (``score_config`` reduction of the per-row
    variances) with a rank-``r`` posterior update after each pick, in kernel space
    (``maxdet_impl="kernel"``, or ``"auto"`` with ``budget r <= d``) or in feature space.
    Returns ``(picks, scores)``, ``(budget,)`` each."""
    noise_var = sigma * sigma
    v0 = jnp.sum(loc.z * loc.z, -1)  # (n_local, r) per-row posterior variances
    r, d = loc.z.shape[1], loc.z.shape[2]
    if maxdet_impl == "kernel" or (maxdet_impl == "auto" and budget * r <= d):
        return _pick_maxdet_kernel(loc, noise_var, v0, budget, score_config)
    return _pick_maxdet_feature(loc, noise_var, v0, budget, score_config)


def _pick_maxdet_feature(loc: _Local, noise_var, v0, budget: int, score_config):
    """MaxDet updating the whitened rows in place (:func:`maxdet_update`): memory ``O(n r d)``.
    ``v0``: ``(n_local, r)`` initial per-row variances."""

    def body(t, carry):
        z_, v_ = carry[3:]
        crit = reduce_rows(v_, loc.row_ok, score_config)
        carry, g = _record_pick(loc, carry, t, crit, crit)
        z_s = gather_picked(z_, g)
        return carry[:3] + maxdet_update(z_, z_s, noise_var, v_)

    out = jax.lax.fori_loop(0, budget, body, _no_picks(loc, budget) + (loc.z, v0))
    return out[1], out[2]


def _pick_maxdet_kernel(loc: _Local, noise_var, v0, budget: int, score_config):
    """MaxDet in kernel space (blocked pivoted Cholesky, as bmdal's MaxDet): ``z`` stays fixed,
    ``c`` (``(n_local, r, budget r)``) holds the factor columns, ``k_post(a, b) = z_a z_bᵀ − c_a c_bᵀ``;
    memory ``O(n r budget r)``. ``v0``: ``(n_local, r)`` initial per-row variances."""
    z, nl = loc.z, loc.n_local
    r, d = z.shape[1], z.shape[2]
    dt = z.dtype
    zf = z.reshape(nl * r, d)

    def body(t, carry):
        c, v_ = carry[3:]
        crit = reduce_rows(v_, loc.row_ok, score_config)
        carry, g = _record_pick(loc, carry, t, crit, crit)
        z_s, c_s = gather_picked(z, g), gather_picked(c, g)  # (r, d), (r, budget r)
        cf = c.reshape(nl * r, budget * r)
        kc = zf @ z_s.T - cf @ c_s.T  # (n r, r) current posterior covariance with S
        k_ss = z_s @ z_s.T - c_s @ c_s.T
        chol = jnp.linalg.cholesky(0.5 * (k_ss + k_ss.T) + noise_var * jnp.eye(r, dtype=dt))
        linv = jax.scipy.linalg.solve_triangular(chol, jnp.eye(r, dtype=dt), lower=True)
        new = kc @ linv.T  # (n r, r) new factor columns; r x r solve + GEMM
        c = jax.lax.dynamic_update_slice_in_dim(c, new.reshape(nl, r, r), t * r, axis=2)
        v_ = jnp.maximum(v_ - jnp.sum(new * new, -1).reshape(nl, r), 0.0)
        return carry[:3] + (c, v_)

    c0 = jnp.zeros((nl, r, budget * r), dt)
    out = jax.lax.fori_loop(0, budget, body, _no_picks(loc, budget) + (c0, v0))
    return out[1], out[2]


def _nearest_training_centre(loc: _Local, xd, tvalid, kernel: str):
    """Squared distance ``(n_local,)`` of every candidate to its nearest valid training structure
    and that centre's cluster label ``(n_local,)`` int32 (``1..n_T``; ``inf`` and 0 without
    training structures), in blocks of ``_TRAIN_BLOCK`` centres, one matmul each.

    ``xd``: ``(n_local,)`` kernel diagonal of the candidates; ``tvalid``: ``(n_T,)`` real training
    structures.
    """
    z, tz, nl = loc.z, loc.tz, loc.n_local
    dt = z.dtype
    n_t = tz.shape[0]
    min_sq, closest = jnp.full((nl,), jnp.inf, dt), jnp.zeros((nl,), jnp.int32)
    if n_t == 0:
        return min_sq, closest
    blk = min(n_t, _TRAIN_BLOCK)
    n_blk = -(-n_t // blk)
    pad = n_blk * blk - n_t
    tzp = jnp.concatenate([tz, jnp.zeros((pad,) + tz.shape[1:], dt)])
    tvp = jnp.concatenate([tvalid, jnp.zeros((pad,), bool)])

    def train_body(b, mc):
        cb = jax.lax.dynamic_slice_in_dim(tzp, b * blk, blk)
        vb = jax.lax.dynamic_slice_in_dim(tvp, b * blk, blk)
        dd = xd[:, None] + kernel_diag(cb, kernel)[None] - 2.0 * kernel_cross(z, cb, kernel)
        dd = jnp.where(vb[None], jnp.maximum(dd, 0.0), jnp.inf)
        j = jnp.argmin(dd, axis=1)  # first occurrence = earliest training point
        dmin = jnp.take_along_axis(dd, j[:, None], axis=1)[:, 0]
        upd = dmin < mc[0]
        return jnp.where(upd, dmin, mc[0]), jnp.where(upd, b * blk + j + 1, mc[1]).astype(jnp.int32)

    return jax.lax.fori_loop(0, n_blk, train_body, (min_sq, closest))


def _lcmd_scores(loc: _Local, min_sq, closest, avail, has, xd, n_clusters: int):
    """LCMD's pick score ``(n_local,)``: the distance to the centre within the largest cluster
    (size = sum of its available members' squared distances), ``-inf`` elsewhere; ``xd`` (the
    kernel diagonal) while there is no centre (``has`` False)."""
    # cluster sizes over the candidates still available: a picked centre's distance to
    # itself is 0 only up to rounding, and a residual there could make a cluster whose
    # members are all picked the "largest" (then nothing is pickable; seen with a pool
    # frame repeated, whose copy sits at distance 0 from its picked twin)
    w = jax.ops.segment_sum(jnp.where(avail, min_sq, 0.0), closest, num_segments=n_clusters)
    w = jax.lax.psum(w, POOL_AXIS)
    in_max = w[closest] == jnp.max(w)
    return jnp.where(has, jnp.where(in_max, min_sq, loc.neg), xd)


def _kmeanspp_scores(loc: _Local, key, t, n_global: int, min_sq, avail, has):
    """k-means++'s pick score ``(n_local,)`` for pick ``t``: ``log d² + Gumbel`` noise (the
    Gumbel-max trick samples ∝ d²; candidates at distance 0 are excluded unless all are);
    the noise alone (uniform) while there is no centre or no positive distance."""
    g = _local_part(loc, jax.random.gumbel(jax.random.fold_in(key, t), (n_global,), loc.z.dtype))
    n_pos = jax.lax.psum(jnp.sum(avail & (min_sq > 0)), POOL_AXIS)
    logits = jnp.where(has & (n_pos > 0), jnp.log(jnp.where(min_sq > 0, min_sq, 1.0)), 0.0)
    logits = jnp.where(has & (n_pos > 0) & ~(min_sq > 0), loc.neg, logits)
    return logits + g


def _add_centre(z, xd, min_sq, closest, centre, label, kernel: str):
    """Nearest-centre distances ``(n_local,)`` and cluster labels ``(n_local,)`` after adding the
    centre ``centre`` (``(r, d)`` rows) with cluster ``label``: candidates closer to it than to
    their current centre move to its cluster. ``z``: ``(n_local, r, d)``; ``xd``: its kernel diagonal."""
    dd = sq_dist_to(z, xd, centre, kernel)
    upd = dd < min_sq
    return jnp.where(upd, dd, min_sq), jnp.where(upd, label, closest)


def _pick_by_distance(loc: _Local, tids, key, *, method: str, budget: int, n_global: int, kernel: str):
    """``maxdist``, ``lcmd`` and ``kmeanspp``: greedy picks by the squared distance to the nearest
    centre (training structures first, :func:`_nearest_training_centre`; every pick becomes a
    centre, cluster label ``n_T + 1 + t``). Returns ``(picks, scores)``, ``(budget,)`` each; the
    score is the distance to the nearest centre (the kernel diagonal before the first centre)."""
    z = loc.z
    xd = kernel_diag(z, kernel)
    n_t = loc.tz.shape[0]
    tvalid = tids >= 0
    min_sq, closest = _nearest_training_centre(loc, xd, tvalid, kernel)
    n_centres = jnp.sum(tvalid).astype(jnp.int32)

    def body(t, carry):
        sel, picks, scs, min_sq, closest, n_c = carry
        has = n_c > 0
        crit = jnp.where(has, min_sq, xd)
        avail = loc.valid & ~sel
        if method == "maxdist":
            s = crit
        elif method == "lcmd":
            s = _lcmd_scores(loc, min_sq, closest, avail, has, xd, n_t + budget + 1)
        else:  # kmeanspp
            s = _kmeanspp_scores(loc, key, t, n_global, min_sq, avail, has)
        (sel, picks, scs), gpick = _record_pick(loc, (sel, picks, scs), t, crit, s)
        min_sq, closest = _add_centre(z, xd, min_sq, closest, gather_picked(z, gpick), n_t + 1 + t, kernel)
        return sel, picks, scs, min_sq, closest, n_c + 1

    out = jax.lax.fori_loop(0, budget, body, _no_picks(loc, budget) + (min_sq, closest, n_centres))
    return out[1], out[2]


def _compiled(compiled, method, budget, n_global, kernel, score_config, use_posterior, maxdet_impl, mesh):
    """The jitted, sharded selector for these static arguments, kept in the caller's ``compiled``
    dict (:func:`ntkal.cache.build_once`; ``None``: built for one call)."""
    def build():
        core = functools.partial(_core, method=method, budget=budget, n_global=n_global, kernel=kernel,
                                 score_config=score_config, use_posterior=use_posterior,
                                 maxdet_impl=maxdet_impl)
        sh, rep = sharded(POOL_AXIS), replicated()
        return jax.jit(jax.shard_map(core, mesh=mesh, in_specs=(sh, sh, sh, rep, rep, rep, rep, rep, rep, rep),
                                     out_specs=(rep, rep), check_vma=False))

    key = ("ntkal.posterior.selectors", method, budget, n_global, kernel, score_config, use_posterior,
           maxdet_impl, mesh)
    return build_once(compiled, key, build)


def select_batch(
    method: str,
    candidates: FeatureChunk,
    *,
    budget: int,
    key: Optional[jax.Array] = None,
    posterior: Optional[Posterior] = None,
    train: Optional[FeatureChunk] = None,
    kernel: str = "trace",
    score_config: ScoreConfig = ScoreConfig(),
    mesh=None,
    dtype=None,
    maxdet_impl: str = "auto",
    target_gram=None,
    compiled: Optional[dict] = None,
) -> Selection:
    """Select ``budget`` candidates with ``method`` (see module docstring).

    Args:
      method: one of :data:`SELECTORS`.
      candidates: :class:`FeatureChunk`, rows ``(n, r, d)``.
      budget: number of picks (static; changing it recompiles).
      key: PRNG key, required by ``random`` and ``kmeanspp``.
      posterior: required by ``maxdiag``/``maxdet`` (use
        ``fit_posterior([], d, noise_var=...)`` for the prior); optional for
        the distance methods (then distances use the posterior kernel).
      train: training features (distance methods only, TP mode).
      kernel: ``"trace"`` or ``"hs"`` (:class:`StructureKernel`).
      score_config: reduction used by ``maxdiag``/``maxdet``.
      mesh: 1-D pool mesh (default: all devices).
      dtype: compute dtype (default float64 if x64 is enabled else float32).
      maxdet_impl: ``"feature"`` (update whitened rows, memory ``O(n r d)``),
        ``"kernel"`` (blocked pivoted Cholesky, memory ``O(n r^2 budget)``,
        fewer passes over the data) or ``"auto"`` (kernel if ``budget r <= d``).
        Same picks up to rounding.
      target_gram: ``varred`` only: ``(d, d)`` raw second moment ``Φ_UᵀΦ_U`` of the target
        set in the same (scaled) feature space as the candidates
        (:func:`target_second_moment`).
      compiled: a dict owned by the caller that keeps the compiled selector programs between
        calls (keyed by the static arguments: method, budget, padded pool size, kernel, score
        config, mesh; :mod:`ntkal.cache.owned`), released with it. ``None``: compiled for this
        call only (:func:`make_selector` binds a dict of its own).

    Returns:
      :class:`Selection` with ``(budget,)`` indices, ids and per-pick scores.

    Raises:
      ValueError: unknown method, empty pool, budget < 1 or larger than the
        number of valid candidates, missing key/posterior, d or r mismatch.
    """
    if method not in SELECTORS:
        raise ValueError(f"unknown selector {method!r}; choose from {SELECTORS}")
    kernel = StructureKernel(kernel).value
    shape = tuple(np.shape(candidates.rows))
    if len(shape) != 3:
        raise ValueError(f"candidate rows must be (n, r, d), got shape {shape}")
    n, r, d = shape
    ids = np.asarray(candidates.ids, np.int32)
    n_valid = int(np.sum(ids >= 0))
    if n_valid == 0:
        raise ValueError("empty pool: no valid candidate (all ids < 0 or no rows)")
    if not 1 <= budget <= n_valid:
        raise ValueError(f"budget must be in [1, n_valid={n_valid}], got {budget}")
    if method in _NEEDS_KEY and key is None:
        raise ValueError(f"selector {method!r} needs a PRNG key")
    if method in _NEEDS_POSTERIOR and posterior is None:
        raise ValueError(f"selector {method!r} needs a posterior (fit_posterior([], d, noise_var=...) for the prior)")
    if posterior is not None and posterior.dim != d:
        raise ValueError(f"feature dimension mismatch: posterior has d={posterior.dim}, candidates have d={d}")
    if method == "varred" and target_gram is None:
        raise ValueError("selector 'varred' needs target_gram (target_second_moment(pool_chunks, d))")
    if target_gram is not None and np.shape(target_gram) != (d, d):
        raise ValueError(f"target_gram must be ({d}, {d}), got {np.shape(target_gram)}")
    if train is not None and method not in _DISTANCE:
        raise ValueError(f"train features only apply to {_DISTANCE}; for {method!r} put them in the posterior")
    dt = compute_dtype(dtype)
    if train is None:
        t_rows, t_mask, t_ids = np.zeros((0, r, d), dt), np.zeros((0, r), bool), np.zeros((0,), np.int32)
    else:
        t_rows = np.asarray(train.rows, dt)
        if t_rows.ndim != 3 or t_rows.shape[1:] != (r, d):
            raise ValueError(f"train rows shape {t_rows.shape} incompatible with candidates (r={r}, d={d})")
        t_mask, t_ids = np.asarray(train.row_mask, bool), np.asarray(train.ids, np.int32)
    mesh = make_pool_mesh() if mesh is None else mesh
    # pad on device (the shortlist usually lives there) to a multiple of the device count
    pad = max(mesh.devices.size, -(-n // mesh.devices.size) * mesh.devices.size) - n
    x = jnp.pad(jnp.asarray(candidates.rows, dt), ((0, pad), (0, 0), (0, 0)))
    m = jnp.pad(jnp.asarray(candidates.row_mask, bool), ((0, pad), (0, 0)))
    i = jnp.pad(jnp.asarray(ids), (0, pad), constant_values=-1)
    if posterior is not None:
        chol_inv_t, sigma = posterior_arrays(posterior, dt)
    else:
        chol_inv_t, sigma = jnp.eye(d, dtype=dt), jnp.ones((), dt)
    key = jax.random.PRNGKey(0) if key is None else key
    if maxdet_impl not in ("auto", "feature", "kernel"):
        raise ValueError(f"maxdet_impl must be 'auto', 'feature' or 'kernel', got {maxdet_impl!r}")
    fn = _compiled(compiled, method, int(budget), x.shape[0], kernel, score_config, posterior is not None,
                   maxdet_impl, mesh)
    tgram = jnp.zeros((d, d), dt) if target_gram is None else jnp.asarray(target_gram, dt)
    idx, scores = fn(x, m, i, t_rows, t_mask, t_ids, key, chol_inv_t, sigma, tgram)
    return Selection(idx, jnp.asarray(ids)[idx], scores)


def make_selector(method: str, **hparams):
    """Bind a method and its hyperparameters: ``fn(candidates, *, budget, key=None, **kw)``.

    The selector owns its compiled programs (a ``compiled`` dict of its own unless
    ``hparams`` gives one): calls with the same static arguments compile once.
    """
    if method not in SELECTORS:
        raise ValueError(f"unknown selector {method!r}; choose from {SELECTORS}")
    hparams.setdefault("compiled", {})
    return functools.partial(select_batch, method, **hparams)


def select_random(candidates: FeatureChunk, *, budget: int, key, **kwargs) -> Selection:
    """Uniform random picks without replacement; see :func:`select_batch`."""
    return select_batch("random", candidates, budget=budget, key=key, **kwargs)


def select_maxdiag(candidates: FeatureChunk, *, budget: int, posterior: Posterior, **kwargs) -> Selection:
    """Top-``budget`` posterior variance (no updates); see :func:`select_batch`."""
    return select_batch("maxdiag", candidates, budget=budget, posterior=posterior, **kwargs)


def select_maxdet(candidates: FeatureChunk, *, budget: int, posterior: Posterior = None, **kwargs) -> Selection:
    """Greedy max-PV with rank-``r`` posterior updates (MaxDet); see :func:`select_batch`."""
    return select_batch("maxdet", candidates, budget=budget, posterior=posterior, **kwargs)


def select_maxdist(candidates: FeatureChunk, *, budget: int, **kwargs) -> Selection:
    """Greedy farthest-point (MaxDist); see :func:`select_batch`."""
    return select_batch("maxdist", candidates, budget=budget, **kwargs)


def select_lcmd(candidates: FeatureChunk, *, budget: int, **kwargs) -> Selection:
    """Largest-cluster maximum distance (LCMD); see :func:`select_batch`."""
    return select_batch("lcmd", candidates, budget=budget, **kwargs)


def select_kmeanspp(candidates: FeatureChunk, *, budget: int, key=None, **kwargs) -> Selection:
    """k-means++ seeding (sampling proportional to squared distance); see :func:`select_batch`."""
    return select_batch("kmeanspp", candidates, budget=budget, key=key, **kwargs)
