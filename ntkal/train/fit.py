"""Fine-tuning with optax: minibatches over fixed-budget padded chunks, early stopping.

Every minibatch is padded to one budget (derived from the largest structures of
the training set), so a whole training run compiles one step function.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np
import optax
from tqdm.auto import tqdm

from ntkal.data.padding import batch_structures, bucket
from ntkal.data.structure import Structure
from ntkal.models.mlip import MLIP
from ntkal.train.loss import make_loss_fn
from ntkal.train.metrics import evaluate, make_error_sums_fn

__all__ = ["TrainConfig", "TrainResult", "fit", "make_batches", "batch_budget", "make_optimizer"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`fit`.

    Attributes:
      learning_rate: Adam step size.
      max_epochs: upper bound on passes over the training set.
      batch_size: structures per optimisation step.
      energy_weight: weight of the per-atom energy MSE ((eV/atom)⁻²).
      force_weight: weight of the force-component MSE ((eV/Å)⁻²).
      patience: stop after this many epochs without validation improvement.
      grad_clip: global-norm gradient clipping (0 disables).
      seed: shuffling seed; same seed and data ⇒ same parameters.
    """

    learning_rate: float = 2e-3
    max_epochs: int = 100
    batch_size: int = 8
    energy_weight: float = 1.0
    force_weight: float = 10.0
    patience: int = 10
    grad_clip: float = 10.0
    seed: int = 0


class TrainResult(NamedTuple):
    """Outcome of :func:`fit`.

    Attributes:
      params: parameters of the epoch with the best validation loss (last epoch without validation).
      history: one dict per epoch: ``epoch``, ``train_loss`` and, with validation, the
        metrics of :func:`ntkal.train.evaluate` prefixed ``val_`` and ``val_loss``.
      best_epoch: epoch whose parameters were returned.
    """

    params: Any
    history: list
    best_epoch: int


def batch_budget(structures: Sequence[Structure], batch_size: int) -> tuple[int, int]:
    """(n_node, n_edge) budget that holds any ``batch_size`` structures of ``structures``."""
    atoms = sorted((s.n_atoms for s in structures), reverse=True)[:batch_size]
    edges = sorted((s.n_edges for s in structures), reverse=True)[:batch_size]
    return bucket(sum(atoms) + 1), bucket(max(sum(edges), 1))


def make_batches(structures: Sequence[Structure], batch_size: int, order: np.ndarray | None = None,
                 budget: tuple[int, int] | None = None):
    """Padded batches of ``structures`` (in ``order``), all of one budget (list of GraphsTuple)."""
    order = np.arange(len(structures)) if order is None else order
    n_node, n_edge = budget or batch_budget(structures, batch_size)
    return [batch_structures([structures[i] for i in order[k:k + batch_size]],
                             n_graph=batch_size + 1, n_node=n_node, n_edge=n_edge)
            for k in range(0, len(order), batch_size)]


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Adam (optionally clipped) on ``params["net"]``; reference energies ``e0`` stay frozen."""
    adam = optax.adam(config.learning_rate)
    if config.grad_clip > 0:
        adam = optax.chain(optax.clip_by_global_norm(config.grad_clip), adam)
    return optax.multi_transform({"train": adam, "freeze": optax.set_to_zero()},
                                 lambda params: {"net": jax.tree_util.tree_map(lambda _: "train", params["net"]),
                                                 "e0": "freeze"})


def _static_part(config: TrainConfig) -> TrainConfig:
    """The fields that shape the compiled step (others are reset so the cache is shared)."""
    return dataclasses.replace(config, max_epochs=0, patience=0, seed=0)


@functools.lru_cache(maxsize=32)
def _compiled(model: MLIP, config: TrainConfig):
    """Optimizer, jitted train step and jitted error sums, cached per (model, config).

    Re-using one ``MLIP`` object across calls (e.g. the rounds of active learning)
    therefore compiles the step once.
    """
    loss_fn = make_loss_fn(model.energy, energy_weight=config.energy_weight,
                           force_weight=config.force_weight)
    optimizer = make_optimizer(config)

    @jax.jit
    def step(params, opt_state, graph):
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, graph)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return optimizer, step, jax.jit(make_error_sums_fn(model.energy))


def fit(model: MLIP, params, train: Sequence[Structure], val: Sequence[Structure] | None = None,
        config: TrainConfig = TrainConfig(), *, progress: bool = True) -> TrainResult:
    """Fine-tune ``params`` on labelled ``train`` structures.

    Args:
      model: the MLIP.
      params: starting parameters (e.g. a pretrained checkpoint).
      train: labelled structures (energy and/or forces).
      val: validation structures for early stopping (optional).
      config: hyper-parameters.
      progress: show a tqdm bar over epochs.

    Returns:
      A :class:`TrainResult`.
    """
    if not train:
        raise ValueError("fit: the training set is empty")
    optimizer, step, sums_fn = _compiled(model, _static_part(config))
    everything = list(train) + list(val or [])
    budget = batch_budget(everything, config.batch_size)
    val_batches = make_batches(val, config.batch_size, budget=budget) if val else None

    opt_state = optimizer.init(params)
    key = jax.random.key(config.seed)
    best = (math.inf, params, -1)
    history = []
    bar = tqdm(range(config.max_epochs), desc="fit", disable=not progress, leave=False)
    for epoch in bar:
        order = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), len(train)))
        losses = []
        for graph in make_batches(train, config.batch_size, order, budget):
            params, opt_state, loss = step(params, opt_state, graph)
            losses.append(loss)
        record = {"epoch": epoch, "train_loss": float(np.mean(jax.device_get(losses)))}
        if val_batches:
            metrics = evaluate(sums_fn, params, val_batches)
            val_loss = (config.energy_weight * np.nan_to_num(metrics["energy_rmse_per_atom"]) ** 2
                        + config.force_weight * np.nan_to_num(metrics["force_rmse"]) ** 2)
            record.update({f"val_{k}": v for k, v in metrics.items()}, val_loss=float(val_loss))
            if val_loss < best[0]:
                best = (val_loss, params, epoch)
            bar.set_postfix(val_force_mae=f"{metrics['force_mae']:.4f}")
        else:
            best = (record["train_loss"], params, epoch)
        history.append(record)
        if val_batches and epoch - best[2] >= config.patience:
            break
    return TrainResult(params=best[1], history=history, best_epoch=best[2])
