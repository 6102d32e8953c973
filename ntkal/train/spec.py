"""The ``ntkal train`` config file: :func:`load_train_spec` reads and checks it into a
:class:`TrainSpec` without importing JAX (the config, every data file (exists, readable, a format
ntkal reads) and the output path, in about a second); :func:`ntkal.train.from_files.train_from_files`
runs it.

The TOML file (paths are relative to its folder)::

    name = "my_model"                    # optional; default: the stem of `out`
    out = "models/my_model.msgpack"      # the checkpoint (required unless --out); card: my_model.md
    seed = 0                             # seeds the initialisation; default of [train] seed

    [model]                              # a new model: ModelConfig fields, all optional ...
    elements = ["H", "C", "N", "O"]      # default: the elements of the training data
    cutoff = 4.0                         # Å
    hidden_irreps = "32x0e + 8x1o"
    # backbone = "mace"                  # or "nequip", "visnet": InstaDeep mlip networks (ntkal[mlip]);
    # [model.backbone_options]           # ... their own Config fields, e.g. num_channels = 32
    # avg_num_neighbors and energy_scale (eV), unless given, are measured on the training data
    # ... or fine-tune a checkpoint (its architecture is kept; no other [model] key):
    # init_from = "oc20_like"            # a shipped name, a checkpoint path or an mlip model .zip

    [data]
    train = ["train.extxyz", "more.extxyz.xz"]   # a file or a list; any format ntkal reads
    val = ["val.extxyz"]                 # optional: early stopping and the card's val errors
    val_fraction = 0.1                   # optional, without val: seeded hold-out of the train frames

    [train]                              # ntkal.train.TrainConfig fields (learning_rate, max_epochs, ...)
    max_epochs = 50

Every training and validation frame needs an energy label (eV); forces (eV/Å) are used when present.
Readable formats: anything ASE reads (extxyz, also ``.xz``/``.gz`` compressed, xyz, traj, ...),
ASE databases, OC20 ``.aselmdb`` and Transition1x-layout HDF5 (``file.h5:train`` picks a split),
as :func:`ntkal.datasets.files.read_structure_file`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

from ntkal.file_checks import writable_folder_problem
from ntkal.toml_checks import (ConfigFileError, Problems, check_fields, file_list, init_from_problem, read_toml,
                               resolve_path, spec_file)

__all__ = ["TrainSpec", "TrainConfigError", "load_train_spec", "model_config_class", "train_config_class"]

_TOP = ("name", "out", "seed", "model", "data", "train")
_DATA = ("train", "val", "val_fraction")

#: An unusable ``ntkal train`` config (every problem, one ``path, line N: ...`` line each).
TrainConfigError = ConfigFileError


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """A checked ``ntkal train`` config (paths resolved; nothing read beyond file headers).

    Attributes:
      config_path: the TOML file.
      text: its text (recorded in the checkpoint metadata).
      name: model name (metadata, card title).
      out: checkpoint path (``.msgpack``).
      seed: initialisation seed (a new model's parameters).
      model: ModelConfig fields given for a new model (``elements`` as atomic numbers), or ``None``.
      init_from: with fine-tuning, a shipped checkpoint name or a checkpoint path; else ``None``.
      train_files: training files (file specs), resolved.
      val_files: validation files, resolved (may be empty).
      train: TrainConfig fields (``seed`` defaulting to ``seed``; ``val_fraction`` from [data] or [train]).
    """

    config_path: Path
    text: str
    name: str
    out: Path
    seed: int
    model: dict[str, Any] | None
    init_from: str | None
    train_files: tuple[str, ...]
    val_files: tuple[str, ...]
    train: dict[str, Any]

    @property
    def card(self) -> Path:
        """The model card written beside the checkpoint: ``<out stem>.md``."""
        return self.out.with_suffix(".md")

    @property
    def val_fraction(self) -> float:
        return float(self.train.get("val_fraction", 0.0))


def model_config_class() -> type:
    """:class:`ntkal.models.ModelConfig` (its module imports no JAX)."""
    from ntkal.models.config import ModelConfig

    return ModelConfig


def train_config_class() -> type:
    """:class:`ntkal.train.TrainConfig` (its module imports no JAX)."""
    from ntkal.train.config import TrainConfig

    return TrainConfig


def model_config_class() -> type:
    """:class:`ntkal.models.ModelConfig` (its module imports no JAX)."""
    from ntkal.models.config import ModelConfig

    return ModelConfig


def train_config_class() -> type:
    """:class:`ntkal.train.TrainConfig` (its module imports no JAX)."""
    from ntkal.train.config import TrainConfig

    return TrainConfig


def _elements(problems: Problems, value) -> tuple[int, ...] | None:
    import ase.data

    if not isinstance(value, list) or not value:
        problems.add("model", "elements", f"[model] elements must be a non-empty list of symbols or atomic "
                                          f"numbers, got {value!r}")
        return None
    numbers = []
    for z in value:
        if isinstance(z, str) and z in ase.data.atomic_numbers and z != "X":
            numbers.append(ase.data.atomic_numbers[z])
        elif isinstance(z, int) and not isinstance(z, bool) and 1 <= z < len(ase.data.chemical_symbols):
            numbers.append(z)
        else:
            problems.add("model", "elements", f"[model] elements: {z!r} is not a chemical symbol or atomic number")
            return None
    return tuple(numbers)


#: e3nn irreps text: ``[mul x]l(e|o|y)`` terms joined by ``+``.
_IRREPS = re.compile(r"^\s*(\d+\s*x\s*)?\d+[eoy]\s*(\+\s*(\d+\s*x\s*)?\d+[eoy]\s*)*$")


def _out_problem(out: Path, inputs: list[str]) -> str | None:
    if out.suffix != ".msgpack":
        return f"{out}: the checkpoint must be a .msgpack file"
    for target in (out, out.with_suffix(".md")):
        if target.exists():
            if not target.is_file():
                return f"{target} exists and is not a regular file"
            if not os.access(target, os.W_OK):
                return f"{target} exists and is not writable"
    for spec in inputs:
        for target in (out, out.with_suffix(".md")):
            if os.path.abspath(target) == os.path.abspath(spec_file(spec)):
                return f"{target} is also a data file; it would be overwritten"
    return writable_folder_problem(out.parent)


def load_train_spec(path: str | os.PathLike, *, out: str | os.PathLike | None = None) -> TrainSpec:
    """Read and check an ``ntkal train`` config (see the module docstring); imports no JAX.

    Args:
      path: the TOML file; relative paths in it are relative to its folder.
      out: overrides the config's ``out`` (relative to the working directory).

    Raises:
      TrainConfigError: (a ``ValueError``) every problem found: unreadable or invalid TOML, unknown
        keys, wrong types or values (each with file and line), data files that are missing,
        unreadable, empty or of an unknown format, an output that is not a writable ``.msgpack``.
    """
    path = Path(path)
    text, raw = read_toml(path)
    base = path.resolve().parent
    problems = Problems(path, text)

    tables = _top_level_tables(problems, raw)
    name, seed = _name_and_seed(problems, raw)
    model, init_from = _model_section(problems, base, tables["model"])
    train_files, val_files = _data_files(problems, base, tables["data"])
    train = _train_fields(problems, tables["train"], tables["data"], seed)
    out_path = _checked_out_path(problems, base, raw, out, list(train_files + val_files))

    if problems.problems:
        raise TrainConfigError(problems.problems)
    return TrainSpec(config_path=path, text=text, name=name or out_path.stem, out=out_path, seed=seed,
                     model=model, init_from=init_from, train_files=train_files, val_files=val_files,
                     train=train)


def _top_level_tables(problems: Problems, raw: dict) -> dict[str, dict]:
    """The ``model``, ``data`` and ``train`` tables (``{}`` when absent or not a table), after
    reporting unknown top-level keys."""
    for key in raw:
        if key not in _TOP:
            problems.add(None, key, f"unknown top-level key {key!r} (expected one of {', '.join(_TOP)})")
    tables = {}
    for table in ("model", "data", "train"):
        value = raw.get(table, {})
        if not isinstance(value, dict):
            problems.add(None, table, f"{table} must be a table ([{table}])")
            value = {}
        tables[table] = value
    return tables


def _name_and_seed(problems: Problems, raw: dict) -> tuple[str | None, int]:
    """The top-level ``name`` (``None`` if not given) and ``seed`` (default 0; 0 after a reported
    problem)."""
    name = raw.get("name")
    if name is not None and not (isinstance(name, str) and name):
        problems.add(None, "name", f"name must be a non-empty string, got {name!r}")
    seed = raw.get("seed", 0)
    if not (isinstance(seed, int) and not isinstance(seed, bool)):
        problems.add(None, "seed", f"seed must be an integer, got {seed!r}")
        seed = 0
    return name, seed


def _model_section(problems: Problems, base: Path, table: dict) -> tuple[dict | None, str | None]:
    """``(model, init_from)`` of the ``[model]`` table: a checkpoint to fine-tune (``init_from``)
    or the fields of a new model; ``None`` for the one not given or unusable."""
    if "init_from" in table:
        return None, _init_from(problems, base, table)
    return _new_model_fields(problems, table), None


def _init_from(problems: Problems, base: Path, table: dict) -> str | None:
    """The checkpoint ``[model] init_from`` names (resolved against ``base``); it allows no other
    ``[model]`` key."""
    value = table["init_from"]
    others = sorted(set(table) - {"init_from"})
    if others:
        problems.add("model", others[0], f"[model] init_from fine-tunes a checkpoint and keeps its architecture; "
                                         f"remove {', '.join(others)} (or init_from for a new model)")
    if not (isinstance(value, str) and value):
        problems.add("model", "init_from", f"[model] init_from must be a shipped name or a checkpoint path, "
                                           f"got {value!r}")
        return None
    init_from, problem = init_from_problem(base, value)
    if problem:
        problems.add("model", "init_from", f"[model] init_from: {problem}")
    return init_from


def _new_model_fields(problems: Problems, table: dict) -> dict | None:
    """The ModelConfig fields of a new model (``elements`` as atomic numbers), or ``None`` after a
    reported problem (bad fields or elements, an mlip backbone with built-in settings or without
    the mlip package, bad ``hidden_irreps``)."""
    fields = dict(table)
    elements = _elements(problems, fields.pop("elements")) if "elements" in table else ()
    model = check_fields(problems, "model", {**fields, **({"elements": elements} if elements else {})},
                          model_config_class())
    if elements is None:  # already reported
        model = None
    if model is not None and table.get("backbone", "ntkal") != "ntkal" and _mlip_backbone_problems(problems, table):
        model = None
    if not _irreps_ok(problems, table):
        model = None
    return model


def _mlip_backbone_problems(problems: Problems, table: dict) -> bool:
    """Report a built-in-network setting given with an InstaDeep mlip backbone, and a missing mlip
    package; ``True`` if there was either."""
    from ntkal.models.config import NTKAL_ONLY_FIELDS, mlip_available

    backbone = table["backbone"]
    found = False
    unused = [k for k in NTKAL_ONLY_FIELDS if k in table]
    if unused:
        problems.add("model", unused[0], f"[model] {unused[0]} is a setting of the built-in network; the "
                                         f"{backbone} backbone takes its own in [model.backbone_options]")
        found = True
    if not mlip_available():
        problems.add("model", "backbone", f"[model] backbone = {backbone!r} needs InstaDeep's mlip package: "
                                          f"pip install 'ntkal[mlip]'")
        found = True
    return found


def _irreps_ok(problems: Problems, table: dict) -> bool:
    """``False`` (reported) when ``[model] hidden_irreps`` is a string that is not e3nn irreps text."""
    irreps = table.get("hidden_irreps")
    if isinstance(irreps, str) and not _IRREPS.match(irreps):
        problems.add("model", "hidden_irreps", f"[model] hidden_irreps must be e3nn irreps such as "
                                               f"'32x0e + 8x1o', got {irreps!r}")
        return False
    return True


def _data_files(problems: Problems, base: Path, data: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(train_files, val_files)`` of the ``[data]`` table, resolved against ``base`` and checked
    (:func:`~ntkal.toml_checks.file_list`); a file may not be both."""
    for key in data:
        if key not in _DATA:
            problems.add("data", key, f"unknown key {key!r} in [data] (expected one of {', '.join(_DATA)})")
    train_files = val_files = ()
    if "train" not in data:
        problems.add("data", None, "[data] train is missing (the training files)")
    else:
        train_files = file_list(problems, base, "train", data["train"])
    if "val" in data:
        val_files = file_list(problems, base, "val", data["val"])
        for spec in set(train_files) & set(val_files):
            problems.add("data", "val", f"[data] {spec} is both a training and a validation file")
    return train_files, val_files


def _train_fields(problems: Problems, train_table: dict, data: dict, seed: int) -> dict[str, Any]:
    """The checked TrainConfig fields of ``[train]``, with ``[data] val_fraction`` moved in and
    ``seed`` defaulting to the top-level one (``{}`` after a reported problem)."""
    train_table = dict(train_table)
    if "val_fraction" in data:
        if "val_fraction" in train_table:
            problems.add("data", "val_fraction", "val_fraction is given in both [data] and [train]; give it once")
        train_table["val_fraction"] = data["val_fraction"]
    train_table.setdefault("seed", seed)
    train = check_fields(problems, "train", train_table, train_config_class()) or {}
    fraction = train_table.get("val_fraction", 0.0)
    if "val" in data and isinstance(fraction, (int, float)) and fraction > 0:
        problems.add("data", "val_fraction", "val_fraction holds out training frames when no [data] val files "
                                             "are given; with val files, remove it")
    return train


def _checked_out_path(problems: Problems, base: Path, raw: dict, out, inputs: list[str]) -> Path | None:
    """The checkpoint path: ``out`` (``--out``) or the config's ``out`` (resolved against ``base``),
    checked by :func:`_out_problem`; ``None`` when neither is usable (reported)."""
    if out is not None:
        out_path, where = Path(out), "--out"
    elif isinstance(raw.get("out"), str) and raw["out"]:
        out_path, where = resolve_path(base, raw["out"]), None
    else:
        if "out" in raw:
            problems.add(None, "out", f"out must be a checkpoint path (…/name.msgpack), got {raw['out']!r}")
        else:
            problems.add(None, None, "no output: set out = \"name.msgpack\" or pass --out")
        return None
    problem = _out_problem(out_path, inputs)
    if problem:
        if where:
            problems.problems.append(f"argument --out: {problem}")
        else:
            problems.add(None, "out", f"out: {problem}")
    return out_path
