"""Acquisition: feature-space posterior, PV scores, streaming shortlist, batch selectors.

Sees feature rows only (``FeatureChunk``); knows nothing about MLIPs.  Typical use::

    post = fit_posterior(train_chunks, d, noise_var=1e-2)
    short = shortlist_pool(pool_chunks, post, m=2000)       # streaming top-m by PV
    sel = select_lcmd(short.as_chunk(), budget=100, posterior=post, train=train_chunk)
    picked_ids = sel.ids

Submodules are imported on first use (PEP 562), so light-weight users (the CLI, configs)
do not pay for JAX.
"""

from __future__ import annotations

from ntkal._lazy import lazy_attributes

#: public name -> defining module
_WHERE = {
    "FeatureChunk": "ntkal.posterior._chunk",
    "Selection": "ntkal.posterior._chunk",
    "chunk_from_arrays": "ntkal.posterior._chunk",
    "graph_mask": "ntkal.posterior._chunk",
    "iterate_chunks": "ntkal.posterior._chunk",
    "masked_rows": "ntkal.posterior._chunk",
    "pad_chunk": "ntkal.posterior._chunk",
    "qbc_force_disagreement": "ntkal.posterior.committee",
    "NORMALIZATIONS": "ntkal.posterior.normalize",
    "FeatureScale": "ntkal.posterior.normalize",
    "apply_feature_scale": "ntkal.posterior.normalize",
    "fit_feature_scale": "ntkal.posterior.normalize",
    "structure_traces": "ntkal.posterior.normalize",
    "Posterior": "ntkal.posterior.posterior",
    "PosteriorConfig": "ntkal.posterior.posterior",
    "PosteriorFns": "ntkal.posterior.posterior",
    "PrecisionState": "ntkal.posterior.posterior",
    "cholesky_with_jitter": "ntkal.posterior.posterior",
    "evidence_noise_var": "ntkal.posterior.posterior",
    "feature_posterior": "ntkal.posterior.posterior",
    "fit_posterior": "ntkal.posterior.posterior",
    "ScoreConfig": "ntkal.posterior.scores",
    "compute_dtype": "ntkal.posterior.scores",
    "posterior_arrays": "ntkal.posterior.scores",
    "pv_rows": "ntkal.posterior.scores",
    "pv_scores": "ntkal.posterior.scores",
    "reduce_rows": "ntkal.posterior.scores",
    "whiten": "ntkal.posterior.scores",
    "SELECTORS": "ntkal.posterior.selectors",
    "make_selector": "ntkal.posterior.selectors",
    "maxdet_update": "ntkal.posterior.selectors",
    "select_batch": "ntkal.posterior.selectors",
    "select_kmeanspp": "ntkal.posterior.selectors",
    "select_lcmd": "ntkal.posterior.selectors",
    "select_maxdet": "ntkal.posterior.selectors",
    "select_maxdiag": "ntkal.posterior.selectors",
    "select_maxdist": "ntkal.posterior.selectors",
    "select_random": "ntkal.posterior.selectors",
    "accumulate_second_moment": "ntkal.posterior.selectors",
    "target_second_moment": "ntkal.posterior.selectors",
    "varred_gains": "ntkal.posterior.selectors",
    "POOL_AXIS": "ntkal.posterior.sharding",
    "gather_picked": "ntkal.posterior.sharding",
    "global_argmax": "ntkal.posterior.sharding",
    "initialize_distributed": "ntkal.posterior.sharding",
    "make_pool_mesh": "ntkal.posterior.sharding",
    "ShortlistFns": "ntkal.posterior.shortlist",
    "ShortlistState": "ntkal.posterior.shortlist",
    "merge_topk": "ntkal.posterior.shortlist",
    "shortlist_pool": "ntkal.posterior.shortlist",
    "streaming_shortlist": "ntkal.posterior.shortlist",
    "StructureKernel": "ntkal.posterior.structure_kernel",
    "kernel_cross": "ntkal.posterior.structure_kernel",
    "kernel_diag": "ntkal.posterior.structure_kernel",
    "kernel_to": "ntkal.posterior.structure_kernel",
    "sq_dist_to": "ntkal.posterior.structure_kernel",
}

__all__ = list(_WHERE)

__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
