"""Experiment configs: TOML → frozen dataclasses, with lists expanding to a sweep.

A config file has top-level ``name``, ``seeds`` (list) and ``out``, and the tables
``[data]``, ``[model]``, ``[loop]``, ``[kernel]``, ``[train]``. Any scalar field given
as a list becomes a sweep axis; the sweep is the cartesian product of all axes and the
seeds, in file order (axes vary slowest first). Fields that are lists by nature
(``data.tests``, ``data.pool``, ``kernel.param_filter``) sweep only when given as a list
of lists. Sweep points that differ only in settings their method ignores (the kernel
and selector of ``random``/``committee``) are merged.

Errors name the file, the line of the offending key and what was wrong.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import tomllib
from pathlib import Path
from typing import Any

from ntkal.kernels import KernelConfig
from ntkal.loop import LoopConfig
from ntkal.train import TrainConfig

__all__ = ["DataConfig", "ExperimentConfig", "ConfigError", "load_sweep", "expand_sweep",
           "sweep_label"]


class ConfigError(ValueError):
    """A config file that cannot be used; the message names file, line and problem."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the pool and the test sets come from.

    Attributes:
      dataset: a generator of :mod:`ntkal.datasets` (``oc20_like``, ``t1x_like``).
      size: generator size (``tiny``, ``small``, ``default``, ``large``).
      seed: generator seed.
      cache_dir: dataset cache folder.
      pool: pool composition: split names, each optionally ``"split:count"`` to draw
        ``count`` structures at random from that split (seeded by ``seed``).
      pool_filter: ``"target"`` removes the pretraining source subset from the pool
        (OC20-like: clean slabs and atomic adsorbates on ID metals); ``"all"`` keeps it.
      tests: test split names.
      max_test: at most this many structures per test split (random, seeded); 0 = all.
      oracle: ``"stored"`` (the reference labels computed when the dataset was generated
        by the same calculator), ``"emt"`` or ``"xtb"`` (recompute).
      replay_split: split the loop's ``replay`` sample is drawn from (the pretraining data).
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

    def __post_init__(self):
        for name in ("pool", "tests"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        if self.pool_filter not in ("target", "all"):
            raise ValueError(f"pool_filter must be 'target' or 'all', got {self.pool_filter!r}")
        if self.oracle not in ("stored", "emt", "xtb"):
            raise ValueError(f"oracle must be 'stored', 'emt' or 'xtb', got {self.oracle!r}")
        for spec in self.pool:
            if ":" in spec and not spec.split(":", 1)[1].isdigit():
                raise ValueError(f"pool entry {spec!r} must be 'split' or 'split:count'")


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
    """

    name: str
    checkpoint: str
    data: DataConfig
    loop: LoopConfig
    out: str = "runs"
    source: str = ""

    @property
    def label(self) -> str:
        return sweep_label(self)


_SECTIONS = {"data": DataConfig, "kernel": KernelConfig, "train": TrainConfig, "loop": LoopConfig}
_LIST_FIELDS = {("data", "pool"), ("data", "tests"), ("kernel", "param_filter")}
_TOP = {"name", "seeds", "out", "data", "model", "loop", "kernel", "train", "variants"}


def _line_of(text: str, key: str) -> int | None:
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=", re.M)
    match = pattern.search(text)
    return text[: match.start()].count("\n") + 1 if match else None


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


def expand_sweep(raw: dict[str, Any], *, source: str = "<config>", text: str = "") -> list[ExperimentConfig]:
    """Expand a parsed config dict (see module docstring) into sweep points.

    ``[[variants]]`` (optional, an array of tables with ``loop``/``kernel``/``train``
    sub-tables) lists method families that are not a cartesian product: each variant's
    settings override the base tables and the variant is expanded like a config of its own;
    the sweep is the union, in variant order, without duplicates.
    """
    variants = raw.get("variants")
    if variants is not None:
        if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
            _fail(source, text, "variants", "variants must be an array of tables ([[variants]])")
        points, seen = [], set()
        for variant in variants:
            bad = set(variant) - {"loop", "kernel", "train"}
            if bad:
                _fail(source, text, sorted(bad)[0], f"a variant may only set [loop], [kernel] and [train], "
                                                    f"got {sorted(bad)}")
            merged = {k: v for k, v in raw.items() if k != "variants"}
            for section, table in variant.items():
                merged[section] = {**raw.get(section, {}), **table}
            for point in expand_sweep(merged, source=source, text=text):
                if point not in seen:
                    seen.add(point)
                    points.append(point)
        return points
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
    seeds = raw.get("seeds", [0])
    seeds = seeds if isinstance(seeds, list) else [seeds]

    axes = []
    for section, cls in _SECTIONS.items():
        table = raw.get(section, {})
        if not isinstance(table, dict):
            _fail(source, text, section, f"[{section}] must be a table")
        fields = {f.name for f in dataclasses.fields(cls)} - {"kernel", "train", "seed"}
        for key in table:
            if key not in fields:
                _fail(source, text, key, f"unknown key {key!r} in [{section}] (expected one of {sorted(fields)})")
        axes.extend(_axes(section, table))
    axes.append((("loop", "seed"), list(seeds)))

    points, seen = [], set()
    for combo in itertools.product(*[values for _, values in axes]):
        tables: dict[str, dict] = {s: {} for s in _SECTIONS}
        for ((section, key), _), value in zip(axes, combo):
            tables[section][key] = tuple(value) if isinstance(value, list) else value
        try:
            data = DataConfig(**tables["data"])
            # Unset kernel fields take the loop's defaults (d = 512, 4 probes); w_force = 0 means
            # "trace-equalising weight, recomputed each round" (see LoopConfig).
            kernel = dataclasses.replace(LoopConfig().kernel, **tables["kernel"])
            train = TrainConfig(**tables["train"])
            loop = LoopConfig(**tables["loop"], kernel=kernel, train=train)
        except (TypeError, ValueError) as err:
            key = next((k for k in _keys_in(str(err)) if _line_of(text, k)), None)
            _fail(source, text, key, str(err))
        if loop.method in ("random", "committee"):  # kernel/selector/score settings are irrelevant
            base = LoopConfig()
            loop = dataclasses.replace(loop, kernel=KernelConfig(), selector="lcmd", **{
                f: getattr(base, f) for f in ("shortlist", "noise_var", "noise_rule", "feature_norm",
                                              "max_force_quantile", "reduction", "featurize_with",
                                              "cascade", "cascade_keep", "size_classes")})
        point = ExperimentConfig(name=str(raw["name"]), checkpoint=str(model["checkpoint"]), data=data,
                                 loop=loop, out=str(raw.get("out", f"runs/{raw['name']}")), source=source)
        if point not in seen:
            seen.add(point)
            points.append(point)
    return points


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
        if loop.cascade is not None:
            parts.append(f"cas{loop.cascade}{loop.cascade_keep:g}")
        if loop.featurize_with == "pretrained":
            parts.append("pre")
    if loop.replay:
        parts.append(f"rp{loop.replay}")
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", "-".join(str(p) for p in parts))
