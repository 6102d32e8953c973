"""``ntkal md`` configs: TOML → frozen dataclasses, checked before JAX loads.

A config file::

    name = "co_on_cu"
    out = "runs/co_on_cu"            # relative to the config file

    [system]
    start = "start.extxyz"           # any file ntkal reads (ntkal.datasets.files); relative paths
    index = 0                        #   are relative to the config file; frame of the start file
    initial = ["labelled.extxyz"]    # optional labelled training frames; without them the start
                                     #   frame is labelled by the oracle before step 1
    [model]
    checkpoint = "oc20_like"         # a shipped name or a checkpoint file

    [md]                             # MDConfig
    [uncertainty]                    # UncertaintyConfig
    [labelling]                      # LabelRule
    [train]                          # TrainConfig (fine-tuning every labelling.finetune_every labels)
    [oracle]                         # OracleConfig, as in `ntkal run` (calculator = "emt", ...)

Every problem is reported at once with file and line (``path, line N: what``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any

from ntkal.toml_checks import ConfigFileError, Problems, check_fields, file_list, init_from_problem, read_toml

__all__ = ["MDConfig", "UncertaintyConfig", "LabelRule", "OnTheFlySpec", "load_md_spec",
           "MDConfigError"]

MDConfigError = ConfigFileError  # a ValueError listing every ``path, line N: problem``


@dataclasses.dataclass(frozen=True)
class MDConfig:
    """Langevin dynamics (BAOAB) and its safety limits.

    Attributes:
      steps: MD steps.
      timestep: Δt, fs.
      temperature: K.
      friction: γ, 1/fs.
      tau: bias strength τ, eV per unit of σ² (E_biased = E − τσ²; 0 = unbiased MD).
      skin: Verlet skin, Å (neighbour lists to cutoff + skin, rebuilt after a skin/2 move).
      seed: velocities and Langevin noise.
      max_force: restart when any model force exceeds this, eV/Å.
      max_restarts: give up after this many restarts.
      write_every: trajectory frame every this many steps (labelled frames always).
      checkpoint_every: save the resumable state every this many steps (and after every label).
    """

    steps: int = 1000
    timestep: float = 1.0
    temperature: float = 300.0
    friction: float = 0.01
    tau: float = 0.0
    skin: float = 0.5
    seed: int = 0
    max_force: float = 30.0
    max_restarts: int = 50
    write_every: int = 10
    checkpoint_every: int = 100

    def __post_init__(self):
        for name in ("steps", "write_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("timestep", "temperature", "max_force"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("friction", "tau", "skin"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts}")


@dataclasses.dataclass(frozen=True)
class UncertaintyConfig:
    """The posterior variance σ² that triggers labels (and biases the dynamics).

    Attributes:
      kernel: ``"energy"``, ``"force_probe"`` or ``"joint"`` (energy row + probe rows).
      sketch_dim: d.
      num_probes: k, fixed Rademacher probes (the same at every step, so σ² is smooth).
      param_filter: parameters the NTK differentiates (``"all"``, ``"readout"``, ...).
      noise_var: σ²_n relative to the feature unit.
      feature_norm: ``"median_trace"``, ``"mean_trace"`` or ``"per_structure"``.
      featurize_with: ``"pretrained"`` (features around the starting parameters: fine-tuning
        never invalidates the posterior) or ``"current"`` (refeaturise the training set after
        every fine-tune).
      direction_batch_size: probe directions per batch (0 = all at once).
    """

    kernel: str = "joint"
    sketch_dim: int = 256
    num_probes: int = 4
    param_filter: str = "all"
    noise_var: float = 1e-2
    feature_norm: str = "median_trace"
    featurize_with: str = "pretrained"
    direction_batch_size: int = 0

    def __post_init__(self):
        if self.kernel not in ("energy", "force_probe", "joint"):
            raise ValueError(f"kernel must be 'energy', 'force_probe' or 'joint', got {self.kernel!r}")
        if self.featurize_with not in ("pretrained", "current"):
            raise ValueError(f"featurize_with must be 'pretrained' or 'current', got {self.featurize_with!r}")
        if self.sketch_dim < 1 or self.num_probes < 1 or self.direction_batch_size < 0:
            raise ValueError("sketch_dim and num_probes must be >= 1, direction_batch_size >= 0")
        self.acquisition()  # the remaining checks (noise_var, feature_norm)

    def acquisition(self, seed: int = 0):
        """The :class:`~ntkal.acquire.AcquisitionConfig` of this posterior (fixed σ²_n)."""
        from ntkal.acquire.config import AcquisitionConfig
        from ntkal.kernels.config import KernelConfig

        kernel = KernelConfig(kind=self.kernel, sketch_dim=self.sketch_dim, num_probes=self.num_probes,
                              joint_force="probe", param_filter=self.param_filter, seed=seed,
                              direction_batch_size=self.direction_batch_size or None)
        return AcquisitionConfig(kernel=kernel, noise_var=self.noise_var, noise_rule="fixed",
                                 feature_norm=self.feature_norm, seed=seed)


@dataclasses.dataclass(frozen=True)
class LabelRule:
    """When a frame goes to the oracle, and what follows.

    Attributes:
      trigger: ``"variance"`` (σ² above the threshold) or ``"random"`` (``max_labels`` steps
        drawn at random from the run, the baseline).
      threshold: σ² threshold (dimensionless) until calibration applies.
      error_threshold: > 0: once ``calibration_min`` frames were labelled, label when the
        predicted force MSE c·σ² exceeds error_threshold² (eV/Å)², where c is the
        ``calibration_quantile`` of (force MSE / σ²) measured on the labelled frames *before*
        they were trained on (held-out by construction).
      calibration_quantile: q of that ratio.
      calibration_min: labels needed before the calibrated threshold replaces ``threshold``.
      max_variance: restart (instead of labelling) above this σ²; 0 = 100 × the threshold.
      max_labels: oracle budget.
      min_interval: at least this many steps between two labels.
      finetune_every: fine-tune after every this many labels (0 = never; the posterior is
        updated after every label regardless).
      finetune_error: also fine-tune right after a label whose force RMSE (the model's error on
        that frame before training on it, eV/Å) exceeds this (0 = off): the error has drifted.
    """

    trigger: str = "variance"
    threshold: float = 1.0
    error_threshold: float = 0.0
    calibration_quantile: float = 0.5
    calibration_min: int = 3
    max_variance: float = 0.0
    max_labels: int = 20
    min_interval: int = 5
    finetune_every: int = 5
    finetune_error: float = 0.0

    def __post_init__(self):
        if self.trigger not in ("variance", "random"):
            raise ValueError(f"trigger must be 'variance' or 'random', got {self.trigger!r}")
        if not self.threshold > 0:
            raise ValueError(f"threshold must be > 0, got {self.threshold}")
        if not 0 < self.calibration_quantile < 1:
            raise ValueError(f"calibration_quantile must be in (0, 1), got {self.calibration_quantile}")
        for name in ("error_threshold", "max_variance", "finetune_error"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("calibration_min", "max_labels", "min_interval", "finetune_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class OnTheFlySpec:
    """A checked ``ntkal md`` config (paths resolved).

    Attributes:
      config_path, text: the TOML file and its text.
      name: run name.
      out: output folder.
      start: file spec of the start structure; ``index`` its frame.
      initial: labelled training file specs (may be empty).
      checkpoint: shipped model name or checkpoint path.
      md, uncertainty, labelling: the tables.
      train: :class:`~ntkal.train.TrainConfig`.
      oracle: :class:`~ntkal.labelling.OracleConfig`.
    """

    config_path: Path
    text: str
    name: str
    out: Path
    start: str
    index: int
    initial: tuple[str, ...]
    checkpoint: str
    md: MDConfig
    uncertainty: UncertaintyConfig
    labelling: LabelRule
    train: Any
    oracle: Any

    def record(self) -> dict[str, Any]:
        """Every setting that changes results (JSON-able; the executor and its workers excluded)."""
        oracle = self.oracle.to_dict()
        for key in ("executor", "workers", "scheduler", "store", "scratch"):
            oracle.pop(key, None)
        return {"start": self.start, "index": self.index, "initial": list(self.initial),
                "checkpoint": self.checkpoint, "md": dataclasses.asdict(self.md),
                "uncertainty": dataclasses.asdict(self.uncertainty),
                "labelling": dataclasses.asdict(self.labelling),
                "train": dataclasses.asdict(self.train), "oracle": oracle}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.record(), sort_keys=True).encode()).hexdigest()[:16]


_TOP = {"name", "out", "system", "model", "md", "uncertainty", "labelling", "train", "oracle"}


def load_md_spec(path, *, out=None) -> OnTheFlySpec:
    """Read and check an ``ntkal md`` config; imports no JAX.

    Raises:
      MDConfigError: every problem, each as ``path, line N: message``.
    """
    from ntkal.labelling.config import OracleConfig
    from ntkal.train.config import TrainConfig

    path = Path(path)
    text, raw = read_toml(path)
    problems = Problems(path, text)
    base = path.resolve().parent
    for key in raw:
        if key not in _TOP:
            problems.add(None, key, f"unknown key or table {key!r} (expected one of {', '.join(sorted(_TOP))})")

    tables = {}
    for name in ("system", "model", "md", "uncertainty", "labelling", "train", "oracle"):
        value = raw.get(name, {})
        if not isinstance(value, dict):
            problems.add(None, name, f"{name} must be a table [{name}]")
            value = {}
        tables[name] = value

    system = tables["system"]
    for key in system:
        if key not in ("start", "index", "initial"):
            problems.add("system", key, f"unknown key {key!r} in [system] (expected start, index, initial)")
    start = ()
    if "start" not in system:
        problems.add("system", None, "[system] start (the file of the start structure) is required")
    else:
        start = file_list(problems, base, "start", system["start"], table="system")
        if len(start) > 1:
            problems.add("system", "start", "[system] start must be one file")
    index = system.get("index", 0)
    if isinstance(index, bool) or not isinstance(index, int):
        problems.add("system", "index", f"[system] index must be an integer, got {index!r}")
        index = 0
    initial = ()
    if "initial" in system:
        initial = file_list(problems, base, "initial", system["initial"], table="system")

    model = tables["model"]
    checkpoint = None
    for key in model:
        if key != "checkpoint":
            problems.add("model", key, f"unknown key {key!r} in [model] (expected checkpoint)")
    if "checkpoint" not in model or not isinstance(model["checkpoint"], str):
        problems.add("model", "checkpoint", "[model] checkpoint (a shipped name or a checkpoint file) is required")
    else:
        checkpoint, problem = init_from_problem(base, model["checkpoint"])
        if problem:
            problems.add("model", "checkpoint", f"[model] checkpoint: {problem}")

    parsed = {}
    for name, cls in (("md", MDConfig), ("uncertainty", UncertaintyConfig), ("labelling", LabelRule),
                      ("train", TrainConfig)):
        values = check_fields(problems, name, tables[name], cls)
        parsed[name] = cls(**values) if values is not None else None

    oracle = None
    if not tables["oracle"]:
        problems.add("oracle", None, "[oracle] is required (e.g. calculator = \"emt\")")
    else:
        try:
            oracle = OracleConfig.from_dict(tables["oracle"])
        except (TypeError, ValueError) as err:
            key = next((k for k in tables["oracle"] if f"{k}" in str(err)), None)
            problems.add("oracle", key, str(err))

    name = raw.get("name", path.stem)
    out_value = raw.get("out", f"runs/{path.stem}")
    if not isinstance(name, str) or not isinstance(out_value, str):
        problems.add(None, "out", "name and out must be strings")
        out_value = f"runs/{path.stem}"
    out_path = Path(out) if out is not None else base / out_value
    if problems.problems:
        raise MDConfigError(problems.problems)
    if parsed["labelling"].trigger == "random" and parsed["labelling"].max_labels > parsed["md"].steps:
        raise MDConfigError([f"{path}: [labelling] max_labels ({parsed['labelling'].max_labels}) exceeds "
                             f"[md] steps ({parsed['md'].steps}) with trigger = 'random'"])
    return OnTheFlySpec(path, text, str(name), out_path, start[0], int(index), tuple(initial), checkpoint,
                        parsed["md"], parsed["uncertainty"], parsed["labelling"], parsed["train"], oracle)


def threshold_of(rule: LabelRule, ratios) -> float:
    """The σ² threshold now: ``rule.threshold``, or the calibrated one once enough labels."""
    if rule.error_threshold > 0 and len(ratios) >= max(rule.calibration_min, 1):
        import numpy as np

        c = float(np.quantile(np.asarray(ratios, np.float64), rule.calibration_quantile))
        if c > 0 and math.isfinite(c):
            return rule.error_threshold ** 2 / c
    return rule.threshold
