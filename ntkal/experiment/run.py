"""``run(config) -> Results`` for one sweep point, and the sweep driver that writes JSON + CSV."""

from __future__ import annotations

import contextlib
import csv
import io
import time
import warnings
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from ntkal.cluster.collectives import Collectives, LocalCollectives
from ntkal.experiment.config import DataConfig, ExperimentConfig, data_file_problems, load_sweep
from ntkal.experiment.record import check_record, config_record, record_hash, write_record
from ntkal.jsonio import dumps as strict_dumps
from ntkal.loop import make_context, round0_fingerprint, run_loop
from ntkal.models import atomic_write_bytes, load_pretrained
from ntkal.models.checkpoint import remove_stale_temp_files

__all__ = ["Results", "RunInputs", "run", "run_sweep", "load_data", "load_inputs", "load_target_set", "make_oracle",
           "write_results", "check_reference_energies", "check_run_inputs"]


class RunInputs(NamedTuple):
    """The structures of one sweep point, read (or generated) once.

    Attributes:
      pool: candidate ``ase.Atoms``.
      tests: split name → labelled ``ase.Atoms``.
      replay: labelled pretraining ``ase.Atoms`` (empty without ``[loop] replay``).
      initial: the initial labelled ``ase.Atoms`` (``[data] initial_files``).
      target: unlabelled target ``ase.Atoms`` (empty unless ``variance_target = "target_set"``).
    """

    pool: list
    tests: dict
    replay: list
    initial: list
    target: list


def load_inputs(config: ExperimentConfig, *, progress: bool = True) -> RunInputs:
    """Every structure ``config`` reads, with the label checks of :func:`load_data`; nothing is
    computed on them."""
    pool, tests = load_data(config.data, progress=progress, stored_labels=oracle_config(config) is None)
    replay = list(load_replay(config.data, progress=progress)) if config.loop.replay else []
    initial = load_initial(config.data, progress=progress)
    target = load_target_set(config.data, progress=progress) if config.loop.variance_target == "target_set" else []
    return RunInputs(pool, tests, replay, initial, target)


def _inputs_key(config: ExperimentConfig) -> tuple:
    """Points with equal keys read the same :class:`RunInputs`."""
    return (config.data, bool(config.loop.replay), config.loop.variance_target == "target_set",
            oracle_config(config) is None)


class Results(NamedTuple):
    """Outcome of one sweep point.

    Attributes:
      config: the :class:`ExperimentConfig`.
      rows: one dict per (round, test split): config columns, ``round``, ``n_labels``,
        ``split``, energy/force MAE and RMSE (eV, eV/atom, eV/Å) and per-stage wall times (s).
      picks: one dict per picked structure: config columns, ``round``, ``id``, ``score``,
        ``force_mae_before`` (eV/Å, the scoring model's error on it).
      wall_s: wall time of the point (s), excluding time spent in earlier, resumed sessions.
    """

    config: ExperimentConfig
    rows: list
    picks: list
    wall_s: float


def _subsample(items: list, count: int, rng: np.random.Generator) -> list:
    if not count or count >= len(items):
        return items
    keep = np.sort(rng.choice(len(items), count, replace=False))
    return [items[i] for i in keep]


def _read_files(specs, *, stored_labels: bool, progress: bool, desc: str) -> list:
    from tqdm.auto import tqdm

    from ntkal.datasets.files import read_structure_file

    atoms = []
    for spec in specs:
        frames = read_structure_file(spec)
        if progress:
            frames = tqdm(frames, desc=f"{desc} {Path(spec).name}", unit="frame", leave=False)
        atoms.extend(frames)
    if stored_labels:
        from ntkal.data import labels_of

        for a in atoms:
            if labels_of(a)[0] is None:
                raise ValueError(f"{a.info.get('source')}, frame {a.info.get('frame')}: no energy label "
                                 f"({desc}; label it, or name a calculator in [oracle])")
    return atoms


def _generated_structures(data: DataConfig, specs, rng: np.random.Generator, progress: bool) -> list:
    """The structures of generator split specs (``"split"`` or ``"split:count"``, subsampled
    with ``rng``), without the source subset when ``data.pool_filter == "target"`` (OC20-like)."""
    from ntkal import datasets

    out = []
    for spec in specs:
        split, _, count = spec.partition(":")
        atoms = list(datasets.load_split(data.dataset, split, size=data.size, seed=data.seed,
                                         cache_dir=data.cache_dir, progress=progress))
        if data.pool_filter == "target" and data.dataset == "oc20_like" and split != "pretrain":
            atoms = [a for a in atoms if not datasets.oc20_is_source(a)]
        out.extend(_subsample(atoms, int(count or 0), rng))
    return out


