"""The fine-tuning hyper-parameters, :class:`TrainConfig` (imports neither JAX nor optax: CLIs
build and check it before the heavy modules load)."""

from __future__ import annotations

import dataclasses
import math

from ntkal.added_fields import added_field
from ntkal.train.schedule import SCHEDULES

__all__ = ["TrainConfig", "FINETUNE_DEFAULTS"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`fit`.

    Attributes:
      learning_rate: peak Adam step size.
      max_epochs: upper bound on passes over the training set (also the length of the cosine decay).
      batch_size: structures per optimisation step.
      energy_weight: weight of the per-atom energy MSE ((eV/atom)⁻²).
      force_weight: weight of the force-component MSE ((eV/Å)⁻²).
      patience: stop after this many epochs without validation improvement.
      grad_clip: global-norm gradient clipping (0 disables).
      seed: shuffling (and hold-out) seed; same seed and data ⇒ same parameters.
      val_fraction: with no explicit validation set, hold out ``max(1, round(val_fraction · n))``
        of the ``n`` training structures (none if ``n < 4``) for early stopping; in ``[0, 1)``.
      schedule: ``"constant"``, ``"cosine"`` or ``"warmup_cosine"``, evaluated per step by
        :func:`ntkal.train.learning_rate_at`.
      min_lr_ratio: final (and warmup-start) learning rate as a fraction of ``learning_rate``; in ``[0, 1]``.
      warmup_epochs: length of the linear warmup of ``"warmup_cosine"`` (epochs, ≥ 0).
      replay_weight: expected number of times each replay structure is drawn per epoch (≥ 0):
        ``floor(w)`` copies of every replay structure plus a seeded random ``round(frac(w) · n_replay)``
        of them. This is a sampling weight, not a loss weight (the loss stays a plain mean over
        the structures of a batch), so changing it never recompiles.
      force_huber_delta: Huber threshold δ on each force-component error (eV/Å): errors beyond δ
        count as ``2δ|e| − δ²`` instead of ``e²`` (the same value and slope at δ), so a few frames
        with very large force errors cannot dominate a fine-tune's gradient; ``0`` = plain squared
        error. Only the optimised loss changes; reported errors stay MAE/RMSE.
      trainable: which network parameters the fine-tune updates, in the grammar of the kernels'
        ``param_filter`` (:func:`ntkal.kernels.select_params`): ``"all"``, ``"readout"``,
        ``"last_interaction"``, or a tuple of path substrings (e.g. ``("interaction_3",
        "interaction_4", "readout")``); the others keep their values bit for bit. The AL loop
        takes the NTK over the same subset, so the kernel describes the model that is updated.
      refit_e0: before the first epoch, shift the per-element reference energies ``e0`` by the
        least-squares fit of (label − model) energies over the training structures (not the
        hold-out, not the replay): a fine-tune toward another level of theory then starts at the
        oracle's energy zero instead of spending its steps on the offset. ``e0`` is never trained.
      refit_e0_after: after the fine-tune, refit ``e0`` the same way on the fine-tuned model's
        errors over every labelled structure it was given (the training structures and the
        hold-out, not the replay). The network is untouched, so forces are bit for bit those
        without it. A force-dominated fine-tune moves the per-atom energies, which forces do not
        pin: SevenNet-0 fine-tuned on 80 OC20-like slabs had 0.139 eV/atom energy error on its
        own training frames, 0.009 after this refit (``experiments/results/README.md``).
    """

    learning_rate: float = 2e-3
    max_epochs: int = 100
    batch_size: int = 8
    energy_weight: float = 1.0
    force_weight: float = 10.0
    patience: int = 10
    grad_clip: float = 10.0
    seed: int = 0
    val_fraction: float = 0.0
    schedule: str = "constant"
    min_lr_ratio: float = 0.05
    warmup_epochs: int = 1
    replay_weight: float = 1.0
    force_huber_delta: float = added_field(0.0, added_in="0.1 (issue 9)")
    trainable: str | tuple[str, ...] = added_field("all", added_in="0.1 (issue 28)")
    refit_e0: bool = added_field(False, added_in="0.1 (issue 28)")
    refit_e0_after: bool = added_field(False, added_in="0.1 (issue 28, energy drift)")

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"TrainConfig: batch_size must be ≥ 1, got {self.batch_size}")
        if self.max_epochs < 0:
            raise ValueError(f"TrainConfig: max_epochs must be ≥ 0, got {self.max_epochs}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"TrainConfig: val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig: schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"TrainConfig: min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_epochs < 0:
            raise ValueError(f"TrainConfig: warmup_epochs must be ≥ 0, got {self.warmup_epochs}")
        if not (math.isfinite(self.replay_weight) and self.replay_weight >= 0.0):
            raise ValueError(f"TrainConfig: replay_weight must be finite and ≥ 0, got {self.replay_weight}")
        if isinstance(self.trainable, list):
            object.__setattr__(self, "trainable", tuple(self.trainable))
        if isinstance(self.trainable, str) and self.trainable not in ("all", "readout", "last_interaction"):
            raise ValueError(f"TrainConfig: trainable must be 'all', 'readout', 'last_interaction' or a list of "
                             f"parameter path substrings, got {self.trainable!r}")
        if not (math.isfinite(self.force_huber_delta) and self.force_huber_delta >= 0.0):
            raise ValueError(f"TrainConfig: force_huber_delta must be finite and ≥ 0, got {self.force_huber_delta}")


#: The fine-tune every pay-off study ran (``experiments/configs/*payoff*.toml``, ``sevennet_*.toml``,
#: ``pool_shift_target*.toml``, ``demo.toml``): at most 15 epochs of batches of 8, Adam at 2e-3
#: with a cosine decay, early stopping after 5 epochs without improvement on a 10 % hold-out of the
#: labelled set. Set in the tuning pilot on the small OC20-like dataset
#: (``experiments/configs/pilot_small.toml``, other systems than any study's tests) and kept by
#: every later study; no test error chose it. It is the active-learning
#: loop's default (:class:`ntkal.loop.LoopConfig` ``train``, and every ``[train]`` key a run config
#: leaves out); :class:`TrainConfig`'s own defaults stay those of a from-scratch :func:`fit`.
#: Studies that differ say so in their config: gradient clip 0.3 + Huber 0.2 on OC20-like data,
#: ``refit_e0`` and a ``trainable`` subset on SevenNet-0.
FINETUNE_DEFAULTS = TrainConfig(max_epochs=15, batch_size=8, learning_rate=2e-3, patience=5,
                                val_fraction=0.1, schedule="cosine")
