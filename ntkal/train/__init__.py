"""Fine-tuning MLIPs with optax: losses, metrics, schedules, hold-out, replay, early stopping."""

from ntkal.train.fit import (TrainConfig, TrainResult, batch_budget, fit, make_batches, make_optimizer,
                             replay_indices)
from ntkal.train.loss import label_masks, make_loss_fn
from ntkal.train.metrics import METRIC_NAMES, evaluate, make_error_sums_fn
from ntkal.train.schedule import SCHEDULES, holdout_split, learning_rate_at

__all__ = ["TrainConfig", "TrainResult", "batch_budget", "fit", "make_batches", "make_optimizer",
           "replay_indices", "label_masks", "make_loss_fn", "METRIC_NAMES", "evaluate", "make_error_sums_fn",
           "SCHEDULES", "holdout_split", "learning_rate_at"]
