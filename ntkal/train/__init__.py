"""Fine-tuning MLIPs with optax: losses, metrics, early stopping."""

from ntkal.train.fit import TrainConfig, TrainResult, batch_budget, fit, make_batches, make_optimizer
from ntkal.train.loss import label_masks, make_loss_fn
from ntkal.train.metrics import METRIC_NAMES, evaluate, make_error_sums_fn

__all__ = ["TrainConfig", "TrainResult", "batch_budget", "fit", "make_batches", "make_optimizer",
           "label_masks", "make_loss_fn", "METRIC_NAMES", "evaluate", "make_error_sums_fn"]