def load_data(data: DataConfig, *, progress: bool = True, stored_labels: bool | None = None):
    """Pool structures and test sets of ``data`` (generated on first use, then cached, or read
    from the user's files).

    ``stored_labels`` (default: ``data.oracle == "stored"``): the pool files must carry labels
    (the run's oracle returns them); checked before any compute.

    Returns:
      ``(pool_atoms, tests)`` with ``tests`` a dict split → list of ``ase.Atoms``.
    """
    rng = np.random.default_rng(data.seed)
    if data.from_files:
        stored = data.oracle == "stored" if stored_labels is None else stored_labels
        pool = _read_files(data.pool_files, stored_labels=stored, progress=progress, desc="pool")
        if not pool:
            raise ValueError(f"the pool files {list(data.pool_files)} hold no structures")
        tests = {name: _subsample(_read_files(specs, stored_labels=True, progress=progress, desc=f"test {name}"),
                                  data.max_test, rng)
                 for name, specs in data.test_files}
        return pool, tests

    from ntkal import datasets

    pool = _generated_structures(data, data.pool, rng, progress)
    if not pool:
        raise ValueError(f"the pool {data.pool} of {data.dataset} ({data.size}) is empty")
    tests = {}
    for split in data.tests:
        atoms = list(datasets.load_split(data.dataset, split, size=data.size, seed=data.seed,
                                         cache_dir=data.cache_dir, progress=progress))
        tests[split] = _subsample(atoms, data.max_test, rng)
    return pool, tests


def load_target_set(data: DataConfig, *, progress: bool = True) -> list:
    """The unlabelled target structures of ``data`` (``target_set`` splits or ``target_set_files``;
    empty without them). ``"split:count"`` subsamples use their own generator (seeded by
    ``data.seed``), so a target set never changes the pool or test subsamples."""
    if data.from_files:
        return _read_files(data.target_set_files, stored_labels=False, progress=progress, desc="target set")
    target = _generated_structures(data, data.target_set, np.random.default_rng([data.seed, 0x7A26E7]), progress)
    if data.target_set and not target:
        raise ValueError(f"the target set {data.target_set} of {data.dataset} ({data.size}) is empty")
    return target


def load_initial(data: DataConfig, *, progress: bool = True) -> list:
    """The labelled structures of ``data.initial_files`` (empty without them)."""
    return _read_files(data.initial_files, stored_labels=True, progress=progress, desc="initial")


def oracle_config(config: ExperimentConfig):
    """The :class:`~ntkal.labelling.OracleConfig` of a sweep point, or ``None`` for labels
    already in the data (``data.oracle = "stored"`` and no ``[oracle]`` table). The shortcuts
    ``emt``/``xtb`` label in this process, one structure at a time."""
    if config.oracle is not None:
        return config.oracle
    return _shortcut_oracle(config.data.oracle)


def _shortcut_oracle(name: str):
    """The :class:`~ntkal.labelling.OracleConfig` of a :class:`DataConfig` oracle name (``None``
    for ``"stored"``): ``emt``/``xtb`` in this process, one structure at a time."""
    from ntkal.labelling import OracleConfig

    if name == "stored":
        return None
    return OracleConfig(calculator=name, executor="serial", retries=3 if name == "xtb" else 1)


def _label_store(spec, folder: str | Path | None):
    """The label store of ``spec``: its ``store``, else ``<folder>/labels.db`` (a fresh temporary
    folder when ``folder`` is ``None``)."""
    from ntkal.labelling import LabelStore

    if spec.store:
        return LabelStore(spec.store)
    if folder is None:
        import tempfile
        folder = tempfile.mkdtemp(prefix="ntkal-labels-")
    return LabelStore(Path(folder) / "labels.db")


def make_oracle(oracle, *, store=None, executor=None, progress: bool = False) -> Callable:
    """``oracle(list of Atoms) -> list of labelled Atoms`` (``None`` for a structure that failed
    and was skipped) for the loop.

    Args:
      oracle: an :class:`~ntkal.labelling.OracleConfig`, a :class:`DataConfig` oracle name
        (``"stored"``, ``"emt"``, ``"xtb"``), or ``None`` (= ``"stored"``: the labels in the data).
      store: the :class:`~ntkal.labelling.LabelStore` (required for a calculator); every label is
        written there as it completes, and looked up there before any calculation.
      executor: a long-lived executor (:func:`ntkal.labelling.make_executor`); default: one per call.
    """
    from ntkal.labelling import label_structures

    if isinstance(oracle, str):
        oracle = _shortcut_oracle(oracle)
    if oracle is None:
        return lambda atoms_list: list(atoms_list)
    if store is None:
        raise ValueError("a calculator oracle needs a label store")
    return lambda atoms_list: label_structures(list(atoms_list), oracle, store, executor=executor,
                                               progress=progress).atoms


