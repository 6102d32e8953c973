"""Arguments of ``ntkal select``: parsing, validation and the hand-off to the compute code.

Importing this module does not import JAX (nor ASE: the file checks import ``ase.io.formats`` when
they run), so ``ntkal select --help`` and every argument and file check finish before JAX loads.

The acquisition flags are derived from :class:`~ntkal.acquire.AcquisitionConfig`: each flag in
:data:`ACQUISITION_FLAGS` names the config field(s) it sets, its default is that field's default,
and :func:`config_from_args` / :func:`config_to_argv` convert in both directions, so the command
line, the TOML configs and the JSON records (:meth:`AcquisitionConfig.to_dict`) cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from ntkal.acquire.config import CASCADE_KINDS, AcquisitionConfig
from ntkal.posterior.names import NOISE_RULES, NORMALIZATIONS, REDUCTIONS, SELECTORS, TARGET_WEIGHTINGS
from ntkal.cache import add_compile_cache_argument, enable_compile_cache_or_warn
from ntkal.cli.cluster_args import ClusterArgumentError, add_cluster_arguments, cluster_from_args
from ntkal.file_checks import (format_problem, input_file_problem, model_file_problem, shipped_model_names,
                               writable_folder_problem)
from ntkal.kernels.config import KINDS
from ntkal.strategies import KNOBS, STRATEGIES, apply_strategy, describe_strategy

__all__ = ["ACQUISITION_FLAGS", "AcquisitionFlag", "SelectArgumentError", "PARAM_FILTER_NAMES",
           "add_select_arguments", "config_from_args", "config_to_argv", "validate_select_args",
           "main_select"]

#: The named parameter filters of :func:`ntkal.kernels.select_params`; any other
#: ``--param-filter`` value is a comma-separated list of path substrings.
PARAM_FILTER_NAMES = ("all", "readout", "last_interaction")
_NONE = "none"


class SelectArgumentError(ValueError):
    """One or more unusable ``ntkal select`` arguments.

    Attributes:
      problems: ``(flag, what is wrong)`` pairs, in argument order; the message has one line each,
        ``argument --flag: what is wrong``.
    """

    def __init__(self, problems: Sequence[tuple[str, str]]):
        self.problems = tuple(problems)
        super().__init__("\n".join(f"argument {flag}: {what}" for flag, what in self.problems))


# --------------------------------------------------------------------------------------------
# value <-> text conversions (each parse inverts its show)


def _int_or_none(text: str) -> int | None:
    if text.strip().lower() == _NONE:
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or '{_NONE}', got {text!r}") from None


def _show_optional(value: Any) -> str:
    return _NONE if value is None else str(value)


def _cascade(text: str) -> str | None:
    if text.strip().lower() == _NONE:
        return None
    if text not in CASCADE_KINDS:
        raise argparse.ArgumentTypeError(f"expected '{_NONE}' or one of {', '.join(CASCADE_KINDS)}, "
                                         f"got {text!r}")
    return text


def _joint_weights(text: str) -> str | tuple[float, float]:
    if text.strip().lower() == "auto":
        return "auto"
    parts = text.split(",")
    try:
        weights = tuple(float(p) for p in parts)
    except ValueError:
        weights = ()
    if len(weights) != 2:
        raise argparse.ArgumentTypeError(f"expected 'auto' or two numbers 'w_E,w_F', got {text!r}")
    return weights


def _show_joint_weights(value: str | tuple[float, float]) -> str:
    return value if isinstance(value, str) else ",".join(repr(float(w)) for w in value)


def _param_filter(text: str) -> str | tuple[str, ...]:
    """A filter name, else comma-separated substrings (a trailing comma makes a single name, e.g.
    ``readout,``, a substring)."""
    if text in PARAM_FILTER_NAMES:
        return text
    parts = text.split(",")
    if len(parts) > 1 and parts[-1] == "":
        parts = parts[:-1]
    parts = tuple(p.strip() for p in parts)
    if not all(parts):
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(PARAM_FILTER_NAMES)} or comma-separated "
                                         f"parameter path substrings, got {text!r}")
    return parts


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected 'on' or 'off', got {text!r}")
    return text == "on"


def _show_on_off(value: bool) -> str:
    return "on" if value else "off"


def _show_param_filter(value: str | tuple[str, ...]) -> str:
    if isinstance(value, str):
        return value
    text = ",".join(value)
    return text + "," if text in PARAM_FILTER_NAMES else text


@dataclasses.dataclass(frozen=True)
class AcquisitionFlag:
    """One command-line flag bound to :class:`~ntkal.acquire.AcquisitionConfig` field(s).

    Attributes:
      flag: the option, e.g. ``"--sketch-dim"``.
      fields: dotted field paths it sets (``"kernel.sketch_dim"``); the first gives the default.
      help: what it does (the default is appended).
      parse: text → field value (``argparse`` ``type``).
      show: field value → text (``parse(show(v)) == v``).
      choices: allowed texts, for the flags that have a fixed list.
    """

    flag: str
    fields: tuple[str, ...]
    help: str
    parse: Callable[[str], Any] = str
    show: Callable[[Any], str] = str
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        """The attribute of the parsed namespace."""
        return self.flag.lstrip("-").replace("-", "_")

    def value_in(self, config: AcquisitionConfig) -> Any:
        """This flag's value in ``config`` (its first field)."""
        value: Any = config
        for name in self.fields[0].split("."):
            value = getattr(value, name)
        return value


