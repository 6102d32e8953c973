"""Learning-rate schedules and held-out splits for :func:`ntkal.train.fit` (pure host-side helpers).

The schedule is evaluated on the host and passed to the jitted step as a traced
scalar, so fits with different learning rates, schedules, epoch counts or data
sizes share one compiled step.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["SCHEDULES", "learning_rate_at", "holdout_split"]

#: Accepted values of ``TrainConfig.schedule``.
SCHEDULES = ("constant", "cosine", "warmup_cosine")


def learning_rate_at(config, epoch_fraction: float) -> float:
    """Learning rate of ``config`` (a :class:`ntkal.train.TrainConfig`) after ``epoch_fraction`` epochs.

    With ``lr = config.learning_rate``, ``lo = config.min_lr_ratio * lr``,
    ``T = config.max_epochs`` and ``W = config.warmup_epochs``:

    * ``"constant"``: ``lr``.
    * ``"cosine"``: ``lo + (lr − lo)·(1 + cos(π·t/T))/2``, from ``lr`` at ``t = 0`` to ``lo`` at ``t = T``.
    * ``"warmup_cosine"``: linear from ``lo`` at ``t = 0`` to ``lr`` at ``t = W``, then the cosine
      above over the remaining ``T − W`` epochs (if none remain, ``lr`` after the warmup).

    Args:
      config: a ``TrainConfig``.
      epoch_fraction: epochs elapsed (``epoch + step / steps_per_epoch``); clipped to ``[0, T]``.

    Returns:
      The learning rate (same units as ``config.learning_rate``), a Python float.
    """
    lr = float(config.learning_rate)
    lo = float(config.min_lr_ratio) * lr
    total = float(config.max_epochs)
    t = min(max(float(epoch_fraction), 0.0), max(total, 0.0))
    if config.schedule == "constant":
        return lr
    if config.schedule == "cosine":
        return _cosine(lr, lo, t, total)
    if config.schedule == "warmup_cosine":
        warmup = float(config.warmup_epochs)
        if t < warmup:
            return lo + (lr - lo) * t / warmup
        return _cosine(lr, lo, t - warmup, total - warmup) if total > warmup else lr
    raise ValueError(f"learning_rate_at: unknown schedule {config.schedule!r}; choose one of {SCHEDULES}")


def _cosine(high: float, low: float, t: float, total: float) -> float:
    """Cosine decay from ``high`` at ``t = 0`` to ``low`` at ``t = total`` (``high`` if ``total ≤ 0``)."""
    if total <= 0:
        return high
    return low + (high - low) * 0.5 * (1.0 + math.cos(math.pi * min(t / total, 1.0)))


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)`` into training and held-out indices.

    Holds out ``max(1, round(fraction · n))`` indices (at most ``n − 1``) chosen by a
    permutation seeded with ``seed``; nothing is held out if ``fraction ≤ 0`` or ``n < 4``.

    Args:
      n: number of structures.
      fraction: held-out fraction, in ``[0, 1)``.
      seed: permutation seed (same ``(n, fraction, seed)`` ⇒ same split).

    Returns:
      ``(train_idx, holdout_idx)``: sorted, disjoint int64 arrays covering ``range(n)``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout_split: fraction must be in [0, 1), got {fraction}")
    if n < 0:
        raise ValueError(f"holdout_split: n must be ≥ 0, got {n}")
    if fraction <= 0.0 or n < 4:
        return np.arange(n, dtype=np.int64), np.zeros(0, dtype=np.int64)
    n_holdout = min(max(1, round(fraction * n)), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_holdout:]).astype(np.int64), np.sort(perm[:n_holdout]).astype(np.int64)
