"""Acquisition: feature-space posterior, PV scores, streaming shortlist, batch selectors.

Sees feature rows only (``FeatureChunk``); knows nothing about MLIPs.  Typical use::

    post = fit_posterior(train_chunks, d, noise_var=1e-2)
    short = shortlist_pool(pool_chunks, post, m=2000)       # streaming top-m by PV
    sel = select_lcmd(short.as_chunk(), budget=100, posterior=post, train=train_chunk)
    picked_ids = sel.ids
"""

from ntkal.acquisition._chunk import (
    FeatureChunk, Selection, chunk_from_arrays, graph_mask, iterate_chunks, masked_rows, pad_chunk,
)
from ntkal.acquisition.committee import qbc_force_disagreement
from ntkal.acquisition.normalize import (
    NORMALIZATIONS, FeatureScale, apply_feature_scale, fit_feature_scale, structure_traces,
)
from ntkal.acquisition.posterior import (
    Posterior, PosteriorConfig, PosteriorFns, PrecisionState, cholesky_with_jitter,
    evidence_noise_var, feature_posterior, fit_posterior,
)
from ntkal.acquisition.scores import (
    ScoreConfig, compute_dtype, posterior_arrays, pv_rows, pv_scores, reduce_rows, whiten,
)
from ntkal.acquisition.selectors import (
    SELECTORS, make_selector, maxdet_update, select_batch, select_kmeanspp, select_lcmd,
    accumulate_second_moment, target_second_moment, varred_gains,
    select_maxdet, select_maxdiag, select_maxdist, select_random,
)
from ntkal.acquisition.sharding import (
    POOL_AXIS, gather_picked, global_argmax, initialize_distributed, make_pool_mesh,
)
from ntkal.acquisition.shortlist import (
    ShortlistFns, ShortlistState, merge_topk, shortlist_pool, streaming_shortlist,
)
from ntkal.acquisition.structure_kernel import (
    StructureKernel, kernel_cross, kernel_diag, kernel_to, sq_dist_to,
)

__all__ = [
    "FeatureChunk", "Selection", "chunk_from_arrays", "graph_mask", "iterate_chunks",
    "masked_rows", "pad_chunk",
    "qbc_force_disagreement",
    "NORMALIZATIONS", "FeatureScale", "apply_feature_scale", "fit_feature_scale", "structure_traces",
    "Posterior", "PosteriorConfig", "PosteriorFns", "PrecisionState", "cholesky_with_jitter",
    "evidence_noise_var", "feature_posterior", "fit_posterior",
    "ScoreConfig", "compute_dtype", "posterior_arrays", "pv_rows", "pv_scores", "reduce_rows",
    "whiten",
    "SELECTORS", "make_selector", "maxdet_update", "select_batch", "select_kmeanspp",
    "select_lcmd", "select_maxdet", "select_maxdiag", "select_maxdist", "select_random",
    "accumulate_second_moment", "target_second_moment", "varred_gains",
    "POOL_AXIS", "gather_picked", "global_argmax", "initialize_distributed", "make_pool_mesh",
    "ShortlistFns", "ShortlistState", "merge_topk", "shortlist_pool", "streaming_shortlist",
    "StructureKernel", "kernel_cross", "kernel_diag", "kernel_to", "sq_dist_to",
]
