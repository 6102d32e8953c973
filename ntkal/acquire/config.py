"""The one frozen configuration of the acquisition pipeline (JAX-free).

:class:`AcquisitionConfig` is what ``ntkal select`` parses from its flags, what a loop config
(:class:`ntkal.loop.LoopConfig`) derives for its kernel rounds, and what every JSON record of a
selection stores (:meth:`AcquisitionConfig.to_dict`). Importing this module does not import JAX.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ntkal.posterior.names import NOISE_RULES, NORMALIZATIONS, REDUCTIONS, SELECTORS, TARGET_WEIGHTINGS
from ntkal.added_fields import added_field
from ntkal.kernels.config import KINDS, KernelConfig

__all__ = ["AcquisitionConfig", "CASCADE_KINDS", "DISTANCE_SELECTORS"]

#: Kernels cheap enough for the cascade's first stage (no position derivatives).
CASCADE_KINDS = ("energy", "embedding", "last_layer", "atom_embedding")
#: Selectors that also take the training features as initial centres (train+pool mode).
DISTANCE_SELECTORS = ("lcmd", "maxdist", "kmeanspp")


@dataclasses.dataclass(frozen=True)
class AcquisitionConfig:
    """featurise → scale → posterior → [cheap stage →] shortlist → select, in one place.

    Attributes:
      kernel: the feature map (:class:`~ntkal.kernels.KernelConfig`); its ``w_energy`` and
        ``w_force`` are ignored (``joint_weights`` sets the joint block weights).
      joint_weights: ``"auto"`` (w_E = 1 and the trace-equalising w_F of the training set:
        both blocks have the same summed squared norm) or a pair ``(w_E, w_F)``.
      selector: batch selector on the shortlist (:data:`ntkal.posterior.SELECTORS`).
      shortlist: m, structures kept by the streaming posterior-variance top-m.
      noise_var: σ², relative to the feature unit set by ``feature_norm`` (rule ``"fixed"``).
      noise_rule: ``"fixed"``; ``"evidence"`` (σ² maximises the marginal likelihood of the
        training set's energy residuals under the energy rows; needs energy labels and an
        ``energy`` or ``joint`` kernel); ``"auto"`` (evidence where that is possible, else fixed).
      feature_norm: one of :data:`ntkal.posterior.NORMALIZATIONS`.
      reduction: per-structure reduction of row variances (``total``, ``mean``, ``max``).
      max_force_quantile: outlier guard: candidates whose predicted max |F| lies above this
        quantile of the pool's are never picked (1.0 = off).
      cascade: ``None`` or a cheap kernel kind (:data:`CASCADE_KINDS`): a first stage scores
        the whole pool with it and only the top ``cascade_keep`` fraction is featurised with
        ``kernel``.
      cascade_keep: q, the fraction of the pool the first stage keeps (0 < q ≤ 1; at least the
        batch size is kept). Keep many times the batch: with ``atom_embedding`` and q = 0.1 the
        kept set held 0.95 of the joint-PV top-100 of a 16,000-structure pool (q·n = 16 B) but
        0.59 of a 1,000-structure pool's (q·n = B); ``experiments/cascade_recall.py``.
      chunk_size: structures per featurisation chunk.
      size_classes: at most this many padding classes; each structure is padded to its class's
        atom and edge budget (1 = everything padded to the largest structure). Every class is
        one compilation of the feature map.
      max_padding: use the fewest classes (≤ ``size_classes``) whose padded atom slots are
        within this factor of the real atoms (1.0 = the ``size_classes``-class optimum).
      min_class_chunks: at most one class per this many chunks of structures (a small pool is
        not worth one compilation per class: 66 structures in chunks of 16 get one class).
      prefetch: padded chunks prepared on a background thread ahead of the device (0 = off).
      feature_devices: local devices that featurise side by side, one chunk each
        (:mod:`ntkal.acquire.devices`); 0 = all of this process's devices, 1 = the default one.
        The features, and so the picks, do not depend on it.
      seed: seeds the sketch, the probes and the random/k-means++ selectors.
      target_weighting: how ``varred``'s target (every scored pool structure) counts each
        structure (:data:`ntkal.posterior.TARGET_WEIGHTINGS`): ``"none"`` by its squared
        feature norm, so high-force structures dominate the variance it reduces;
        ``"per_structure"`` once each (:func:`ntkal.posterior.target_second_moment`).
      force_noise_scale: c, a soft outlier weight (0 = off): a candidate whose predicted max
        |F| is f counts as observed with label noise ``σ²·(1 + (f / (c·f_med))²)``, f_med the
        median predicted max |F| of the candidates, so a frame with c·f_med of force is worth
        half a typical one and one far beyond it little. It acts on the candidate side only
        (the shortlist and the selector see rows scaled by ``(1 + (f / (c·f_med))²)^(-1/2)``);
        ``varred``'s target still counts every candidate unweighted.
      evidence_offsets: the evidence rule first removes the per-element least-squares offsets
        from the training residuals (label − model energy). For a model whose reference energies
        are refit to the labels' zero (the AL loop's ``[train] refit_e0``, a foundation model
        fine-tuned toward another level of theory): the offsets are not in the span of the
        features, and left in, hundreds of eV of offset drove the evidence to the smallest σ²
        of its grid (1e-9), where the float32 selectors broke down.
    """

    kernel: KernelConfig = KernelConfig(kind="joint", sketch_dim=512, num_probes=4)
    joint_weights: str | tuple[float, float] = "auto"
    selector: str = "varred"
    shortlist: int = 2000
    noise_var: float = 1e-2
    noise_rule: str = "auto"
    feature_norm: str = "median_trace"
    reduction: str = "total"
    max_force_quantile: float = 1.0
    cascade: str | None = None
    cascade_keep: float = 0.1
    chunk_size: int = 16
    size_classes: int = 6
    max_padding: float = 1.2
    min_class_chunks: int = 4
    prefetch: int = 2
    feature_devices: int = 0
    seed: int = 0
    target_weighting: str = added_field("none", added_in="0.1 (issue 9)")
    force_noise_scale: float = added_field(0.0, added_in="0.1 (issue 9)")
    evidence_offsets: bool = added_field(False, added_in="0.1 (issue 28)")

    def __post_init__(self):
        if not isinstance(self.kernel, KernelConfig):
            raise TypeError(f"kernel must be a KernelConfig, got {type(self.kernel).__name__}")
        if self.joint_weights != "auto":
            try:
                w = tuple(float(x) for x in self.joint_weights)
            except (TypeError, ValueError):
                w = ()
            if len(w) != 2 or min(w) < 0 or max(w) == 0:
                raise ValueError(f"joint_weights must be 'auto' or two non-negative numbers (w_E, w_F), "
                                 f"got {self.joint_weights!r}")
            object.__setattr__(self, "joint_weights", w)
        if self.selector not in SELECTORS:
            raise ValueError(f"selector must be one of {SELECTORS}, got {self.selector!r}")
        if self.noise_rule not in NOISE_RULES:
            raise ValueError(f"noise_rule must be one of {NOISE_RULES}, got {self.noise_rule!r}")
        if self.noise_rule == "evidence" and self.kernel.kind not in ("energy", "joint"):
            raise ValueError(f"noise_rule='evidence' needs an energy row (kernel 'energy' or 'joint'), "
                             f"got {self.kernel.kind!r}")
        if not self.noise_var > 0:
            raise ValueError(f"noise_var must be > 0, got {self.noise_var}")
        if self.feature_norm not in NORMALIZATIONS:
            raise ValueError(f"feature_norm must be one of {NORMALIZATIONS}, got {self.feature_norm!r}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if self.target_weighting not in TARGET_WEIGHTINGS:
            raise ValueError(f"target_weighting must be one of {TARGET_WEIGHTINGS}, got {self.target_weighting!r}")
        if not (math.isfinite(self.force_noise_scale) and self.force_noise_scale >= 0.0):
            raise ValueError(f"force_noise_scale must be >= 0 (0 = off), got {self.force_noise_scale}")
        if not 0.0 < self.max_force_quantile <= 1.0:
            raise ValueError(f"max_force_quantile must be in (0, 1], got {self.max_force_quantile}")
        if self.cascade is not None and self.cascade not in CASCADE_KINDS:
            raise ValueError(f"cascade must be None or one of {CASCADE_KINDS}, got {self.cascade!r}")
        if not 0.0 < self.cascade_keep <= 1.0:
            raise ValueError(f"cascade_keep must be in (0, 1], got {self.cascade_keep}")
        for name in ("shortlist", "chunk_size", "size_classes", "min_class_chunks"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.max_padding >= 1.0:
            raise ValueError(f"max_padding must be >= 1, got {self.max_padding}")
        if self.prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {self.prefetch}")
        if self.feature_devices < 0:
            raise ValueError(f"feature_devices must be >= 0 (0 = all local devices), got {self.feature_devices}")

    def max_classes(self, n_structures: int) -> int:
        """Size classes allowed for ``n_structures``: ``size_classes``, fewer for small sets."""
        return max(1, min(int(self.size_classes),
                          int(n_structures) // (int(self.min_class_chunks) * int(self.chunk_size))))

    @property
    def kind(self) -> str:
        """The (second-stage) kernel kind."""
        return self.kernel.kind

    @property
    def cascade_kernel(self) -> KernelConfig | None:
        """The first stage's kernel (``None`` without a cascade): ``cascade``'s kind with the
        second stage's sketch, parameter filter, seed and pooling."""
        if self.cascade is None:
            return None
        k = self.kernel
        return KernelConfig(kind=self.cascade, sketch_dim=k.sketch_dim, sketch_kind=k.sketch_kind,
                            param_filter=k.param_filter, seed=k.seed, pool=k.pool)

    def uses_evidence(self, have_energies: bool = True) -> bool:
        """Whether σ² comes from the evidence (``noise_rule`` resolved for this kernel)."""
        if self.noise_rule == "evidence":
            return True
        return self.noise_rule == "auto" and self.kind in ("energy", "joint") and have_energies

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record (nested kernel config; enums as their values)."""
        out = dataclasses.asdict(self)
        out["kernel"]["formulation"] = str(getattr(self.kernel.formulation, "value", self.kernel.formulation))
        if isinstance(out["kernel"]["param_filter"], tuple):
            out["kernel"]["param_filter"] = list(out["kernel"]["param_filter"])
        if isinstance(out["joint_weights"], tuple):
            out["joint_weights"] = list(out["joint_weights"])
        return out

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "AcquisitionConfig":
        """Inverse of :meth:`to_dict` (unknown keys raise ``ValueError``)."""
        record = dict(record)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(record) - names
        if unknown:
            raise ValueError(f"unknown acquisition settings {sorted(unknown)}; known: {sorted(names)}")
        if isinstance(record.get("kernel"), dict):
            kernel = dict(record["kernel"])
            if isinstance(kernel.get("param_filter"), list):
                kernel["param_filter"] = tuple(kernel["param_filter"])
            record["kernel"] = KernelConfig(**kernel)
        if isinstance(record.get("joint_weights"), list):
            record["joint_weights"] = tuple(record["joint_weights"])
        return cls(**record)
