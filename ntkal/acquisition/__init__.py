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
    "FeatureChunk": "ntkal.acquisition._chunk",
    "Selection": "ntkal.acquisition._chunk",
    "chunk_from_arrays": "ntkal.acquisition._chunk",
    "graph_mask": "ntkal.acquisition._chunk",
    "iterate_chunks": "ntkal.acquisition._chunk",
    "masked_rows": "ntkal.acquisition._chunk",
    "pad_chunk": "ntkal.acquisition._chunk",
    "qbc_force_disagreement": "ntkal.acquisition.committee",
    "NORMALIZATIONS": "ntkal.acquisition.normalize",
    "FeatureScale": "ntkal.acquisition.normalize",
    "apply_feature_scale": "ntkal.acquisition.normalize",
    "fit_feature_scale": "ntkal.acquisition.normalize",
    "structure_traces": "ntkal.acquisition.normalize",
    "Posterior": "ntkal.acquisition.posterior",
    "PosteriorConfig": "ntkal.acquisition.posterior",
    "PosteriorFns": "ntkal.acquisition.posterior",
    "PrecisionState": "ntkal.acquisition.posterior",
    "cholesky_with_jitter": "ntkal.acquisition.posterior",
    "evidence_noise_var": "ntkal.acquisition.posterior",
    "feature_posterior": "ntkal.acquisition.posterior",
    "fit_posterior": "ntkal.acquisition.posterior",
    "ScoreConfig": "ntkal.acquisition.scores",
    "compute_dtype": "ntkal.acquisition.scores",
    "posterior_arrays": "ntkal.acquisition.scores",
    "pv_rows": "ntkal.acquisition.scores",
    "pv_scores": "ntkal.acquisition.scores",
    "reduce_rows": "ntkal.acquisition.scores",
    "whiten": "ntkal.acquisition.scores",
    "SELECTORS": "ntkal.acquisition.selectors",
    "make_selector": "ntkal.acquisition.selectors",
    "maxdet_update": "ntkal.acquisition.selectors",
    "select_batch": "ntkal.acquisition.selectors",
    "select_kmeanspp": "ntkal.acquisition.selectors",
    "select_lcmd": "ntkal.acquisition.selectors",
    "select_maxdet": "ntkal.acquisition.selectors",
    "select_maxdiag": "ntkal.acquisition.selectors",
    "select_maxdist": "ntkal.acquisition.selectors",
    "select_random": "ntkal.acquisition.selectors",
    "accumulate_second_moment": "ntkal.acquisition.selectors",
    "target_second_moment": "ntkal.acquisition.selectors",
    "varred_gains": "ntkal.acquisition.selectors",
    "POOL_AXIS": "ntkal.acquisition.sharding",
    "gather_picked": "ntkal.acquisition.sharding",
    "global_argmax": "ntkal.acquisition.sharding",
    "initialize_distributed": "ntkal.acquisition.sharding",
    "make_pool_mesh": "ntkal.acquisition.sharding",
    "ShortlistFns": "ntkal.acquisition.shortlist",
    "ShortlistState": "ntkal.acquisition.shortlist",
    "merge_topk": "ntkal.acquisition.shortlist",
    "shortlist_pool": "ntkal.acquisition.shortlist",
    "streaming_shortlist": "ntkal.acquisition.shortlist",
    "StructureKernel": "ntkal.acquisition.structure_kernel",
    "kernel_cross": "ntkal.acquisition.structure_kernel",
    "kernel_diag": "ntkal.acquisition.structure_kernel",
    "kernel_to": "ntkal.acquisition.structure_kernel",
    "sq_dist_to": "ntkal.acquisition.structure_kernel",
}

__all__ = list(_WHERE)

__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
