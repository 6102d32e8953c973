"""``ntkal train CONFIG.toml``: pretrain or fine-tune a model from structure files.

Importing this module does not import JAX: the config file, every data file (exists, readable,
a format ntkal reads) and the output path are checked first (:func:`load_train_spec`, about a
second), then :func:`ntkal.train.from_files.train_from_files` runs.

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

import argparse
import dataclasses
import os
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

from ntkal.compile_cache import add_compile_cache_argument, enable_compile_cache_or_warn
from ntkal.select_args import input_file_problem, shipped_model_names, writable_folder_problem

__all__ = ["TrainSpec", "TrainConfigError", "load_train_spec", "add_train_arguments", "main_train",
           "model_config_class", "train_config_class"]

_TOP = ("name", "out", "seed", "model", "data", "train")
_DATA = ("train", "val", "val_fraction")


class TrainConfigError(ValueError):
    """An unusable ``ntkal train`` config: one line per problem, each naming the file and, where
    it can be found, the line (``path, line N: what is wrong``)."""

    def __init__(self, problems: list[str]):
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


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


# --------------------------------------------------------------------------------------------
# the config file


class _Problems:
    """Collects ``path, line N: message`` lines; the line of a key is looked up in its table."""

    def __init__(self, path: Path, text: str):
        self.path, self.lines, self.problems = path, text.splitlines(), []

    def line_of(self, table: str | None, key: str | None = None) -> int | None:
        """Line (1-based) of ``key`` in ``[table]`` (``None``: top level), or of the table header."""
        current = None
        header = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\"' -]+?)\s*\]\s*(#.*)?$")
        for number, line in enumerate(self.lines, 1):
            match = header.match(line)
            if match:
                current = match.group(1).strip("\"'")
                if key is None and current == table:
                    return number
                continue
            if key is not None and current == table and re.match(
                    rf"^\s*(?:\"{re.escape(key)}\"|'{re.escape(key)}'|{re.escape(key)})\s*=", line):
                return number
        return None

    def add(self, table: str | None, key: str | None, message: str) -> None:
        line = self.line_of(table, key) if key is not None or table is not None else None
        if line is None and table is not None and key is not None:
            line = self.line_of(table)
        self.problems.append(f"{self.path}, line {line}: {message}" if line else f"{self.path}: {message}")


_TYPE_CHECKS = {
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
}


def _check_fields(problems: _Problems, table: str, values: dict, cls: type, skip=()) -> dict | None:
    """Keys and value types of ``[table]`` against the dataclass ``cls``; then ``cls(**values)``'s own
    checks. Returns the values (floats as floats) or ``None`` after a problem."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    ok = True
    out = {}
    for key, value in values.items():
        if key not in fields:
            problems.add(table, key, f"unknown key {key!r} in [{table}] (expected one of {', '.join(sorted(fields))})")
            ok = False
            continue
        kind = str(fields[key].type)
        check = _TYPE_CHECKS.get(kind)
        if check and not check[0](value):
            problems.add(table, key, f"[{table}] {key} must be {check[1]}, got {value!r}")
            ok = False
            continue
        out[key] = float(value) if kind == "float" else value
    if not ok:
        return None
    try:
        cls(**out)
    except (TypeError, ValueError, KeyError) as err:
        key = next((k for k in re.findall(r"\b([a-z_]+)\b", str(err)) if k in out), None)
        problems.add(table, key, f"[{table}] {err}")
        return None
    return out


def _elements(problems: _Problems, value) -> tuple[int, ...] | None:
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


def _resolve(base: Path, value: str) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else Path(os.path.normpath(base / path))


#: Suffixes read by ntkal's own readers (:mod:`ntkal.datasets.files`) rather than ``ase.io``.
_NTKAL_FORMATS = (".h5", ".hdf5", ".aselmdb", ".db", ".json")


def _spec_file(spec: str) -> str:
    """The file of a file spec (``file.h5:train`` → ``file.h5``)."""
    return spec if os.path.exists(spec) or ":" not in spec else spec.rpartition(":")[0]


def _spec_problem(spec: str) -> str | None:
    """Why the file spec cannot be read (``None``: it looks readable). Plain structure files take
    the fast ASE check of ``ntkal select``; HDF5, LMDB and database files (and ``file.h5:split``)
    :func:`ntkal.datasets.files.file_spec_problem`, which imports the readers."""
    if _spec_file(spec).lower().endswith(_NTKAL_FORMATS):
        from ntkal.datasets.files import file_spec_problem
        return file_spec_problem(spec)
    return input_file_problem(spec)


