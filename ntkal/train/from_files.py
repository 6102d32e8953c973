"""Pretrain or fine-tune a model from structure files and ship it as a checkpoint with a model card.

The compute side of ``ntkal train`` (:mod:`ntkal.train.spec` reads and checks the config without
JAX). :func:`train_from_files` reads and graphs every frame once (errors name file and frame),
builds a new model (seeded initialisation, per-element reference energies fitted by least
squares, ``energy_scale`` and ``avg_num_neighbors`` measured on the training data unless given)
or loads the checkpoint to fine-tune, runs :func:`ntkal.train.fit`, measures training and
validation errors with :func:`ntkal.train.evaluate`, and writes the checkpoint atomically
(:func:`ntkal.models.save_checkpoint`) and a model card ``<out stem>.md`` beside it.

The checkpoint metadata holds: ``name``, ``train_elements`` (sorted atomic numbers present in the
structures trained on; with fine-tuning, together with the parent's), ``data`` (every file with
its sha256 and frame count, the hold-out), ``train_config``, ``best_epoch``, ``epochs_run``,
``history``, ``errors`` (``train``/``val``: the metrics of :func:`ntkal.train.evaluate`: energy
MAE/RMSE per structure in eV and per atom in eV/atom, force MAE/RMSE in eV/Å), ``init``, the
``command``, the config text, ``wall_s`` and ``ntkal_version``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import ntkal
from ntkal.data import EmptyInputError, atoms_to_structure
from ntkal.datasets.files import file_sha256, read_structure_file
from ntkal.jsonio import to_jsonable
from ntkal.models import (ModelConfig, adapt_config, atomic_write_bytes, build_model, count_parameters,
                          fit_reference_energies, load_pretrained, save_checkpoint)
from ntkal.models.coverage import check_element_coverage, symbols_of
from ntkal.train.config import TrainConfig
from ntkal.train.fitting import batch_budget, fit, fit_programs, make_batches
from ntkal.train.metrics import evaluate
from ntkal.train.schedule import holdout_split
from ntkal.train.spec import TrainSpec, load_train_spec

__all__ = ["TrainFromFilesResult", "train_from_files", "read_labelled", "model_card"]


class TrainFromFilesResult(NamedTuple):
    """What :func:`train_from_files` wrote.

    Attributes:
      out_path: the checkpoint.
      card_path: the model card beside it.
      metadata: the checkpoint metadata (as stored).
      config: the model's :class:`~ntkal.models.ModelConfig`.
      params: the trained parameters.
    """

    out_path: Path
    card_path: Path
    metadata: dict
    config: ModelConfig
    params: Any


def read_labelled(specs, cutoff: float, elements) -> tuple[list, list[dict]]:
    """Read and graph every frame of the file ``specs``; each needs an energy label (eV).

    Returns:
      ``(structures, files)``: the :class:`~ntkal.data.Structure` s in file order, and per file
      ``{"path", "sha256", "frames"}``.

    Raises:
      EmptyInputError: a file holds no frame.
      InvalidStructureError: a frame is invalid, unlabelled or holds an element outside
        ``elements`` (``None``: any element); the message names file and frame.
      DatasetFormatError: a frame cannot be read (names file and frame).
    """
    structures, files = [], []
    for spec in specs:
        n = 0
        for atoms in read_structure_file(spec):
            structures.append(atoms_to_structure(atoms, cutoff, index=atoms.info["frame"], elements=elements,
                                                 require_labels=True))
            n += 1
        if n == 0:
            raise EmptyInputError(f"{spec}: no structures in the file")
        files.append({"path": spec, "sha256": file_sha256(spec), "frames": n})
    return structures, files


def _elements_of(structures) -> list[int]:
    return sorted({int(z) for s in structures for z in np.unique(s.numbers)})


def _locate(files: list[dict]) -> Callable[[int], tuple[str, int]]:
    """Structure index → (file, frame) over the concatenated ``files``."""
    ends = np.cumsum([f["frames"] for f in files])

    def locate(k: int):
        i = int(np.searchsorted(ends, k, side="right"))
        return files[i]["path"], k - (int(ends[i - 1]) if i else 0)

    return locate


def train_from_files(spec: TrainSpec | str | os.PathLike, *, progress: bool = True, command: str | None = None,
                     log: Callable[[str], None] | None = print,
                     resume: bool = True) -> TrainFromFilesResult:
    """Train the model a ``ntkal train`` config describes and write its checkpoint and model card.

    Args:
      spec: a checked config (:func:`ntkal.train.spec.load_train_spec`) or the TOML path.
      progress: show :func:`~ntkal.train.fit`'s progress bar over epochs.
      command: the command line to record (default: ``ntkal train <config>``).
      log: receives one line per step (reading, model, result); ``None`` for silence.
      resume: the fit's state is written after every epoch to ``<out stem>.state.npz`` beside
        the checkpoint (:mod:`ntkal.train.resume`); rerunning the same config after a crash or a
        kill continues from the last epoch. ``False`` deletes that file first (start over).

    Returns:
      A :class:`TrainFromFilesResult`.

    Raises:
      TrainConfigError: ``spec`` is a path to an unusable config.
      InvalidStructureError, DatasetFormatError, EmptyInputError: unusable data (file and frame named).
    """
    t0 = time.perf_counter()
    if not isinstance(spec, TrainSpec):
        spec = load_train_spec(spec)
    say = log or (lambda _: None)
    train_config = TrainConfig(**spec.train)

    parent = load_pretrained(spec.init_from) if spec.init_from is not None else None
    cutoff, elements = _cutoff_and_elements(spec, parent)
    data = _read_data(spec, train_config, cutoff, elements, say)
    start = _fine_tune_start(spec, *parent, data, say) if parent is not None else _new_model_start(spec, data, say)
    compiled: dict = {}  # fit's programs, reused for the errors below
    result = _fit(spec, start, data, train_config, progress=progress, resume=resume, say=say, compiled=compiled)
    params = result.params
    errors = _errors(start.model, params, data, train_config, compiled)

    metadata = _metadata(spec, start, data, train_config, result, errors, command)
    metadata["wall_s"] = time.perf_counter() - t0
    metadata = to_jsonable(metadata)  # NaN (no labels of a kind) -> null: strict JSON
    save_checkpoint(spec.out, params, start.config, metadata)
    atomic_write_bytes(spec.card, model_card(metadata, start.config, count_parameters(params)).encode())
    return TrainFromFilesResult(spec.out, spec.card, metadata, start.config, params)


class _Data(NamedTuple):
    """The structures :func:`train_from_files` fits and measures, read and graphed once.

    Attributes:
      train: training :class:`~ntkal.data.Structure` s (without the held-out ones).
      val: validation structures (the validation files', or those held out of the training files).
      train_files, val_files: per file ``{"path", "sha256", "frames"}``.
      n_holdout: training frames held out for validation (0 with validation files).
      held_at: ``(file, frame)`` of every held-out frame.
      locate: structure index -> ``(file, frame)`` over the training files (before the hold-out).
      elements: the model's elements (atomic numbers): given, the parent's or the training data's.
      data_elements: sorted atomic numbers present in ``train``.
    """

    train: list
    val: list
    train_files: list[dict]
    val_files: list[dict]
    n_holdout: int
    held_at: list[tuple[str, int]]
    locate: Callable[[int], tuple[str, int]]
    elements: tuple
    data_elements: list[int]


class _Start(NamedTuple):
    """The model a fit starts from.

    Attributes:
      model: the network; config: its :class:`~ntkal.models.ModelConfig`; params: its parameters.
      train_elements: atomic numbers recorded as trained on (with fine-tuning, the parent's too).
      init: the metadata's ``init`` record (``init_from`` and its sha256, or ``new`` and the seed).
    """

    model: Any
    params: Any
    config: ModelConfig
    train_elements: list[int]
    init: dict


def _cutoff_and_elements(spec: TrainSpec, parent) -> tuple[float, Any]:
    """The cutoff (Å) and elements the data are graphed with: the parent checkpoint's (``parent`` =
    :func:`~ntkal.models.load_pretrained`'s triple), else the config's (elements ``None``: any)."""
    if parent is not None:
        config = parent[0].config
        return config.cutoff, config.elements
    defaults = ModelConfig()
    return spec.model.get("cutoff", defaults.cutoff), spec.model.get("elements")


def _read_data(spec: TrainSpec, train_config: TrainConfig, cutoff: float, elements, say) -> _Data:
    """Read the training and validation files (:func:`read_labelled`), hold out
    ``val_fraction`` of the training frames when there is no validation file, and say what was read."""
    t = time.perf_counter()
    train, train_files = read_labelled(spec.train_files, cutoff, elements)
    locate = _locate(train_files)
    if elements is None:
        elements = tuple(_elements_of(train))
    val, val_files = read_labelled(spec.val_files, cutoff, elements) if spec.val_files else ([], [])
    train, val, n_holdout, held_at = _hold_out(train, val, train_config, locate)
    say(f"read {len(train) + n_holdout} training frames from {len(train_files)} file(s)"
        + (f", {len(val)} validation frames" + (" (held out)" if n_holdout else "") if val else "")
        + f" ({time.perf_counter() - t:.1f} s)")
    return _Data(train, val, train_files, val_files, n_holdout, held_at, locate, elements, _elements_of(train))


def _hold_out(train: list, val: list, train_config: TrainConfig, locate):
    """``(train, val, n_holdout, held_at)``: without validation structures and with
    ``val_fraction > 0``, the seeded hold-out :func:`fit` would make (recorded here); else unchanged."""
    if not val and train_config.val_fraction > 0:  # as fit() would, but recorded here
        keep, held = holdout_split(len(train), train_config.val_fraction, train_config.seed)
        val, n_holdout = [train[i] for i in held], len(held)
        held_at = [locate(int(i)) for i in held]
        return [train[i] for i in keep], val, n_holdout, held_at
    return train, val, 0, []


def _fine_tune_start(spec: TrainSpec, model, params, parent_meta: dict, data: _Data, say) -> _Start:
    """Start from the checkpoint ``spec.init_from``; warns (through ``say``) about training elements
    it was never trained on (their reference energies stay frozen)."""
    warning = check_element_coverage(model.config.elements, parent_meta, (s.numbers for s in data.train),
                                     what="training data", locate=data.locate)
    if warning:
        say(f"warning: {warning}; their reference energies e0 stay as in the checkpoint (frozen in fine-tuning)")
    parent_train = parent_meta.get("train_elements")
    train_elements = sorted(set(data.data_elements) | set(parent_train or ()))
    init = {"init_from": spec.init_from, "sha256": file_sha256(_checkpoint_path(spec.init_from)),
            "name": parent_meta.get("name"), "train_elements": parent_train}
    say(f"fine-tuning {spec.init_from} ({count_parameters(params):,} parameters)")
    return _Start(model, params, model.config, train_elements, init)


def _new_model_start(spec: TrainSpec, data: _Data, say) -> _Start:
    """A new model of the config's fields: ``energy_scale`` and ``avg_num_neighbors`` measured on the
    training data unless given, parameters initialised with ``spec.seed``, reference energies e0
    (eV) fitted by least squares."""
    given = dict(spec.model)
    given["elements"] = tuple(data.elements)
    config = ModelConfig(**given)
    measured = adapt_config(config, data.train)
    config = dataclasses.replace(config, **{k: getattr(measured, k) for k in ("energy_scale", "avg_num_neighbors")
                                            if k not in spec.model})
    model = build_model(config)
    params = model.init(jax.random.key(spec.seed), make_batches(data.train[:2], 2)[0])
    params["e0"] = jnp.asarray(fit_reference_energies(config, data.train), jnp.float32)
    say(f"new model ({count_parameters(params):,} parameters), elements {', '.join(config.symbols)}")
    return _Start(model, params, config, data.data_elements, {"new": True, "seed": spec.seed})


def _fit(spec: TrainSpec, start: _Start, data: _Data, train_config: TrainConfig, *, progress: bool,
         resume: bool, say, compiled: dict):
    """Run :func:`fit` with its programs in ``compiled``, its state in ``<out stem>.state.npz``
    (resumed from unless ``resume`` is false, which deletes it first)."""
    state_path = Path(spec.out).with_suffix(".state.npz")
    Path(spec.out).parent.mkdir(parents=True, exist_ok=True)
    if not resume:
        state_path.unlink(missing_ok=True)
    elif state_path.exists():
        say(f"resuming from {state_path}")
    return fit(start.model, start.params, data.train, data.val or None, train_config, progress=progress,
               state_path=state_path, compiled=compiled)


def _errors(model, params, data: _Data, train_config: TrainConfig, compiled: dict) -> dict:
    """``{"train": metrics, "val": metrics}`` (:func:`ntkal.train.evaluate`; ``val`` only with
    validation structures), with fit's compiled sums (``compiled``: the dict :func:`_fit` filled)
    and batch budget (no new compile)."""
    sums = fit_programs(model, train_config, compiled).error_sums
    budget = batch_budget(data.train + data.val, train_config.batch_size)
    errors = {"train": evaluate(sums, params, make_batches(data.train, train_config.batch_size, budget=budget))}
    if data.val:
        errors["val"] = evaluate(sums, params, make_batches(data.val, train_config.batch_size, budget=budget))
    return errors


def _metadata(spec: TrainSpec, start: _Start, data: _Data, train_config: TrainConfig, result, errors: dict,
              command: str | None) -> dict:
    """The checkpoint metadata (module docstring), all but ``wall_s``."""
    history_keys = ("epoch", "lr", "train_loss", "val_loss", "val_energy_mae_per_atom", "val_force_mae")
    train, val = data.train, data.val
    return {
        "name": spec.name,
        "train_elements": start.train_elements,
        "data_elements": data.data_elements,
        "data": {"train": data.train_files, "val": data.val_files, "val_fraction": train_config.val_fraction,
                 "holdout": [{"path": p, "frame": f} for p, f in data.held_at],
                 "n_train": len(train), "n_val": len(val), "n_holdout": data.n_holdout},
        "train_frames": len(train), "val_frames": len(val),
        "init": start.init,
        "seed": spec.seed,
        "train_config": dataclasses.asdict(train_config),
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "history": [{k: r[k] for k in history_keys if k in r} for r in result.history],
        "errors": errors,
        "command": command or f"ntkal train {spec.config_path}",
        "config_file": {"path": str(spec.config_path), "text": spec.text},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "ntkal_version": ntkal.__version__,
    }


def _checkpoint_path(name_or_path: str) -> Path:
    """The file behind a checkpoint name: a path, a shipped name, or a converted foundation model
    (its cached conversion, written by :func:`~ntkal.models.load_pretrained`)."""
    from ntkal.models import PRETRAINED_DIR
    from ntkal.models.converted_names import SEVENNET_CHECKPOINTS

    path = Path(name_or_path)
    if path.is_file():
        return path
    if name_or_path in SEVENNET_CHECKPOINTS:
        from ntkal.models.sevennet_convert import sevennet_cache_path
        return sevennet_cache_path(name_or_path)
    return PRETRAINED_DIR / f"{name_or_path}.msgpack"


def _fmt(value, scale: float = 1.0, digits: int = 4) -> str:
    return "n/a" if value is None else f"{scale * value:.{digits}f}"


_BACKBONE_NAMES = {"ntkal": "Built-in NequIP-style model", "mace": "MACE (InstaDeep mlip) model",
                   "nequip": "NequIP (InstaDeep mlip) model", "visnet": "ViSNet (InstaDeep mlip) model",
                   "sevennet": "SevenNet (NequIP, converted from sevenn) model"}


def model_card(metadata: dict, config: ModelConfig, n_params: int) -> str:
    """Markdown model card of a checkpoint written by :func:`train_from_files`."""
    name, data = metadata["name"], metadata["data"]
    init = metadata["init"]
    origin = (f"fine-tuned from `{init['init_from']}` (sha256 `{init['sha256'][:12]}…`)" if "init_from" in init
              else f"new model, initialisation seed {init['seed']}")
    unseen = [z for z in config.elements if z not in set(metadata["train_elements"])]
    lines = [f"# Model card: `{name}`", "",
             f"{_BACKBONE_NAMES[config.backbone]} ({n_params:,} parameters), elements {', '.join(config.symbols)}; "
             f"{origin}.", "",
             f"- **Training elements** (`train_elements`): {', '.join(symbols_of(metadata['train_elements']))}"
             + (f"; never seen in training: {', '.join(symbols_of(unseen))} (`ntkal select` warns on pools "
                "holding them)." if unseen else "."),
             "- **Data** (paths as resolved when trained):"]
    for kind in ("train", "val"):
        for f in data[kind]:
            lines.append(f"  - {kind}: `{f['path']}` — {f['frames']} frames, sha256 `{f['sha256']}`")
    holdout = (f"; {data['n_holdout']} of the training frames held out for validation (val_fraction "
               f"{data['val_fraction']}, seed {metadata['train_config']['seed']})" if data["n_holdout"] else "")
    lines += [f"- **Frames**: {data['n_train']} trained on, {data['n_val']} validation{holdout}.",
              f"- **Model config**: `{json.dumps(config.to_dict())}`",
              f"- **Training**: `{json.dumps(metadata['train_config'])}`; best epoch {metadata['best_epoch']} "
              f"of {metadata['epochs_run']} run.",
              f"- **Command**: `{metadata['command']}` ({metadata['wall_s']:.0f} s; ntkal "
              f"{metadata['ntkal_version']}, {metadata['created']}).", "",
              "| split | frames | E MAE (meV/atom) | E RMSE (meV/atom) | E MAE (eV) | F MAE (eV/Å) | F RMSE (eV/Å) |",
              "|---|---|---|---|---|---|---|"]
    for split, m in metadata["errors"].items():
        lines.append(f"| {split} | {m['n_structures']} | {_fmt(m['energy_mae_per_atom'], 1000, 1)} | "
                     f"{_fmt(m['energy_rmse_per_atom'], 1000, 1)} | {_fmt(m['energy_mae'])} | "
                     f"{_fmt(m['force_mae'])} | {_fmt(m['force_rmse'])} |")
    lines += ["", "`train` is measured on the frames trained on (the parameters of the best epoch); `val` on "
              "the validation frames (early stopping used them).", ""]
    return "\n".join(lines)