def _columns(config: ExperimentConfig) -> dict:
    loop, k = config.loop, config.loop.kernel
    kernel_used = loop.method not in ("random", "committee")
    return {
        "experiment": config.name, "label": config.label, "method": loop.method,
        "selector": loop.selector if kernel_used else "", "sketch_dim": k.sketch_dim if kernel_used else "",
        "num_probes": k.num_probes if kernel_used else "", "seed": loop.seed, "dataset": config.data.dataset,
        "size": config.data.size,
        "feature_norm": loop.feature_norm if kernel_used else "",
        "noise_var": ("evidence" if loop.uses_evidence else loop.noise_var) if kernel_used else "",
        "replay": loop.replay,
        "cascade": f"{loop.cascade}:{loop.cascade_keep:g}" if kernel_used and loop.cascade else "",
    }


def load_replay(data: DataConfig, *, progress: bool = True) -> list:
    """Labelled source structures for replay (``data.replay_files`` or the whole ``data.replay_split``)."""
    if data.from_files:
        return _read_files(data.replay_files, stored_labels=True, progress=progress, desc="replay")
    from ntkal import datasets

    return list(datasets.load_split(data.dataset, data.replay_split, size=data.size, seed=data.seed,
                                    cache_dir=data.cache_dir, progress=progress))


def run(config: ExperimentConfig, *, directory: str | Path | None = None, resume: bool = True,
        progress: bool = True, log: Callable[[str], None] | None = print,
        shared_round0: str | Path | None = None, cache: dict | None = None,
        oracle: Callable | None = None, inputs: RunInputs | None = None,
        collectives: Collectives | None = None, check_inputs: bool = True) -> Results:
    """Run one sweep point end to end.

    Args:
      config: the sweep point.
      directory: where the loop state is saved (resumable); ``None`` = in memory only.
      resume: continue from a saved state in ``directory``.
      progress: progress bars.
      log: one-line summaries.
      shared_round0: folder for the round-0 state shared by the methods of a paired study.
      cache: per-pool cache shared by points with the same checkpoint and data (see
        :func:`ntkal.loop.make_context`).
      oracle: the labelling function (:func:`make_oracle`); default: from ``config`` with a
        label store ``labels.db`` in ``directory`` (in memory without a directory) and one
        executor per round.
      inputs: the point's structures (:func:`load_inputs`); default: read them now.
      collectives: several processes running this point together (:mod:`ntkal.loop`): each
        scores its part of the pool; process 0 alone uses ``directory``, labels, logs and shows
        progress (the others' ``directory`` and ``oracle`` are ignored).
      check_inputs: check the structures against the model before any compute
        (:func:`check_run_inputs`). :func:`run_sweep` checks every point's inputs once, before
        its first point, and passes ``False``.

    Raises:
      UnknownElementError: a structure holds an element outside the model (naming file and
        frame).
      LeakageError: a test frame is also a pool, initial-set or target-set frame (before any
        compute; ``[data] test_overlap = "warn"`` downgrades it).
    """
    t0 = time.perf_counter()
    col = LocalCollectives() if collectives is None else collectives
    if not col.is_writer:  # process 0 owns the folder, the labels and the output
        directory, shared_round0, oracle, log, progress = None, None, _not_labelling, None, False
    if directory is not None:
        prepare_directory(directory, config, resume=resume)
    model, params, metadata = load_pretrained(config.checkpoint)
    inputs = inputs if inputs is not None else load_inputs(config, progress=progress)
    if check_inputs:
        check_run_inputs(config, inputs, model, metadata, log)
    pool, tests, replay, initial, target = inputs
    if oracle is None:
        oracle = _default_oracle(config, directory, progress)
    ctx = make_context(model, params, pool, tests, oracle, config.loop,
                       progress=progress, replay_atoms=replay, cache=cache, initial_atoms=initial,
                       target_atoms=target, test_overlap=config.data.test_overlap, collectives=col)
    if log:
        for note in ctx.audit.notes():
            log(f"note: {note}")
    state = run_loop(ctx, directory, resume=resume, log=log, shared_round0=shared_round0)
    columns = _columns(config)
    rows = [{**columns, **row} for row in state.rows]
    picks = [{**columns, **pick} for pick in state.picks]
    return Results(config, rows, picks, time.perf_counter() - t0)