#: The acquisition flags of ``ntkal select``, in help order. Every field of
#: :class:`AcquisitionConfig` except ``kernel`` has one; of the kernel, the fields a user tunes.
ACQUISITION_FLAGS: tuple[AcquisitionFlag, ...] = (
    AcquisitionFlag("--kernel", ("kernel.kind",), "feature map", choices=KINDS),
    AcquisitionFlag("--sketch-dim", ("kernel.sketch_dim",), f"NTK sketch width d ('{_NONE}' = unsketched, "
                    "small models only)", _int_or_none, _show_optional),
    AcquisitionFlag("--num-probes", ("kernel.num_probes",), "probe tangents k of the probe force rows", int),
    AcquisitionFlag("--joint-force", ("kernel.joint_force",), "'probe' or 'exact' force rows of the joint kernel"),
    AcquisitionFlag("--param-filter", ("kernel.param_filter",),
                    f"parameters the NTK differentiates: {', '.join(PARAM_FILTER_NAMES)}, or comma-separated "
                    "parameter path substrings", _param_filter, _show_param_filter),
    AcquisitionFlag("--joint-weights", ("joint_weights",), "joint block weights: 'auto' (trace-equalising w_F "
                    "of the training set) or 'w_E,w_F'", _joint_weights, _show_joint_weights),
    AcquisitionFlag("--selector", ("selector",), "batch selector on the shortlist", choices=SELECTORS),
    AcquisitionFlag("--shortlist", ("shortlist",), "structures kept by the streaming posterior-variance top-m",
                    int),
    AcquisitionFlag("--noise-var", ("noise_var",), "sigma^2 relative to the feature unit of --feature-norm "
                    "(used by --noise-rule fixed)", float, repr),
    AcquisitionFlag("--noise-rule", ("noise_rule",), "fixed sigma^2, the evidence maximiser, or evidence where "
                    "possible (auto)", choices=NOISE_RULES),
    AcquisitionFlag("--feature-norm", ("feature_norm",), "feature normalisation", choices=NORMALIZATIONS),
    AcquisitionFlag("--reduction", ("reduction",), "per-structure reduction of row variances",
                    choices=REDUCTIONS),
    AcquisitionFlag("--max-force-quantile", ("max_force_quantile",), "never pick candidates whose predicted "
                    "max |F| lies above this pool quantile (1 = off)", float, repr),
    AcquisitionFlag("--cascade", ("cascade",), f"cheap first-stage kernel ({', '.join(CASCADE_KINDS)}) or "
                    f"'{_NONE}'", _cascade, _show_optional),
    AcquisitionFlag("--cascade-keep", ("cascade_keep",), "fraction of the pool the first stage keeps", float,
                    repr),
    AcquisitionFlag("--chunk-size", ("chunk_size",), "structures per featurisation chunk", int),
    AcquisitionFlag("--size-classes", ("size_classes",), "at most this many padding classes", int),
    AcquisitionFlag("--max-padding", ("max_padding",),
                    "fewest size classes whose padded atom slots are within this factor of the real atoms",
                    float),
    AcquisitionFlag("--min-class-chunks", ("min_class_chunks",),
                    "at most one size class per this many chunks of structures", int),
    AcquisitionFlag("--prefetch", ("prefetch",), "chunks prepared ahead on a background thread (0 = off)", int),
    AcquisitionFlag("--feature-devices", ("feature_devices",),
                    "local devices featurising side by side, one chunk each (0 = all)", int),
    AcquisitionFlag("--seed", ("seed", "kernel.seed"), "seeds the sketch, the probes and the random selectors",
                    int),
    AcquisitionFlag("--target-weighting", ("target_weighting",), "how varred's target counts each pool "
                    "structure: by its squared feature norm (none) or once each (per_structure)",
                    choices=TARGET_WEIGHTINGS),
    AcquisitionFlag("--force-noise-scale", ("force_noise_scale",), "soft outlier weight c (0 = off): a "
                    "candidate with predicted max |F| f counts with noise sigma^2 (1 + (f / (c f_med))^2), "
                    "f_med the candidates' median", float, repr),
    AcquisitionFlag("--evidence-offsets", ("evidence_offsets",), "'on': the evidence rule first removes "
                    "per-element energy offsets from the training residuals (for a model whose reference "
                    "energies were refit to the labels' zero), 'off': it does not", _on_off, _show_on_off),
)


