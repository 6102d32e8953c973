"""Names of the acquisition options (JAX-free, so configs and the CLI can check them cheaply)."""

__all__ = ["SELECTORS", "NORMALIZATIONS", "REDUCTIONS", "NOISE_RULES", "TARGET_WEIGHTINGS"]

#: Batch selectors (:func:`ntkal.posterior.select_batch`).
SELECTORS = ("random", "maxdiag", "maxdet", "varred", "maxdist", "lcmd", "kmeanspp")
#: Feature normalisations (:mod:`ntkal.posterior.normalize`).
NORMALIZATIONS = ("mean_trace", "median_trace", "per_structure")
#: Per-structure reductions of row variances (:class:`ntkal.posterior.ScoreConfig`).
REDUCTIONS = ("total", "mean", "max")
#: How σ² is chosen: a fixed value, the evidence maximiser, or evidence where an energy row exists.
NOISE_RULES = ("fixed", "evidence", "auto")
#: How ``varred``'s target moment counts each target structure (:func:`ntkal.posterior.target_second_moment`).
TARGET_WEIGHTINGS = ("none", "per_structure")