def check_run_inputs(config: ExperimentConfig, inputs: RunInputs, model, metadata,
                     log: Callable[[str], None] | None = print) -> None:
    """The checks of a point's structures against its model, before any compute: an element
    outside the model is an error naming file and frame; elements the model never saw in training
    and (with ``[train] refit_e0``) test energies that no label can fix
    (:func:`check_reference_energies`) are warnings, each one ``log`` line."""
    _check_elements(model, metadata, inputs.pool, inputs.tests, inputs.initial, log, inputs.target)
    if config.loop.train.refit_e0:
        check_reference_energies(inputs.pool, inputs.tests, inputs.initial, log)


def _check_elements(model, metadata, pool, tests, initial, log, target=()) -> None:
    """Elements outside the model are an error (naming file and frame); elements it knows but
    never saw in training (checkpoint metadata ``train_elements``) are reported once."""
    from ntkal.models.coverage import UnseenElementWarning, check_element_coverage

    groups = ([("pool", pool), ("initial labelled set", initial), ("target set", target)]
              + [(f"test split {k}", v) for k, v in tests.items()])
    for what, atoms in groups:
        if not atoms:
            continue
        locate = lambda k, atoms=atoms: (atoms[k].info.get("source"), atoms[k].info.get("frame", k))
        warning = check_element_coverage(model.config.elements, metadata, (a.numbers for a in atoms),
                                         what=what, locate=locate)
        if warning and what == "pool":
            warnings.warn(warning, UnseenElementWarning, stacklevel=3)
            if log:
                log(f"warning: {warning}")


def check_reference_energies(pool, tests, initial=(), log: Callable[[str], None] | None = print) -> list[str]:
    """Warn about test structures whose energies depend on per-element reference energies that no
    label from ``pool`` or ``initial`` can fix (``[train] refit_e0``; see
    :mod:`ntkal.data.compositions`): one :class:`~ntkal.data.compositions.ReferenceEnergyWarning`
    and one ``log`` line per such test split, before any compute.

    Returns:
      The messages (empty when every test energy is fixable).
    """
    from ntkal.data.compositions import ReferenceEnergyWarning, reference_energy_gaps

    gaps = reference_energy_gaps([a.numbers for a in [*pool, *initial]],
                                 {f"test split {name!r}": [a.numbers for a in atoms] for name, atoms in tests.items()})
    messages = [gap.message() for gap in gaps]
    for message in messages:
        warnings.warn(message, ReferenceEnergyWarning, stacklevel=2)
        if log:
            log(f"warning: {message}")
    return messages


def _not_labelling(atoms_list):
    """The oracle of processes other than 0 (process 0 labels and sends the labels)."""
    raise RuntimeError("only process 0 labels structures")


def _default_oracle(config: ExperimentConfig, directory, progress: bool) -> Callable:
    spec = oracle_config(config)
    if spec is None:
        return make_oracle(None)
    return make_oracle(spec, store=_label_store(spec, directory), progress=progress)


def _check_oracles_import(points) -> None:
    """Import every oracle's calculator / function now, so a missing module is reported before
    any compute (and not in round 1)."""
    from ntkal.labelling import resolve_import

    for spec in {oracle_config(p) for p in points} - {None}:
        for role, path in (("oracle calculator", spec.calculator), ("oracle function", spec.function)):
            if ":" in path:
                try:
                    resolve_import(path, role)
                except ImportError as err:
                    raise ValueError(f"{points[0].source}: [oracle] {err}") from err


def prepare_directory(directory: str | Path, config: ExperimentConfig, *, resume: bool) -> None:
    """Make ``directory`` ready for ``config``: remove temporary files of a killed run; when
    resuming, check that the saved run was made with the same settings (else
    :class:`~ntkal.experiment.record.ConfigMismatchError` naming them); when not, delete the saved
    state. Then record the config (``config.json``)."""
    directory = Path(directory)
    remove_stale_temp_files(directory, recursive=True)
    has_state = (directory / "state.msgpack").exists()
    if resume:
        check_record(directory, config, has_state=has_state)
    elif has_state:
        (directory / "state.msgpack").unlink()
    write_record(directory, config)