def add_select_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``ntkal select`` options to ``parser``; defaults come from ``AcquisitionConfig()``."""
    files = parser.add_argument_group("inputs and output")
    files.add_argument("--model", required=True, help="ntkal checkpoint file, InstaDeep mlip model .zip or a shipped pretrained name "
                       f"({', '.join(shipped_model_names())})")
    files.add_argument("--pool", required=True, help="candidate structures (any ASE-readable file)")
    files.add_argument("--train", required=True, help="training structures (define the posterior)")
    files.add_argument("--target", help="optional target structures (any ASE-readable file, labels ignored), "
                       "e.g. unlabelled frames like those the model will be used on: varred reduces the "
                       "posterior variance over them instead of over the pool")
    files.add_argument("--test", action="append", default=[], metavar="FILE",
                       help="a file of frames held out for testing (repeatable): a pool, --train or --target "
                            "frame among them is an error naming both files and frames")
    files.add_argument("--test-overlap", choices=("error", "warn"), default="error",
                       help="what a --test frame found among the inputs is (default: %(default)s)")
    files.add_argument("--strategy", choices=STRATEGIES, default=None,
                       help="the acquisition strategy by name: 'representative' if the pool (or --target) looks "
                            "like what you will simulate, 'extrapolation' if that may lie outside the pool's bulk "
                            f"(the default settings); sets --feature-norm, --target-weighting, --noise-rule and "
                            f"--noise-var (ntkal.strategies)")
    files.add_argument("--budget", required=True, type=int, help="number of structures to pick")
    files.add_argument("--out", required=True, help="output file for the picks, in a multi-frame format "
                       "(e.g. picked.extxyz); its folder is created if needed")

    defaults = AcquisitionConfig()
    acq = parser.add_argument_group("acquisition (defaults: ntkal.acquire.AcquisitionConfig)")
    for spec in ACQUISITION_FLAGS:
        acq.add_argument(spec.flag, dest=spec.dest, type=spec.parse, choices=spec.choices,
                         default=spec.show(spec.value_in(defaults)),  # argparse parses string defaults
                         help=f"{spec.help} (default: %(default)s)")

    run = parser.add_argument_group("running")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_compile_cache_argument(run)
    add_cluster_arguments(parser, "each reads and scores its part of the pool, process 0 selects and writes")
    return parser


# --------------------------------------------------------------------------------------------
# namespace <-> config


_FIELD_FLAGS = {spec.fields[0].rsplit(".", 1)[-1]: spec.flag for spec in ACQUISITION_FLAGS}


def _build(values: dict[str, Any]) -> AcquisitionConfig:
    """The config of ``{dest: value}`` for every flag of :data:`ACQUISITION_FLAGS`."""
    top: dict[str, Any] = {}
    kernel: dict[str, Any] = {}
    for spec in ACQUISITION_FLAGS:
        for field in spec.fields:
            section, _, name = field.rpartition(".")
            (kernel if section == "kernel" else top)[name] = values[spec.dest]
    try:
        base = AcquisitionConfig()
        return AcquisitionConfig(kernel=dataclasses.replace(base.kernel, **kernel), **top)
    except ValueError as err:
        match = re.match(r"[a-z_]+", str(err))
        flag = _FIELD_FLAGS.get(match.group(0) if match else "", "acquisition settings")
        raise SelectArgumentError([(flag, str(err))]) from err


def config_from_args(args: argparse.Namespace) -> AcquisitionConfig:
    """The :class:`AcquisitionConfig` of parsed ``ntkal select`` arguments (with ``--strategy``,
    its knobs: :func:`ntkal.strategies.apply_strategy`).

    Raises:
      SelectArgumentError: (a ``ValueError``) the config rejects a value, or a flag contradicts
        ``--strategy``; the message names the flag.
    """
    values = {spec.dest: getattr(args, spec.dest) for spec in ACQUISITION_FLAGS}
    strategy = getattr(args, "strategy", None)
    if strategy is not None:
        defaults = {spec.dest: spec.value_in(AcquisitionConfig()) for spec in ACQUISITION_FLAGS}
        knobs = {k: values[k] for k in KNOBS if k in values}
        try:
            knobs = apply_strategy(strategy, knobs, defaults, has_target_set=getattr(args, "target", None) is not None)
        except ValueError as err:
            key = str(err).split(" ", 1)[0]
            raise SelectArgumentError([("--" + key.replace("_", "-"), str(err))]) from err
        values.update(knobs)
    return _build(values)


def config_to_argv(config: AcquisitionConfig) -> list[str]:
    """The acquisition flags that reproduce ``config`` (``config_from_args`` inverts it).

    Raises:
      ValueError: ``config`` sets something no flag reaches (a kernel field without a flag, or
        ``seed`` different from ``kernel.seed``).
    """
    argv: list[str] = []
    for spec in ACQUISITION_FLAGS:
        argv += [spec.flag, spec.show(spec.value_in(config))]
    rebuilt = _build({spec.dest: spec.value_in(config) for spec in ACQUISITION_FLAGS})
    if rebuilt != config:
        differ = [f.name for f in dataclasses.fields(config) if getattr(rebuilt, f.name) != getattr(config, f.name)]
        raise ValueError(f"the command line cannot express this config: {differ} differ "
                         f"({rebuilt.to_dict()} vs {config.to_dict()})")
    return argv


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return os.path.abspath(a) == os.path.abspath(b)


def _out_problem(value: str, inputs: dict[str, str]) -> str | None:
    from ase.io.formats import UnknownFileTypeError, filetype, ioformats

    path = Path(value)
    try:
        fmt = filetype(str(path), read=False)  # from the name, as ase.io.write does
    except UnknownFileTypeError:
        return f"cannot tell the output format of {value!r} from its name (use e.g. picked.extxyz)"
    problem = format_problem(value, fmt, "write", ".extxyz")
    if problem:
        return problem
    if ioformats[fmt].single:
        return f"{value}: the {fmt} format holds a single structure; use a multi-frame format such as .extxyz"
    for flag, other in inputs.items():
        if _same_file(path, Path(other)):
            return f"{value} is the same file as {flag}; the picks would overwrite it"
    if path.exists():
        if not path.is_file():
            return f"{value} exists and is not a regular file"
        if not os.access(path, os.W_OK):
            return f"{value} exists and is not writable"
    return writable_folder_problem(path.parent)


def validate_select_args(args: argparse.Namespace) -> None:
    """Check the budget and the files of ``ntkal select`` without reading more than file headers.

    ``--budget`` ≥ 1; ``--model`` an existing checkpoint file or a shipped name; ``--pool`` and
    ``--train`` (and ``--target`` and every ``--test`` if given) existing, non-empty, readable
    files in a format ASE reads; ``--out`` named with a
    format ASE writes with several frames, not one of the inputs, in a folder that exists or can be
    created, and writable.

    Raises:
      SelectArgumentError: (a ``ValueError``) every problem found, one line per argument.
    """
    problems = []
    if args.budget < 1:
        problems.append(("--budget", f"must be >= 1, got {args.budget}"))
    inputs = {flag: str(path) for flag, path in (("--pool", args.pool), ("--train", args.train),
                                                  ("--target", args.target)) if path is not None}
    inputs.update({f"--test {path}": str(path) for path in getattr(args, "test", [])})
    for flag, what in [("--model", model_file_problem(str(args.model)))] + [
            (flag, input_file_problem(path)) for flag, path in inputs.items()]:
        if what:
            problems.append((flag, what))
    what = _out_problem(str(args.out), inputs)
    if what:
        problems.append(("--out", what))
    if problems:
        raise SelectArgumentError(problems)


def main_select(args: argparse.Namespace) -> int:
    """Run ``ntkal select`` from parsed arguments; prints a one-line summary; returns 0.

    Everything is checked before JAX is imported: the files (:func:`validate_select_args`) and the
    acquisition settings (:func:`config_from_args`). Then the output folder is created, the
    persistent compilation cache is turned on (unless ``--no-compile-cache``; traced programs go
    to its ``programs/`` folder) and :func:`ntkal.select.select_from_files` runs.

    Raises:
      SelectArgumentError: unusable arguments: every file problem and the first bad setting.
    """
    problems: list[tuple[str, str]] = []
    try:
        validate_select_args(args)
    except SelectArgumentError as err:
        problems += err.problems
    try:
        config = config_from_args(args)
    except SelectArgumentError as err:
        problems += err.problems
    else:
        if args.target is not None and config.selector != "varred":
            problems.append(("--target", f"a target set needs --selector varred, got {config.selector!r}"))
    try:
        cluster = cluster_from_args(args)
    except ClusterArgumentError as err:
        problems += err.problems
    if problems:
        raise SelectArgumentError(problems)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    knobs = {k: getattr(config, k) for k in KNOBS if hasattr(config, k)}
    knobs["variance_target"] = "target_set" if args.target is not None else "pool"
    print(describe_strategy(knobs, has_target_set=args.target is not None, uses_evidence=config.uses_evidence(),
                            named=getattr(args, "strategy", None) is not None), file=sys.stdout)
    folder = None if args.no_compile_cache else enable_compile_cache_or_warn()

    from ntkal.cluster import initialize
    from ntkal.select import select_from_files

    collectives = initialize(cluster)  # before any computation; the identity without --distributed
    summary = select_from_files(args.model, args.pool, args.train, args.budget, out_path=args.out,
                                config=config, progress=not args.no_progress,
                                program_cache=None if folder is None else folder / "programs",
                                target_path=args.target, test_paths=args.test,
                                test_overlap=args.test_overlap, collectives=collectives)
    if not collectives.is_writer:
        return 0
    print(f"picked {summary.budget} of {summary.n_pool} pool structures ({summary.config.kind} kernel, "
          f"{summary.config.selector}) in {summary.timings['total_s']:.1f} s -> {summary.out_path} "
          f"(summary {summary.summary_path})", file=sys.stdout)
    if summary.n_pool_in_train:
        print(f"note: {summary.n_pool_in_train} pool frame(s) are also in {args.train}; they were never "
              f"candidates", file=sys.stdout)
    if summary.pool_duplicates:
        print(f"note: {summary.pool_duplicates} pool frame(s) repeat an earlier pool frame", file=sys.stdout)
    return 0
