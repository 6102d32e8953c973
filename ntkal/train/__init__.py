"""Fine-tuning MLIPs with optax: losses, metrics, schedules, hold-out, replay, early stopping.

Names are imported on first use (``from ntkal.train import TrainConfig`` loads no JAX).
"""

from __future__ import annotations

from ntkal._lazy import lazy_attributes

_WHERE = {
    "TrainConfig": "ntkal.train.config",
    "TrainResult": "ntkal.train.fit", "batch_budget": "ntkal.train.fit", "fit": "ntkal.train.fit",
    "make_batches": "ntkal.train.fit", "make_optimizer": "ntkal.train.fit",
    "replay_indices": "ntkal.train.fit",
    "label_masks": "ntkal.train.loss", "make_loss_fn": "ntkal.train.loss",
    "METRIC_NAMES": "ntkal.train.metrics", "evaluate": "ntkal.train.metrics",
    "make_error_sums_fn": "ntkal.train.metrics",
    "SCHEDULES": "ntkal.train.schedule", "holdout_split": "ntkal.train.schedule",
    "learning_rate_at": "ntkal.train.schedule",
    "train_from_files": "ntkal.train.from_files",
}

__all__ = list(_WHERE)

__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