def write_results(results: list[Results], out_dir: str | Path) -> tuple[Path, Path]:
    """Atomically write ``results.json`` (rows, picks and the config record of every point; strict
    JSON: missing numbers are ``null``) and ``results.csv`` (rows) in ``out_dir``."""
    out_dir = Path(out_dir)
    rows = [row for r in results for row in r.rows]
    picks = [pick for r in results for pick in r.picks]
    configs = {}
    for r in results:
        record = config_record(r.config)
        configs[f"{r.config.label}-seed{r.config.loop.seed}"] = {"hash": record_hash(record), "config": record}
    json_path, csv_path = out_dir / "results.json", out_dir / "results.csv"
    atomic_write_bytes(json_path, strict_dumps({"rows": rows, "picks": picks, "configs": configs}).encode())
    fields = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(csv_path, buffer.getvalue().encode())
    return json_path, csv_path


def run_sweep(path: str | Path, *, out: str | Path | None = None, resume: bool = True, progress: bool = True,
              log: Callable[[str], None] | None = print,
              after_point: Callable[[int, Results], None] | None = None,
              collectives: Collectives | None = None) -> list[Results]:
    """Run every point of the config at ``path``; results are rewritten after each point.

    ``after_point(k, results)`` (optional) is called after point ``k`` (0-based) has finished
    and its results are written (``ntkal run --diagnose`` prints the process's counters there).

    Each point keeps its resumable state in ``<out>/points/<label>-seed<k>/`` with the
    ``config.json`` it was made with; resuming a point whose settings changed is an error naming
    them (``resume=False`` starts it over). Points whose round 0 is identical (same seed, data,
    checkpoint and fine-tuning: a paired study) share it through
    ``<out>/points/_round0-seed<k>-<fingerprint>/``: it is computed once.

    Calculator oracles write every label to ``<out>/labels.db`` (or the ``[oracle] store``) as
    it completes and look there first, so no structure is labelled twice by the same oracle:
    not after a crash, not by another method or seed of the sweep. One executor (process pool
    or Dask client) serves the whole sweep.

    Before any compute: the folder is held for this run (a second live run into it is a
    :class:`~ntkal.folder_lock.FolderInUseError`), every point's settings are checked
    against its saved run, every label store is checked readable
    (:class:`~ntkal.labelling.LabelStoreError` with the recovery command), and every input is
    read and audited for test leakage (:class:`~ntkal.data.overlap.LeakageError`) and checked
    against the model once per distinct input (:func:`check_run_inputs`: an unknown element is
    an error; its warnings are printed once, not once per point).

    ``collectives`` (``ntkal run --distributed``): several processes run the sweep together,
    each with the config and the data files; the pool scoring of every round is split between
    them (:mod:`ntkal.loop`). Process 0 alone holds, checks and writes the output folder and
    labels; the others need no access to it.
    """
    from ntkal.folder_lock import hold_folder

    col = LocalCollectives() if collectives is None else collectives
    points = load_sweep(path)
    problems = data_file_problems(points)
    if problems:
        raise ValueError("\n".join(problems))
    _check_oracles_import(points)
    out_dir = Path(out or points[0].out)
    with contextlib.ExitStack() as stack:
        if col.is_writer:
            stack.enter_context(hold_folder(out_dir))
            remove_stale_temp_files(out_dir)
            if resume:  # every point's settings checked before any compute
                for point in points:
                    directory = out_dir / "points" / f"{point.label}-seed{point.loop.seed}"
                    check_record(directory, point, has_state=(directory / "state.msgpack").exists())
            _check_label_stores(points, out_dir, path, out)
        inputs = _audited_inputs(points, progress and col.is_writer)
        _check_sweep_inputs(points, inputs, log if col.is_writer else None)
        return _run_points(points, out_dir, resume, progress, log, stack, after_point, inputs, col)


def _check_label_stores(points, out_dir: Path, config_path, out) -> None:
    """Every label store the sweep will use reads (else one line naming the file and the exact
    recovery command)."""
    from ntkal.labelling import LabelStoreError

    for spec in {oracle_config(p) for p in points} - {None}:
        store = _label_store(spec, out_dir)
        try:
            store.check()
        except LabelStoreError as err:
            command = f"ntkal labels rebuild {config_path}" + (f" --out {out}" if out is not None else "")
            raise LabelStoreError(store.path, err.reason, f"rebuild it from the runs' labelled.extxyz files "
                                                          f"with `{command}` (it moves the damaged file aside "
                                                          f"first)") from None


