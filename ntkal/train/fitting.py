"""Fine-tuning with optax: minibatches over fixed-budget padded chunks, early stopping.

Every minibatch is padded to one budget (derived from the largest structures of
the training, validation and replay sets), so a whole training run compiles one
step function. The learning rate is a traced argument of that step (evaluated on
the host by :func:`ntkal.train.learning_rate_at`), so fits that differ only in
learning rate, schedule, epochs, patience, seed, hold-out or replay settings, or
in the number of structures, share the compile (when they share an owner, below).

The compiled programs (:class:`FitPrograms`) belong to the caller: :func:`fit` keeps them in
the dict passed as ``compiled`` (the loop's per-run cache, an on-the-fly MD run), so the rounds
of a run compile the step once and the programs are released with their owner
(:mod:`ntkal.cache.owned`); without one, a fit compiles its own.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from ntkal.cache.owned import build_once
from ntkal.data.padding import batch_structures, bucket
from ntkal.data.structure import Structure
from ntkal.models.mlip import MLIP
from ntkal.train.loss import make_loss_fn
from ntkal.train.metrics import evaluate, make_error_sums_fn
from ntkal.train.config import TrainConfig
from ntkal.train.resume import FitState, fit_fingerprint, load_fit_state, save_fit_state
from ntkal.train.schedule import holdout_split, learning_rate_at

__all__ = ["TrainConfig", "TrainResult", "FitPrograms", "fit", "fit_programs", "make_batches", "batch_budget",
           "make_optimizer", "replay_indices"]


class TrainResult(NamedTuple):
    """Outcome of :func:`fit`.

    Attributes:
      params: parameters of the epoch with the best validation loss (last epoch without validation).
      history: one dict per epoch: ``epoch``, ``lr`` (learning rate of the epoch's first step),
        ``train_loss`` (mean over the epoch's batches, replay included) and, with validation
        (explicit or held out), the metrics of :func:`ntkal.train.evaluate` prefixed ``val_``
        and ``val_loss``.
      best_epoch: epoch whose parameters were returned.
      n_train: structures of ``train`` trained on (after the hold-out).
      n_holdout: structures of ``train`` held out for early stopping (0 with an explicit ``val``).
      n_replay: replay structures given.
    """

    params: Any
    history: list
    best_epoch: int
    n_train: int = 0
    n_holdout: int = 0
    n_replay: int = 0


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
    """Adam (optionally clipped) on the ``config.trainable`` leaves of ``params["net"]``; the other
    leaves and the reference energies ``e0`` are frozen (zero updates: bit-identical).

    The learning rate is an injected hyper-parameter: it starts at ``config.learning_rate``
    and lives in ``opt_state.hyperparams["learning_rate"]``, which :func:`fit` overwrites
    every step with the scheduled value (a traced scalar, so no recompilation).
    """

    def build(learning_rate):
        adam = optax.adam(learning_rate)
        if config.grad_clip > 0:
            adam = optax.chain(optax.clip_by_global_norm(config.grad_clip), adam)
        return optax.multi_transform({"train": adam, "freeze": optax.set_to_zero()},
                                     functools.partial(_labels, trainable=config.trainable))

    return optax.inject_hyperparams(build)(learning_rate=config.learning_rate)


def _labels(params, trainable) -> dict:
    """``"train"`` for the selected leaves of ``params["net"]``, ``"freeze"`` for the rest and ``e0``
    (frozen gradients are never used, so XLA does not compute them)."""
    from ntkal.kernels.filters import select_params

    chosen = set(select_params(params, trainable).indices)
    leaves, treedef = jax.tree_util.tree_flatten(params["net"])
    return {"net": jax.tree_util.tree_unflatten(treedef, ["train" if i in chosen else "freeze"
                                                          for i in range(len(leaves))]),
            "e0": jax.tree_util.tree_map(lambda _: "freeze", params["e0"])}


def predict_energies(energy_fn, params, structures: Sequence[Structure], batch_size: int = 8) -> np.ndarray:
    """(n,) float64 energies (eV) of ``structures`` by ``energy_fn(params, graph)`` (a jitted
    ``model.energy``), in batches of ``batch_size`` (:func:`make_batches`)."""
    predicted = []
    for k, graph in enumerate(make_batches(structures, batch_size)):
        n_real = min(batch_size, len(structures) - k * batch_size)
        predicted.extend(np.asarray(energy_fn(params, graph), np.float64)[:n_real])
    return np.asarray(predicted, np.float64)


def refit_reference_energies(model: MLIP, params, structures: Sequence[Structure], energy_fn=None,
                             batch_size: int = 8):
    """``params`` with ``e0`` shifted by the least-squares per-element fit of the energy residuals
    (label − ``model``; eV) over ``structures`` (those with an energy label). Elements absent from
    ``structures`` keep their ``e0``.

    Args:
      energy_fn: a jitted ``model.energy`` to reuse (default: jit one).
    """
    from ntkal.models.reference import fit_reference_energies

    labelled = [s for s in structures if not np.isnan(s.energy)]
    if not labelled:
        return params
    predicted = predict_energies(energy_fn or jax.jit(model.energy), params, labelled, batch_size)
    residual = [s._replace(energy=float(s.energy - e)) for s, e in zip(labelled, predicted)]
    shift = fit_reference_energies(model.config, residual)
    e0 = np.asarray(params["e0"], np.float64) + shift
    return {**params, "e0": jnp.asarray(e0, jnp.asarray(params["e0"]).dtype)}


#: Fields that only the host loop reads; :func:`_static_part` resets them so the compile is shared.
_DYNAMIC_FIELDS = ("learning_rate", "max_epochs", "patience", "seed", "val_fraction", "schedule",
                   "min_lr_ratio", "warmup_epochs", "replay_weight", "refit_e0", "refit_e0_after")


def _static_part(config: TrainConfig) -> TrainConfig:
    """The fields that shape the compiled step (the others are reset to defaults so the programs are shared)."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name in _DYNAMIC_FIELDS}
    return dataclasses.replace(config, **defaults)


class FitPrograms(NamedTuple):
    """The compiled programs of :func:`fit` for one model and one static part of a config.

    Attributes:
      optimizer: the optax transformation (:func:`make_optimizer`).
      step: jitted ``(params, opt_state, graph, learning_rate) -> (params, opt_state, loss)``.
      error_sums: jitted error sums (:func:`ntkal.train.make_error_sums_fn`), for
        :func:`ntkal.train.evaluate`.
      energy: jitted ``model.energy``.
    """

    optimizer: optax.GradientTransformation
    step: Any
    error_sums: Any
    energy: Any


def fit_programs(model: MLIP, config: TrainConfig, compiled: dict | None = None) -> FitPrograms:
    """The :class:`FitPrograms` of ``model`` for ``config``, kept in the owner's ``compiled`` dict.

    Only the fields that shape the step matter (loss weights, force Huber delta, gradient
    clipping, trainable leaves, batch size; not the learning rate, schedule, epochs, patience,
    seed, hold-out, replay or ``refit_e0`` settings), so fits that differ only in those find
    the same programs.

    Args:
      model: the MLIP.
      config: the training settings.
      compiled: the owner's dict (:func:`ntkal.cache.build_once`), e.g. the loop's per-run
        cache; ``None``: new programs, for the caller alone.
    """
    static = _static_part(config)
    return build_once(compiled, ("ntkal.train.fitting", id(model), static),
                      lambda: _build_programs(model, static), holds=model)


def _build_programs(model: MLIP, config: TrainConfig) -> FitPrograms:
    """Optimizer, jitted train step, jitted error sums and jitted energy (not yet compiled)."""
    loss_fn = make_loss_fn(model.energy, energy_weight=config.energy_weight,
                           force_weight=config.force_weight, force_huber_delta=config.force_huber_delta)
    optimizer = make_optimizer(config)

    @jax.jit
    def step(params, opt_state, graph, learning_rate):
        """One Adam step at ``learning_rate`` (traced scalar) → (params, opt_state, loss)."""
        opt_state = opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": learning_rate})
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, graph)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return FitPrograms(optimizer, step, jax.jit(make_error_sums_fn(model.energy)), jax.jit(model.energy))


def replay_indices(n_replay: int, weight: float, seed: int, epoch: int) -> np.ndarray:
    """Replay structures drawn for one epoch (indices into the replay set, int64).

    ``floor(weight)`` copies of every index plus ``round(frac(weight) · n_replay)`` distinct
    indices drawn without replacement by a generator seeded with ``(seed, epoch)``.
    """
    copies = int(math.floor(weight))
    extra = int(round((weight - copies) * n_replay))
    drawn = np.random.default_rng([seed, epoch]).choice(n_replay, extra, replace=False) if extra else []
    return np.concatenate([np.tile(np.arange(n_replay), copies), drawn]).astype(np.int64)


def fit(model: MLIP, params, train: Sequence[Structure], val: Sequence[Structure] | None = None,
        config: TrainConfig = TrainConfig(), *, replay: Sequence[Structure] = (),
        progress: bool = True, state_path: str | os.PathLike | None = None,
        compiled: dict | None = None) -> TrainResult:
    """Fine-tune ``params`` on labelled ``train`` structures.

    Args:
      model: the MLIP.
      params: starting parameters (e.g. a pretrained checkpoint).
      train: labelled structures (energy and/or forces).
      val: validation structures for early stopping (optional). Without them and with
        ``config.val_fraction > 0``, a seeded hold-out of ``train`` (:func:`holdout_split`
        with ``config.seed``) is used instead; test data is never touched here.
      config: hyper-parameters.
      replay: labelled structures (e.g. a fixed sample of the pretraining data) added to
        the training data of every epoch (``config.replay_weight`` draws each on average),
        shuffled together with ``train``; never held out, never validated on.
      progress: show a tqdm bar over epochs.
      state_path: make the fit resumable: after every epoch the whole state is written there
        atomically (:mod:`ntkal.train.resume`), and a call that finds the file resumes after
        its last epoch, returning what the uninterrupted fit would (a finished fit returns at
        once). The file is checked against a fingerprint of ``config``, ``params`` and the
        data; a mismatch raises ``ValueError``.
      compiled: a dict owned by the caller that keeps the compiled programs
        (:func:`fit_programs`) between fits, e.g. the rounds of active learning: pass the same
        dict (and the same ``model`` object) to every fit to compile the step once. ``None``:
        this fit compiles its own, released when it returns.

    Returns:
      A :class:`TrainResult`.
    """
    if not train:
        raise ValueError("fit: the training set is empty")
    train, replay = list(train), list(replay)
    labelled = train  # every labelled structure given (the hold-out included): the refit after
    n_holdout = 0
    if not val and config.val_fraction > 0:
        train_idx, holdout_idx = holdout_split(len(train), config.val_fraction, config.seed)
        val = [train[i] for i in holdout_idx]
        train = [train[i] for i in train_idx]
        n_holdout = len(val)
    val = list(val or [])

    optimizer, step, sums_fn, energy_fn = fit_programs(model, config, compiled)
    if config.refit_e0:
        params = refit_reference_energies(model, params, train, energy_fn, config.batch_size)
    pool = train + replay  # train indices first, then replay
    budget = batch_budget(pool + val, config.batch_size)
    val_batches = make_batches(val, config.batch_size, budget=budget) if val else None

    opt_state = optimizer.init(params)
    key = jax.random.key(config.seed)
    best = (math.inf, params, -1)
    history = []
    start, finished, fingerprint = 0, False, None
    if state_path is not None:
        fingerprint = fit_fingerprint(config, params, train, val, replay)
        saved = load_fit_state(state_path, fingerprint, params, opt_state)
        if saved is not None:
            params, opt_state, history = saved.params, saved.opt_state, saved.history
            best = (saved.best_loss, saved.best_params, saved.best_epoch)
            start, finished = saved.epoch + 1, saved.finished
    bar = tqdm(range(start, 0 if finished else config.max_epochs), desc="fit", disable=not progress,
               leave=False, initial=start, total=config.max_epochs)
    for epoch in bar:
        items = np.arange(len(train))
        if replay:
            items = np.concatenate([items, len(train) + replay_indices(len(replay), config.replay_weight,
                                                                     config.seed, epoch)])
        order = items[np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), len(items)))]
        batches = make_batches(pool, config.batch_size, order, budget)
        losses = []
        for k, graph in enumerate(batches):
            lr = learning_rate_at(config, epoch + k / len(batches))
            params, opt_state, loss = step(params, opt_state, graph, np.float32(lr))
            losses.append(loss)
        record = {"epoch": epoch, "lr": learning_rate_at(config, epoch),
                  "train_loss": float(np.mean(jax.device_get(losses)))}
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
        stop = bool(val_batches) and epoch - best[2] >= config.patience
        if state_path is not None:
            save_fit_state(state_path, fingerprint, FitState(
                epoch=epoch, finished=stop or epoch == config.max_epochs - 1, params=params,
                opt_state=opt_state, best_params=best[1], best_loss=float(best[0]),
                best_epoch=int(best[2]), history=history))
        if stop:
            break
    params = best[1]
    if config.refit_e0_after:
        params = refit_reference_energies(model, params, labelled, energy_fn, config.batch_size)
    return TrainResult(params=params, history=history, best_epoch=best[2], n_train=len(train),
                       n_holdout=n_holdout, n_replay=len(replay))
