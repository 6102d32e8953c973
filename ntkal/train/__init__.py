"""Fine-tuning MLIPs with optax: losses, metrics, schedules, hold-out, replay, early stopping.

Names are imported on first use (``from ntkal.train import TrainConfig`` loads no JAX). No
submodule shares a name with an attribute exported here: importing a submodule sets the package
attribute of its name, which would shadow the lazily exported one (``fit`` lives in ``fitting``).
"""

from __future__ import annotations

from ntkal._lazy import lazy_attributes

_WHERE = {
    "TrainConfig": "ntkal.train.config", "FINETUNE_DEFAULTS": "ntkal.train.config",
    "TrainResult": "ntkal.train.fitting", "batch_budget": "ntkal.train.fitting", "fit": "ntkal.train.fitting",
    "make_batches": "ntkal.train.fitting", "make_optimizer": "ntkal.train.fitting",
    "FitPrograms": "ntkal.train.fitting", "fit_programs": "ntkal.train.fitting",
    "replay_indices": "ntkal.train.fitting",
    "label_masks": "ntkal.train.loss", "make_loss_fn": "ntkal.train.loss",
    "METRIC_NAMES": "ntkal.train.metrics", "evaluate": "ntkal.train.metrics",
    "make_error_sums_fn": "ntkal.train.metrics",
    "SCHEDULES": "ntkal.train.schedule", "holdout_split": "ntkal.train.schedule",
    "learning_rate_at": "ntkal.train.schedule",
    "train_from_files": "ntkal.train.from_files",
    "TrainSpec": "ntkal.train.spec", "TrainConfigError": "ntkal.train.spec", "load_train_spec": "ntkal.train.spec",
    "FitState": "ntkal.train.resume", "fit_fingerprint": "ntkal.train.resume",
    "load_fit_state": "ntkal.train.resume", "save_fit_state": "ntkal.train.resume",
}

__all__ = list(_WHERE)

__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