def _audited_inputs(points, progress: bool) -> dict:
    """Every point's structures, read once per distinct input and audited for test leakage
    (:func:`ntkal.data.overlap.audit_inputs`) before any point computes anything."""
    from ntkal.data.overlap import audit_inputs

    inputs: dict = {}
    for point in points:
        key = _inputs_key(point)
        if key not in inputs:
            found = inputs[key] = load_inputs(point, progress=progress)
            audit_inputs(found.pool, found.tests, found.initial, found.target,
                         test_overlap=point.data.test_overlap)
    return inputs


def _check_sweep_inputs(points, inputs: dict, log) -> None:
    """The checks of :func:`check_run_inputs` for every point, before the first point computes
    anything: elements once per distinct input, reference energies once per distinct pool, test
    splits and initial set (so each warning is printed once per sweep, not once per point)."""
    models: dict = {}
    checked: set = set()
    for point in points:
        if point.checkpoint not in models:
            models[point.checkpoint] = load_pretrained(point.checkpoint)
        model, _, metadata = models[point.checkpoint]
        found = inputs[_inputs_key(point)]
        if (_inputs_key(point), point.checkpoint) not in checked:
            checked.add((_inputs_key(point), point.checkpoint))
            _check_elements(model, metadata, found.pool, found.tests, found.initial, log, found.target)
        if point.loop.train.refit_e0 and ("e0", point.data.without_target_set()) not in checked:
            checked.add(("e0", point.data.without_target_set()))
            check_reference_energies(found.pool, found.tests, found.initial, log)


def shared_round0_fingerprint(point: ExperimentConfig) -> str:
    """The key of the round-0 state that ``point`` shares with the other points of its sweep: the
    loop's round-0 settings, the checkpoint, the data and the digests of its files. The target
    set (settings and files) is left out: round 0 does not use it."""
    round0_data = point.data.without_target_set()
    digests = {spec: digest for spec, digest in config_record(point)["data_files"].items()
               if any(spec in specs for specs in round0_data.file_specs().values())}
    return round0_fingerprint(point.loop, point.checkpoint, round0_data, *sorted(digests.items()))


def _run_points(points, out_dir: Path, resume: bool, progress: bool, log, stack: contextlib.ExitStack,
                after_point, inputs: dict, col: Collectives):
    from ntkal.labelling import make_executor

    results = []
    caches: dict = {}  # (checkpoint, data) -> per-pool cache shared by the points using that pool
    oracles: dict = {}  # OracleConfig -> the labelling function (one store and executor each)
    cleared: set = set()
    inputs = dict(inputs)
    # the last point that uses each per-pool cache and each input: released after it (a cache
    # owns the compiled programs of its points, fine-tuning step, feature maps, shortlist and
    # selectors, and the pool features; nothing later would find them again)
    last_cache = {(p.checkpoint, p.data): k for k, p in enumerate(points)}
    last_inputs = {_inputs_key(p): k for k, p in enumerate(points)}
    for k, point in enumerate(points):
        if log and col.is_writer:
            log(f"== point {k + 1}/{len(points)}: {point.label} seed {point.loop.seed}")
        directory = out_dir / "points" / f"{point.label}-seed{point.loop.seed}"
        fingerprint = shared_round0_fingerprint(point)
        shared = out_dir / "points" / f"_round0-seed{point.loop.seed}-{fingerprint}"
        if not resume and shared not in cleared and col.is_writer:  # --no-resume recomputes the shared round 0 once
            cleared.add(shared)
            if (shared / "state.msgpack").exists():
                (shared / "state.msgpack").unlink()
        cache = caches.setdefault((point.checkpoint, point.data), {})
        spec = oracle_config(point)
        if spec is not None and spec not in oracles and col.is_writer:
            oracles[spec] = make_oracle(spec, store=_label_store(spec, out_dir),
                                        executor=stack.enter_context(make_executor(spec)), progress=progress)
        results.append(run(point, directory=directory, resume=resume, progress=progress, log=log,
                           shared_round0=shared, cache=cache, oracle=oracles.get(spec) or make_oracle(None),
                           inputs=inputs.get(_inputs_key(point)), collectives=col, check_inputs=False))
        if last_cache[(point.checkpoint, point.data)] == k:
            del caches[(point.checkpoint, point.data)]
        if last_inputs[_inputs_key(point)] == k:
            inputs.pop(_inputs_key(point), None)
        if col.is_writer:
            write_results(results, out_dir)
        if after_point is not None:
            after_point(k, results[-1])
    return results
