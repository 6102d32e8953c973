"""Experiment configs: TOML → frozen dataclasses, with lists expanding to a sweep.

A config file has top-level ``name``, ``seeds`` (list) and ``out``, and the tables
``[data]``, ``[model]``, ``[loop]``, ``[kernel]``, ``[train]``. Any scalar field given
as a list becomes a sweep axis; the sweep is the cartesian product of all axes and the
seeds, in file order (axes vary slowest first). Fields that are lists by nature
(``kernel.param_filter``, ``train.trainable``) sweep only when given as a list of lists.
Sweep points that differ only in settings their method ignores (the kernel and selector of
``random``/``committee``) are merged. A sweep runs one ``[data]`` setting: a ``[data]`` axis
would give points that share a label and a results folder, so it is refused when the file
loads (one config, with its own ``out``, per data setting).

Errors name the file, the line of the offending key and what was wrong.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import tomllib
from pathlib import Path
from typing import Any

from ntkal.added_fields import added_field, unrecorded_field
from ntkal.kernels import KernelConfig
from ntkal.labelling import OracleConfig
from ntkal.loop import LoopConfig
from ntkal.strategies import strategy_knobs
from ntkal.train import TrainConfig

__all__ = ["DataConfig", "ExperimentConfig", "ConfigError", "load_sweep", "expand_sweep",
           "sweep_label", "data_file_problems"]


class ConfigError(ValueError):
    """A config file that cannot be used; the message names file, line and problem."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the pool and the test sets come from: a generator, or the user's own files.

    Attributes:
      dataset: a generator of :mod:`ntkal.datasets` (``oc20_like``, ``t1x_like``, ``pmechdb_like``), or
        ``"files"``: the pool, the initial labelled set, the test splits and the replay data
        come from the ``*_files`` fields (any format of :mod:`ntkal.datasets.files`).
      size: generator size (``tiny``, ``small``, ``default``, ``large``).
      seed: generator seed (and the seed of the ``split:count`` / ``max_test`` subsamples).
      cache_dir: dataset cache folder.
      pool: pool composition: split names, each optionally ``"split:count"`` to draw
        ``count`` structures at random from that split (seeded by ``seed``).
      pool_filter: ``"target"`` removes the pretraining source subset from the pool
        (OC20-like: clean slabs and atomic adsorbates on ID metals); ``"all"`` keeps it.
      tests: test split names.
      max_test: at most this many structures per test split (random, seeded); 0 = all.
      oracle: ``"stored"`` (the labels already in the data: the generator's reference labels,
        or the labels in the user's pool files), ``"emt"`` or ``"xtb"`` (recompute); an
        ``[oracle]`` table in the config names any other calculator.
      replay_split: split the loop's ``replay`` sample is drawn from (the pretraining data).
      pool_files: ``dataset = "files"``: candidate structures (labels, if any, are used only
        by ``oracle = "stored"``). Paths relative to the config file.
      initial_files: labelled structures the first fine-tune starts from (then
        ``[loop] initial`` may be 0: no random initial picks from the pool).
      test_files: split name → file spec or list of file specs (labelled), e.g.
        ``test_files = {val = "val.extxyz", ood = ["a.traj", "b.traj"]}``.
      replay_files: labelled pretraining structures for ``[loop] replay``.
      target_set: unlabelled structures the model will be used on, for ``[loop] variance_target
        = "target_set"`` (``varred`` then reduces the posterior variance summed over them
        instead of over the pool): split names, each optionally ``"split:count"`` (drawn with
        their own seeded generator, so the pool and test subsamples stay as without it; the
        ``pool_filter`` applies). Never a test split: its frames would steer the picks.
      target_set_files: the same from the user's files (``dataset = "files"``; labels ignored).
      test_overlap: what a test frame that is also a pool, initial-set or target-set frame is
        (the same numbers, cell, pbc and positions to 1e-6 Å: :mod:`ntkal.data.overlap`):
        ``"error"`` (the run is refused before any compute, naming both files and frames) or
        ``"warn"`` (for studies that want it). Not recorded: changing it never blocks a resume.
    """

    dataset: str = "oc20_like"
    size: str = "tiny"
    seed: int = 0
    cache_dir: str = "data_cache"
    pool: tuple[str, ...] = ("train",)
    pool_filter: str = "target"
    tests: tuple[str, ...] = ("val_id",)
    max_test: int = 0
    oracle: str = "stored"
    replay_split: str = "pretrain"
    pool_files: tuple[str, ...] = ()
    initial_files: tuple[str, ...] = ()
    test_files: tuple[tuple[str, tuple[str, ...]], ...] = ()
    replay_files: tuple[str, ...] = ()
    target_set: tuple[str, ...] = added_field((), added_in="0.1 (issue 9)")
    target_set_files: tuple[str, ...] = added_field((), added_in="0.1 (issue 9)")
    test_overlap: str = unrecorded_field("error")

    def __post_init__(self):
        for name in ("pool", "tests", "pool_files", "initial_files", "replay_files", "target_set",
                     "target_set_files"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        tests = self.test_files
        items = tests.items() if isinstance(tests, dict) else tests
        object.__setattr__(self, "test_files", tuple(
            (str(name), (specs,) if isinstance(specs, str) else tuple(specs)) for name, specs in items))
        if self.pool_filter not in ("target", "all"):
            raise ValueError(f"pool_filter must be 'target' or 'all', got {self.pool_filter!r}")
        if self.test_overlap not in ("error", "warn"):
            raise ValueError(f"test_overlap must be 'error' or 'warn', got {self.test_overlap!r}")
        if self.oracle not in ("stored", "emt", "xtb"):
            raise ValueError(f"oracle must be 'stored', 'emt' or 'xtb', got {self.oracle!r}")
        for name in ("pool", "target_set"):
            for spec in getattr(self, name):
                if ":" in spec and not spec.split(":", 1)[1].isdigit():
                    raise ValueError(f"{name} entry {spec!r} must be 'split' or 'split:count'")
        tested = {spec.partition(":")[0] for spec in self.target_set} & set(self.tests)
        if tested:
            raise ValueError(f"target_set split {sorted(tested)[0]!r} is also a test split: the target's frames "
                             f"steer the picks, so they must not be the frames the run is tested on")
        test_specs = {spec for _, specs in self.test_files for spec in specs}
        tested = set(self.target_set_files) & test_specs
        if tested:
            raise ValueError(f"target_set_files {sorted(tested)[0]!r} is also a test file: the target's frames "
                             f"steer the picks, so they must not be the frames the run is tested on")
        files = (self.pool_files or self.initial_files or self.test_files or self.replay_files
                 or self.target_set_files)
        if self.from_files and not self.pool_files:
            raise ValueError("dataset = 'files' needs pool_files (the candidate structures)")
        if files and not self.from_files:
            raise ValueError("pool_files, initial_files, test_files, replay_files and target_set_files need "
                             "dataset = 'files'")

    @property
    def has_target_set(self) -> bool:
        """Whether the data names a target set (``target_set`` or ``target_set_files``)."""
        return bool(self.target_set or self.target_set_files)

    def without_target_set(self) -> "DataConfig":
        """The same data without its target set (what round 0 depends on)."""
        return dataclasses.replace(self, target_set=(), target_set_files=())

    @property
    def from_files(self) -> bool:
        """Whether the data comes from the user's files (``dataset = "files"``)."""
        return self.dataset == "files"

    def file_specs(self) -> dict[str, tuple[str, ...]]:
        """Every file the data reads, by config key (``pool_files``, ``test_files.val``, ...)."""
        out = {"pool_files": self.pool_files, "initial_files": self.initial_files,
               "replay_files": self.replay_files, "target_set_files": self.target_set_files}
        out.update({f"test_files.{name}": specs for name, specs in self.test_files})
        return {k: v for k, v in out.items() if v}


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One sweep point: everything :func:`ntkal.experiment.run` needs.

    Attributes:
      name: experiment name (results folder).
      checkpoint: pretrained model: a name for :func:`ntkal.models.load_pretrained` or a path.
      data: :class:`DataConfig`.
      loop: :class:`ntkal.loop.LoopConfig` (method, selector, kernel, train, seed, ...).
      out: output folder of the experiment.
      source: the file this point came from.
      oracle: the ``[oracle]`` table (:class:`ntkal.labelling.OracleConfig`: any ASE calculator
        or function, executor, retries, failure policy, label store), or ``None``: the labels
        come from ``data.oracle``.
      variant: the ``name`` of the ``[[variants]]`` entry this point came from, or ``None``:
        its label (results rows, point folders, plots, tables, statistics) instead of the one
        made from the method settings.
    """

    name: str
    checkpoint: str
    data: DataConfig
    loop: LoopConfig
    out: str = "runs"
    source: str = ""
    oracle: OracleConfig | None = None
    variant: str | None = added_field(None, added_in="0.1 (issue 29)")

    @property
    def label(self) -> str:
        """The method's name in results and folders: the variant's ``name``, else
        :func:`sweep_label` of the settings."""
        return self.variant if self.variant is not None else sweep_label(self)


_SECTIONS = {"data": DataConfig, "kernel": KernelConfig, "train": TrainConfig, "loop": LoopConfig}
_LIST_FIELDS = {("data", "pool"), ("data", "tests"), ("kernel", "param_filter"), ("train", "trainable"), ("data", "pool_files"),
                ("data", "initial_files"), ("data", "replay_files"), ("data", "target_set"),
                ("data", "target_set_files")}
#: data keys with file paths (resolved against the config file's folder)
_PATH_FIELDS = ("pool_files", "initial_files", "replay_files", "test_files", "target_set_files")
#: data keys that only a generator uses
_GENERATOR_FIELDS = ("size", "cache_dir", "pool", "pool_filter", "tests", "replay_split", "target_set")
_TOP = {"name", "seeds", "out", "data", "model", "loop", "kernel", "train", "variants", "oracle"}


def _line_of(text: str, key: str) -> int | None:
    """The first line that sets ``key``: as a table key, else inside an inline table
    (``loop = { ..., key = ... }`` of a ``[[variants]]`` entry)."""
    for pattern in (rf"^\s*{re.escape(key)}\s*=", rf"[{{,]\s*{re.escape(key)}\s*="):
        match = re.compile(pattern, re.M).search(text)
        if match:
            return text[: match.start()].count("\n") + 1
    return None


def _apply_strategy(loop: dict, data: DataConfig, source, text) -> None:
    """Replace ``[loop] strategy`` by the knob values it stands for (in place); a knob also given
    explicitly must agree with it."""
    name = loop.pop("strategy", None)
    if name is None:
        return
    try:
        knobs = strategy_knobs(name, has_target_set=data.has_target_set)
    except ValueError as err:
        _fail(source, text, "strategy", str(err))
    for key, value in knobs.items():
        if key in loop and loop[key] != value:
            _fail(source, text, key, f"[loop] {key} = {loop[key]!r} contradicts strategy = {name!r} (which sets "
                                     f"{key} = {value!r}); remove one of them")
    loop.update(knobs)


#: A ``[[variants]]`` name: it becomes a folder name and the label of results.
_VARIANT_NAME = re.compile(r"[A-Za-z0-9_.+-]+")


def _fail_at_name(path, text, name, message, *, nth: int = 0):
    """:func:`_fail` at the ``nth`` line that sets a variant's ``name = <name>``."""
    pattern = re.compile(rf"^\s*name\s*=\s*([\"']){re.escape(str(name))}\1", re.M)
    starts = [m.start() for m in pattern.finditer(text)]
    if len(starts) > nth:
        raise ConfigError(f"{path}, line {text[: starts[nth]].count(chr(10)) + 1}: {message}")
    _fail(path, text, None, message)


def _check_labels(points: list[ExperimentConfig], source, text) -> None:
    """Two different points with one label and seed would share a point folder and a results
    label: refused, naming both (settings that :func:`sweep_label` does not show, such as
    ``[train]`` ones, need a variant ``name``)."""
    by_key: dict[tuple, ExperimentConfig] = {}
    for point in points:
        key = (point.label, point.loop.seed)
        other = by_key.setdefault(key, point)
        if other is not point and other.data != point.data:
            # a [data] sweep axis: the label, the point folder and the results rows would not
            # tell the data settings apart (and a variant cannot set [data])
            fields = _differences(other.data, point.data, "data.")
            differ = ", ".join(fields)
            first = fields[0].split(":")[0].split(".")[-1]  # its line is the one shown
            _fail(source, text, first, f"two points labelled {point.label!r} (seed {point.loop.seed}) differ "
                                        f"in {differ}; a sweep runs one [data] setting (its points would share "
                                        f"one results folder and label): write one config, with its own out, "
                                        f"per data setting")
        if other is not point and other != point:
            differ = ", ".join(_differences(other, point)) or "settings"
            _fail(source, text, "variants", f"two different points are both labelled {point.label!r} (seed "
                                            f"{point.loop.seed}), so they would share one results folder; they "
                                            f"differ in {differ}, which the label does not show: give each "
                                            f"[[variants]] entry a name = \"...\" (or drop one)")


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """``"loop.noise_rule: 'auto' vs 'evidence'"`` for every (nested dataclass) field that differs."""
    if dataclasses.is_dataclass(a) and type(a) is type(b):
        out = []
        for f in dataclasses.fields(a):
            out += _differences(getattr(a, f.name), getattr(b, f.name), f"{prefix}{f.name}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: {a!r} vs {b!r}"]


def _fail(path, text, key, message):
    line = _line_of(text, key) if key else None
    where = f"{path}, line {line}" if line else f"{path}"
    raise ConfigError(f"{where}: {message}")


def _axes(section: str, table: dict) -> list[tuple[tuple[str, str], list]]:
    axes = []
    for key, value in table.items():
        is_list = isinstance(value, list)
        if (section, key) in _LIST_FIELDS:
            sweep = is_list and value and all(isinstance(v, list) for v in value)
        else:
            sweep = is_list
        axes.append(((section, key), value if sweep else [value]))
    return axes


def load_sweep(path: str | Path) -> list[ExperimentConfig]:
    """Parse a TOML experiment file into its expanded list of sweep points.

    Raises:
      ConfigError: unreadable TOML (with line/column), unknown sections or keys, bad values.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from err
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from err
    return expand_sweep(raw, source=str(path), text=text)


def expand_sweep(raw: dict[str, Any], *, source: str = "<config>", text: str = "",
                 check_labels: bool = True) -> list[ExperimentConfig]:
    """Expand a parsed config dict (see module docstring) into sweep points.

    Two different points may not share a label and seed (they would share a results folder):
    a :class:`ConfigError` asks for variant names (``check_labels=False``: the caller checks).

    ``[[variants]]`` (optional, an array of tables with ``loop``/``kernel``/``train``
    sub-tables and an optional ``name``) lists method families that are not a cartesian product:
    each variant's settings override the base tables and the variant is expanded like a config
    of its own; the sweep is the union, in variant order, without duplicates. A named variant is
    one setting (over the seeds); its name labels its points everywhere.
    """
    if raw.get("variants") is not None:
        points = _expand_variants(raw, source, text)
    else:
        _check_top_level(raw, source, text)
        checkpoint = _checkpoint_of(raw, source)
        oracle = _oracle_of(raw, source, text)
        axes = _sweep_axes(raw, source, text)
        points = _sweep_points(raw, axes, checkpoint, oracle, source, text)
    if check_labels:
        _check_labels(points, source, text)
    return points


def _expand_variants(raw: dict[str, Any], source: str, text: str) -> list[ExperimentConfig]:
    """The union of the ``[[variants]]``' sweeps (:func:`_expand_variant`), in variant order,
    without duplicates."""
    variants = raw["variants"]
    if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
        _fail(source, text, "variants", "variants must be an array of tables ([[variants]])")
    points, seen, names = [], set(), set()
    for variant in variants:
        name = _variant_name(variant, names, source, text)
        for point in _expand_variant(raw, variant, name, source, text):
            if point not in seen:
                seen.add(point)
                points.append(point)
    return points


def _variant_name(variant: dict, names: set, source: str, text: str) -> str | None:
    """The variant's ``name`` (``None`` if unnamed), added to ``names`` (the names of the variants
    before it), after checking that the variant sets nothing but ``name``, ``[loop]``, ``[kernel]``
    and ``[train]`` and that its name is valid and new."""
    bad = set(variant) - {"name", "loop", "kernel", "train"}
    if bad:
        _fail(source, text, sorted(bad)[0], f"a variant may only set name, [loop], [kernel] and [train], "
                                            f"got {sorted(bad)}")
    name = variant.get("name")
    if name is not None:
        if not (isinstance(name, str) and _VARIANT_NAME.fullmatch(name)):
            _fail_at_name(source, text, name, f"a variant name must be letters, digits and _ . + - "
                                              f"(it names folders), got {name!r}")
        if name in names:
            _fail_at_name(source, text, name, f"two variants are named {name!r}", nth=1)
        names.add(name)
    return name


def _expand_variant(raw: dict[str, Any], variant: dict, name: str | None, source: str,
                    text: str) -> list[ExperimentConfig]:
    """The sweep of one variant: its tables override the base config's (key by key), expanded
    like a config of its own; a named variant must be one setting over the seeds, its points
    labelled with the name."""
    merged = {k: v for k, v in raw.items() if k != "variants"}
    for section, table in variant.items():
        if section != "name":
            merged[section] = {**raw.get(section, {}), **table}
    expanded = expand_sweep(merged, source=source, text=text, check_labels=False)
    if name is None:
        return expanded
    settings = {dataclasses.replace(p, loop=dataclasses.replace(p.loop, seed=0)) for p in expanded}
    if len(settings) > 1:
        _fail_at_name(source, text, name, f"variant {name!r} sweeps {len(settings)} settings (a "
                                          f"list value); a named variant is one setting: give each "
                                          f"its own [[variants]] entry and name")
    return [dataclasses.replace(p, variant=name) for p in expanded]


def _check_top_level(raw: dict[str, Any], source: str, text: str) -> None:
    """Refuse unknown top-level keys, a missing ``name`` and a ``[model]`` table that is not just
    ``checkpoint``."""
    unknown = set(raw) - _TOP
    if unknown:
        key = sorted(unknown)[0]
        _fail(source, text, key, f"unknown top-level key or table {key!r} (expected one of {sorted(_TOP)})")
    if "name" not in raw:
        _fail(source, text, None, "missing top-level 'name'")
    model = raw.get("model", {})
    if "checkpoint" not in model:
        _fail(source, text, None, "missing [model] checkpoint")
    if set(model) - {"checkpoint"}:
        key = sorted(set(model) - {"checkpoint"})[0]
        _fail(source, text, key, f"unknown key {key!r} in [model] (expected 'checkpoint')")


def _checkpoint_of(raw: dict[str, Any], source: str) -> str:
    """``[model] checkpoint``: a checkpoint file next to the config file when there is one (made
    absolute), else as given (a path relative to the working directory, or a shipped name)."""
    checkpoint = str(raw["model"]["checkpoint"])
    beside = Path(source).resolve().parent / checkpoint if Path(source).is_file() else None
    if beside is not None and not Path(checkpoint).is_absolute() and beside.is_file():
        checkpoint = str(beside)  # a checkpoint file next to the config (else cwd or a shipped name)
    return checkpoint


def _oracle_of(raw: dict[str, Any], source: str, text: str) -> OracleConfig | None:
    """The ``[oracle]`` table as an :class:`OracleConfig` (its ``store`` made absolute against the
    config file's folder), ``None`` without one; it excludes a ``[data] oracle`` other than
    ``"stored"``."""
    if "oracle" not in raw:
        return None
    try:
        oracle = OracleConfig.from_dict(raw["oracle"])
    except (TypeError, ValueError, ImportError) as err:
        key = next((k for k in _keys_in(str(err)) if k in raw["oracle"]), "oracle")
        _fail(source, text, key, str(err))
    if raw.get("data", {}).get("oracle", "stored") != "stored":
        _fail(source, text, "oracle", "set either [data] oracle (a shortcut) or an [oracle] table, not both")
    if oracle.store and not Path(oracle.store).is_absolute() and Path(source).is_file():
        oracle = dataclasses.replace(oracle, store=str(Path(source).resolve().parent / oracle.store))
    return oracle


def _sweep_axes(raw: dict[str, Any], source: str, text: str) -> list[tuple[tuple[str, str], list]]:
    """The sweep axes ``((section, key), values)`` of the ``[data]``, ``[kernel]``, ``[train]`` and
    ``[loop]`` tables in file order (:func:`_axes`; unknown keys refused, ``[data]`` paths
    resolved), then the seeds (``seeds``, a list or one value; default ``[0]``)."""
    seeds = raw.get("seeds", [0])
    seeds = seeds if isinstance(seeds, list) else [seeds]
    axes = []
    for section, cls in _SECTIONS.items():
        table = raw.get(section, {})
        if not isinstance(table, dict):
            _fail(source, text, section, f"[{section}] must be a table")
        if section == "data":
            table = _resolve_data_paths(table, source, text)
        fields = {f.name for f in dataclasses.fields(cls)} - {"kernel", "train", "seed"}
        if section == "loop":
            fields |= {"strategy"}  # a named strategy: sets the knobs of ntkal.strategies
        for key in table:
            if key not in fields:
                _fail(source, text, key, f"unknown key {key!r} in [{section}] (expected one of {sorted(fields)})")
        axes.extend(_axes(section, table))
    axes.append((("loop", "seed"), list(seeds)))
    return axes


def _sweep_points(raw: dict[str, Any], axes, checkpoint: str, oracle: OracleConfig | None, source: str,
                  text: str) -> list[ExperimentConfig]:
    """One :class:`ExperimentConfig` per combination of the ``axes`` values (cartesian product, the
    first axis varying slowest), without duplicates; settings a ``random``/``committee`` point
    ignores are reset to their defaults (so such points merge)."""
    points, seen = [], set()
    for combo in itertools.product(*[values for _, values in axes]):
        tables: dict[str, dict] = {s: {} for s in _SECTIONS}
        for ((section, key), _), value in zip(axes, combo):
            tables[section][key] = tuple(value) if isinstance(value, list) else value
        try:
            data = DataConfig(**tables["data"])
            _apply_strategy(tables["loop"], data, source, text)
            # Unset kernel fields take the loop's defaults (d = 512, 4 probes); w_force = 0 means
            # "trace-equalising weight, recomputed each round" (see LoopConfig).
            kernel = dataclasses.replace(LoopConfig().kernel, **tables["kernel"])
            # Unset [train] keys take the loop's fine-tune (FINETUNE_DEFAULTS, the studies' one),
            # not TrainConfig's from-scratch defaults.
            train = dataclasses.replace(LoopConfig().train, **tables["train"])
            loop = LoopConfig(**tables["loop"], kernel=kernel, train=train)
        except (TypeError, ValueError) as err:
            key = next((k for k in _keys_in(str(err)) if _line_of(text, k)), None)
            _fail(source, text, key, str(err))
        if loop.method in ("random", "committee"):  # kernel/selector/score settings are irrelevant
            base = LoopConfig()
            loop = dataclasses.replace(loop, kernel=KernelConfig(), selector="lcmd", **{
                f: getattr(base, f) for f in ("shortlist", "noise_var", "noise_rule", "feature_norm",
                                              "max_force_quantile", "reduction", "featurize_with",
                                              "cascade", "cascade_keep", "size_classes",
                                              "target_weighting", "force_noise_scale",
                                              "variance_target")})
        if loop.variance_target == "target_set" and not data.has_target_set:
            _fail(source, text, "variance_target", "variance_target = 'target_set' needs a target set: "
                                                   "[data] target_set (or target_set_files)")
        point = ExperimentConfig(name=str(raw["name"]), checkpoint=checkpoint, data=data,
                                 loop=loop, out=str(raw.get("out", f"runs/{raw['name']}")), source=source,
                                 oracle=oracle)
        if point not in seen:
            seen.add(point)
            points.append(point)
    return points


def _resolve_data_paths(table: dict, source: str, text: str) -> dict:
    """The ``[data]`` table with file paths made absolute against the config file's folder,
    after checking that a ``files`` dataset sets no generator key."""
    if table.get("dataset") == "files":
        for key in _GENERATOR_FIELDS:
            if key in table:
                _fail(source, text, key, f"[data] {key} applies to generated datasets, not dataset = 'files' "
                                         f"(use pool_files / test_files / initial_files / replay_files / "
                                         f"target_set_files)")
    if "test_files" in table and not isinstance(table["test_files"], dict):
        _fail(source, text, "test_files", "test_files must be a table: split name = file or list of files, "
                                          "e.g. test_files = {val = \"val.extxyz\"}")
    base = Path(source).resolve().parent if Path(source).is_file() else Path.cwd()

    def resolve(spec):
        if isinstance(spec, list):
            return [resolve(item) for item in spec]
        if not isinstance(spec, str):
            return spec
        return str(base / spec) if not Path(spec).is_absolute() else spec

    out = dict(table)
    for key in _PATH_FIELDS:
        if key in out:
            value = out[key]
            out[key] = {k: resolve(v) for k, v in value.items()} if isinstance(value, dict) else resolve(value)
    return out


def data_file_problems(points: list[ExperimentConfig]) -> list[str]:
    """Every unreadable data file of ``points`` as ``"<config>, line L: [data] key: problem"``
    (cheap: existence, permissions and format, no structure is parsed)."""
    from ntkal.datasets.files import file_spec_problem

    problems, seen = [], set()
    for point in points:
        text = Path(point.source).read_text() if Path(point.source).is_file() else ""
        for key, specs in point.data.file_specs().items():
            for spec in specs:
                if (key, spec) in seen:
                    continue
                seen.add((key, spec))
                problem = file_spec_problem(spec)
                if problem:
                    line = _line_of(text, key.split(".")[0])
                    where = f"{point.source}, line {line}" if line else point.source
                    problems.append(f"{where}: [data] {key}: {problem}")
    return problems


def _keys_in(message: str) -> list[str]:
    return re.findall(r"\b([a-z_]+)\b", message)


def sweep_label(config: ExperimentConfig) -> str:
    """A short, file-name-safe label of a sweep point's method settings (without the seed)."""
    loop = config.loop
    if loop.method in ("random", "committee"):
        parts = [loop.method] + ([f"n{loop.committee_size}"] if loop.method == "committee" else [])
    else:
        k = loop.kernel
        parts = [loop.method, loop.selector]
        if loop.method in ("energy", "force_exact", "force_probe", "joint"):
            parts.append(f"d{k.sketch_dim}")
            filt = k.param_filter if isinstance(k.param_filter, str) else "+".join(k.param_filter)
            if filt != "all":
                parts.append(filt)
        if loop.method == "force_probe" or (loop.method == "joint" and k.joint_force == "probe"):
            parts.append(f"k{k.num_probes}")
        if loop.method == "joint" and k.w_force > 0:
            parts.append(f"wf{k.w_force:g}")
        norm = {"median_trace": "med", "per_structure": "cos"}.get(loop.feature_norm)
        if norm:
            parts.append(norm)
        if loop.uses_evidence:
            parts.append("ev")
        elif loop.noise_var != LoopConfig.noise_var:
            parts.append(f"s{loop.noise_var:g}")
        if loop.max_force_quantile < 1:
            parts.append(f"fq{loop.max_force_quantile:g}")
        if loop.target_weighting == "per_structure":
            parts.append("tws")
        if loop.force_noise_scale > 0:
            parts.append(f"fn{loop.force_noise_scale:g}")
        if loop.variance_target == "target_set":
            parts.append("tgt")
        if loop.cascade is not None:
            parts.append(f"cas{loop.cascade}{loop.cascade_keep:g}")
        if loop.featurize_with == "pretrained":
            parts.append("pre")
    if loop.replay:
        parts.append(f"rp{loop.replay}")
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", "-".join(str(p) for p in parts))