def _files(problems: _Problems, base: Path, key: str, value, table: str = "data") -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        problems.add(table, key, f"[{table}] {key} must be a file name or a list of file names, got {value!r}")
        return ()
    specs = []
    for item in value:
        spec = str(_resolve(base, item))
        problem = _spec_problem(spec)
        if problem:
            problems.add(table, key, f"[{table}] {key}: {problem}")
        specs.append(spec)
    return tuple(specs)


def _init_from_problem(base: Path, value: str) -> tuple[str | None, str | None]:
    """``(resolved, problem)`` of ``[model] init_from``: a checkpoint file (relative to the
    config's folder) or a shipped name."""
    path = _resolve(base, value)
    if path.is_file():
        if path.stat().st_size == 0:
            return None, f"checkpoint {path} is empty"
        if not os.access(path, os.R_OK):
            return None, f"checkpoint {path} is not readable"
        if path.suffix == ".zip":
            from ntkal.models.config import mlip_available

            if not mlip_available():
                return None, f"{path} is an mlip model file; reading it needs pip install 'ntkal[mlip]'"
        return str(path), None
    if value in shipped_model_names():
        return value, None
    if path.exists():
        return None, f"{path} is not a checkpoint file"
    return None, (f"{value!r} is neither a checkpoint file ({path}) nor a shipped model "
                  f"({', '.join(shipped_model_names())})")


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
            if os.path.abspath(target) == os.path.abspath(_spec_file(spec)):
                return f"{target} is also a data file; it would be overwritten"
    return writable_folder_problem(out.parent)


def read_toml(path: Path) -> tuple[str, dict]:
    """``(text, parsed)`` of a TOML config, or :class:`TrainConfigError` naming the file."""
    try:
        text = path.read_text()
    except OSError as err:
        raise TrainConfigError([f"{path}: cannot read ({err.strerror})"]) from err
    except UnicodeDecodeError as err:
        raise TrainConfigError([f"{path}: not a text (TOML) file ({err})"]) from err
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise TrainConfigError([f"{path}: invalid TOML: {err}"]) from err


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
    problems = _Problems(path, text)

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
    name = raw.get("name")
    if name is not None and not (isinstance(name, str) and name):
        problems.add(None, "name", f"name must be a non-empty string, got {name!r}")
    seed = raw.get("seed", 0)
    if not (isinstance(seed, int) and not isinstance(seed, bool)):
        problems.add(None, "seed", f"seed must be an integer, got {seed!r}")
        seed = 0

    # [model]
    model_table, model, init_from = tables["model"], None, None
    if "init_from" in model_table:
        value = model_table["init_from"]
        others = sorted(set(model_table) - {"init_from"})
        if others:
            problems.add("model", others[0], f"[model] init_from fine-tunes a checkpoint and keeps its architecture; "
                                             f"remove {', '.join(others)} (or init_from for a new model)")
        if not (isinstance(value, str) and value):
            problems.add("model", "init_from", f"[model] init_from must be a shipped name or a checkpoint path, "
                                               f"got {value!r}")
        else:
            init_from, problem = _init_from_problem(base, value)
            if problem:
                problems.add("model", "init_from", f"[model] init_from: {problem}")
    else:
        fields = dict(model_table)
        elements = _elements(problems, fields.pop("elements")) if "elements" in model_table else ()
        model = _check_fields(problems, "model", {**fields, **({"elements": elements} if elements else {})},
                              model_config_class())
        if elements is None:  # already reported
            model = None
        backbone = model_table.get("backbone", "ntkal")
        if model is not None and backbone != "ntkal":
            from ntkal.models.config import NTKAL_ONLY_FIELDS, mlip_available

            unused = [k for k in NTKAL_ONLY_FIELDS if k in model_table]
            if unused:
                problems.add("model", unused[0], f"[model] {unused[0]} is a setting of the built-in network; the "
                                                 f"{backbone} backbone takes its own in [model.backbone_options]")
                model = None
            if not mlip_available():
                problems.add("model", "backbone", f"[model] backbone = {backbone!r} needs InstaDeep's mlip package: "
                                                  f"pip install 'ntkal[mlip]'")
                model = None
        irreps = model_table.get("hidden_irreps")
        if isinstance(irreps, str) and not _IRREPS.match(irreps):
            problems.add("model", "hidden_irreps", f"[model] hidden_irreps must be e3nn irreps such as "
                                                   f"'32x0e + 8x1o', got {irreps!r}")
            model = None

    # [data]
    data = tables["data"]
    for key in data:
        if key not in _DATA:
            problems.add("data", key, f"unknown key {key!r} in [data] (expected one of {', '.join(_DATA)})")
    train_files = val_files = ()
    if "train" not in data:
        problems.add("data", None, "[data] train is missing (the training files)")
    else:
        train_files = _files(problems, base, "train", data["train"])
    if "val" in data:
        val_files = _files(problems, base, "val", data["val"])
        for spec in set(train_files) & set(val_files):
            problems.add("data", "val", f"[data] {spec} is both a training and a validation file")

    # [train] (+ [data] val_fraction)
    train_table = dict(tables["train"])
    if "val_fraction" in data:
        if "val_fraction" in train_table:
            problems.add("data", "val_fraction", "val_fraction is given in both [data] and [train]; give it once")
        train_table["val_fraction"] = data["val_fraction"]
    train_table.setdefault("seed", seed)
    train = _check_fields(problems, "train", train_table, train_config_class()) or {}
    fraction = train_table.get("val_fraction", 0.0)
    if "val" in data and isinstance(fraction, (int, float)) and fraction > 0:
        problems.add("data", "val_fraction", "val_fraction holds out training frames when no [data] val files "
                                             "are given; with val files, remove it")

    # out
    if out is not None:
        out_path, where = Path(out), "--out"
    elif isinstance(raw.get("out"), str) and raw["out"]:
        out_path, where = _resolve(base, raw["out"]), None
    else:
        out_path, where = None, None
        if "out" in raw:
            problems.add(None, "out", f"out must be a checkpoint path (…/name.msgpack), got {raw['out']!r}")
        else:
            problems.add(None, None, "no output: set out = \"name.msgpack\" or pass --out")
    if out_path is not None:
        problem = _out_problem(out_path, list(train_files + val_files))
        if problem:
            if where:
                problems.problems.append(f"argument --out: {problem}")
            else:
                problems.add(None, "out", f"out: {problem}")

    if problems.problems:
        raise TrainConfigError(problems.problems)
    return TrainSpec(config_path=path, text=text, name=name or out_path.stem, out=out_path, seed=seed,
                     model=model, init_from=init_from, train_files=train_files, val_files=val_files,
                     train=train)


