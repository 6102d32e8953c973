"""Frozen configuration of a kernel feature map (validated once, at the edge)."""

from __future__ import annotations

import dataclasses
import enum

__all__ = ["KernelConfig", "ForceFormulation", "KINDS", "SKETCH_KINDS"]

#: Feature-map kinds understood by :func:`ntkal.kernels.make_feature_map`.
KINDS = ("embedding", "last_layer", "atom_embedding", "energy", "force_exact", "force_probe", "joint")
#: Random sketch distributions (both scaled so that E[S Sᵀ] = I).
SKETCH_KINDS = ("gaussian", "rademacher")


class ForceFormulation(str, enum.Enum):
    """How the mixed derivative ∂(∇_θ E)/∂r is contracted with a position tangent t.

    * ``JACFWD`` — the trusted reference: ``jax.jacfwd`` of the sketched parameter
      gradient over *all* positions at once (no direction batching; memory grows with N).
      For the probe estimator it contracts the full Jacobian with the tangents.
    * ``JVP`` — forward-over-reverse: ``jax.jvp`` of r ↦ Sᵀ∇_θE(θ, r) along each
      direction t, directions batched with ``lax.map(batch_size=direction_batch_size)``.
    * ``VJP`` — reverse-over-reverse: Sᵀ∇_θ [ ∇_r E(θ, r) · t ] per direction, batched the
      same way (the "vjp of ∇_r E over unit cotangents" form).

    All three give the same numbers (tested); ``JVP``/``VJP`` bound peak memory by the
    direction batch, not by N.
    """

    JACFWD = "jacfwd"
    JVP = "jvp"
    VJP = "vjp"


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Hyper-parameters of a feature map. Every field is static: changing one recompiles.

    Attributes:
      kind: one of :data:`KINDS`.
      sketch_dim: d, the sketch width; ``None`` = unsketched (d = P_s, small models only).
        Ignored by ``embedding``, ``last_layer`` and ``atom_embedding``.
      sketch_kind: ``"gaussian"`` (N(0, 1/d) entries) or ``"rademacher"`` (±1/√d).
      param_filter: which parameters θ_s the NTK differentiates; see
        :func:`ntkal.kernels.select_params` (``"all"``, ``"readout"``, ``"last_interaction"``,
        or a tuple of path substrings).
      num_probes: k, Rademacher position tangents of the probe estimator.
      w_energy: w_E, weight of the energy row of the joint kernel.
      w_force: w_F, weight of the force rows of the joint kernel (see
        :func:`ntkal.kernels.default_joint_weights` for the trace-equalising choice).
      joint_force: ``"probe"`` or ``"exact"`` force rows inside the joint kernel.
      seed: seeds the sketch S and the probe tangents.
      direction_batch_size: position directions per ``lax.map`` step (bounds peak memory of
        force features); ``None`` = all directions at once (vmap).
      graph_batch_size: graphs per ``lax.map`` step within a chunk; ``None`` = vmap all.
      formulation: a :class:`ForceFormulation` (or its string value).
      pool: embedding pooling over atoms: ``"mean"``, ``"sum"`` or ``"mean_sum"``
        (concatenation, d = 2F).
      hoist_sketch: generate every sketch block once per call and keep all P_s×d entries in
        memory (fast) instead of regenerating them leaf by leaf inside each direction step
        (memory ~ largest leaf × d). ``None`` = hoist when P_s·d ≤ 2^26 entries.
    """

    kind: str = "energy"
    sketch_dim: int | None = 256
    sketch_kind: str = "gaussian"
    param_filter: str | tuple[str, ...] = "all"
    num_probes: int = 8
    w_energy: float = 1.0
    w_force: float = 1.0
    joint_force: str = "probe"
    seed: int = 0
    direction_batch_size: int | None = 32
    graph_batch_size: int | None = None
    formulation: ForceFormulation | str = ForceFormulation.JVP
    pool: str = "mean"
    hoist_sketch: bool | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.sketch_dim is not None and int(self.sketch_dim) < 1:
            raise ValueError(f"sketch_dim must be >= 1 or None, got {self.sketch_dim}")
        if self.sketch_kind not in SKETCH_KINDS:
            raise ValueError(f"sketch_kind must be one of {SKETCH_KINDS}, got {self.sketch_kind!r}")
        if self.num_probes < 1:
            raise ValueError(f"num_probes must be >= 1, got {self.num_probes}")
        if self.joint_force not in ("probe", "exact"):
            raise ValueError(f"joint_force must be 'probe' or 'exact', got {self.joint_force!r}")
        if self.pool not in ("mean", "sum", "mean_sum"):
            raise ValueError(f"pool must be 'mean', 'sum' or 'mean_sum', got {self.pool!r}")
        for name in ("direction_batch_size", "graph_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        object.__setattr__(self, "formulation", ForceFormulation(self.formulation))
        if isinstance(self.param_filter, list):
            object.__setattr__(self, "param_filter", tuple(self.param_filter))