# --------------------------------------------------------------------------------------------
# the subcommand


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``ntkal train`` arguments to ``parser``."""
    parser.add_argument("config", type=Path, help="TOML config: [model], [data], [train], out, seed "
                        "(see ntkal/train_cli.py or experiments/configs/train_example.toml)")
    parser.add_argument("--out", type=Path, default=None,
                        help="checkpoint path (.msgpack, relative to the working directory; overrides the "
                             "config's 'out'); the model card <stem>.md is written beside it")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or log lines, only the result line")
    parser.add_argument("--no-resume", action="store_true",
                        help="start over: delete the fit state <stem>.state.npz that a killed run left beside "
                             "the checkpoint (by default the same command resumes from its last epoch)")
    add_compile_cache_argument(parser)
    return parser


def command_of(args: argparse.Namespace) -> str:
    """The ``ntkal train`` command line of parsed ``args`` (recorded in the metadata)."""
    argv = [str(args.config)] + (["--out", str(args.out)] if args.out is not None else []) + \
        (["--quiet"] if args.quiet else []) + (["--no-resume"] if getattr(args, "no_resume", False) else []) + \
        (["--no-compile-cache"] if getattr(args, "no_compile_cache", False) else [])
    return "ntkal train " + shlex.join(argv)


def main_train(args: argparse.Namespace) -> int:
    """Run ``ntkal train`` from parsed arguments; returns 0.

    The config and every file are checked (:func:`load_train_spec`) before JAX is imported; then
    the persistent compilation cache is turned on (unless ``--no-compile-cache``).

    Raises:
      TrainConfigError: an unusable config (exit status 2 through :func:`ntkal.cli.main`).
    """
    spec = load_train_spec(args.config, out=args.out)
    if not getattr(args, "no_compile_cache", False):
        enable_compile_cache_or_warn()  # before the first compilation
    from ntkal.train.from_files import train_from_files

    result = train_from_files(spec, progress=not args.quiet, command=command_of(args),
                              log=None if args.quiet else print, resume=not getattr(args, "no_resume", False))
    meta = result.metadata
    val = meta["errors"].get("val") or {}
    scores = (f"val force MAE {val['force_mae']:.4f} eV/Å, energy MAE {1000 * val['energy_mae_per_atom']:.1f} "
              f"meV/atom; " if val.get("force_mae") is not None and val.get("energy_mae_per_atom") is not None
              else "")
    print(f"trained {meta['name']}: best epoch {meta['best_epoch']} of {meta['epochs_run']}; {scores}"
          f"{meta['wall_s']:.0f} s -> {result.out_path} (card {result.card_path})")
    return 0
