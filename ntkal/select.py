"""``ntkal select``: pick the most informative structures of a (large) pool file.

One pass reads and graphs every frame of the pool and training files (errors name the file and
frame; each neighbour list is built once), the acquisition pipeline
(:class:`ntkal.acquire.Acquirer`: size-class padding, prefetched chunks, optional cheap-kernel
cascade, posterior-variance shortlist, batch selector) picks ``budget`` structures, and a last
pass over the pool file writes exactly the picked frames (in pick order) to ``out_path``
atomically, with ``info["pool_id"]`` (0-based frame index in the pool file), ``info["score"]``
(the selector's criterion at the time of the pick) and ``info["pv"]`` (the structure's
posterior variance, the shortlist score). A JSON summary goes next to it
(``<out stem>.summary.json``): the full :class:`~ntkal.acquire.AcquisitionConfig`, the picks,
per-stage seconds and the padding ratio.

Memory: the graphs of pool and training set are held (≈ 50 bytes per edge); features are
streamed chunk by chunk (one chunk, the top-m shortlist and the training features at a time).

The training file defines the posterior; when every training frame carries an energy label the
evidence rule can choose σ² (``noise_rule="auto"`` falls back to the fixed ``noise_var``
otherwise, and says so in the summary).

Example::

    ntkal select --model ckpt.msgpack --pool pool.extxyz --train train.extxyz \\
        --budget 50 --kernel joint --out picked.extxyz
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import ase
import ase.io
import jax
import numpy as np
from ase.io.formats import filetype
from tqdm.auto import tqdm

from ntkal.acquire import Acquirer, AcquisitionConfig, structure_set
from ntkal.cluster.collectives import Collectives, LocalCollectives
from ntkal.data import EmptyInputError, InvalidStructureError, atoms_to_structure, labels_of
from ntkal.data.overlap import KeyedFrames, check_test_leaks, count_duplicates, frame_of, repeats_of
from ntkal.jsonio import dumps as strict_dumps
from ntkal.models import atomic_write_bytes, load_pretrained
from ntkal.models.checkpoint import atomic_path, remove_stale_temp_files
from ntkal.models.coverage import UnseenElementWarning, check_element_coverage
from ntkal.cache import ProgramCache

__all__ = ["SelectSummary", "FileStructures", "select_from_files", "read_frames", "read_indexed_frames",
           "read_structures"]


class SelectSummary(NamedTuple):
    """What :func:`select_from_files` did.

    Attributes:
      out_path: the written structure file.
      summary_path: the JSON summary next to it.
      n_pool: structures in the pool file.
      n_train: structures in the training file.
      budget: structures picked.
      config: the :class:`~ntkal.acquire.AcquisitionConfig` used.
      ids: (budget,) 0-based pool frame indices, in pick order.
      scores: (budget,) selector criterion at the time of each pick.
      pv: (budget,) posterior variance of each pick (in the scaled feature unit).
      noise_var: σ² used.
      w_force: joint force-row weight (``None`` for other kernels).
      padding_ratio: atom slots featurised / real atoms (size classes).
      timings: seconds per stage (``read_s``, ``setup_s``, ``cascade_s``, ``train_features_s``,
        ``score_select_s``, ``write_s``, ``total_s``).
      stats: counts from :class:`ntkal.acquire.Picks` (``n_features``, ``n_kept``, ...).
      n_pool_in_train: pool frames that are also training frames (same numbers, cell, pbc and
        positions to 1e-6 Å, :mod:`ntkal.data.overlap`): never picked.
      pool_duplicates: pool frames that repeat an earlier pool frame (kept).
    """

    out_path: Path
    summary_path: Path
    n_pool: int
    n_train: int
    budget: int
    config: AcquisitionConfig
    ids: tuple
    scores: tuple
    pv: tuple
    noise_var: float
    w_force: float | None
    padding_ratio: float
    timings: dict
    stats: dict
    n_pool_in_train: int = 0
    pool_duplicates: int = 0

    @property
    def kernel(self) -> str:
        return self.config.kind

    @property
    def selector(self) -> str:
        return self.config.selector


def read_frames(path: str | os.PathLike, *, tag: bool = True,
                keep: Callable[[int], bool] | None = None) -> Iterator[ase.Atoms]:
    """Stream the frames of any ASE-readable file (lazily, one frame at a time).

    With ``tag``, ``atoms.info["source"]`` (the path) and ``atoms.info["frame"]`` (0-based
    index in the file) are set so validation errors name both. ``keep``: only the frames whose
    index it accepts (in a plain extxyz/xyz file the others are never parsed:
    :func:`ntkal.datasets.files.iter_ase_frames`). Read errors are re-raised as
    :class:`~ntkal.data.InvalidStructureError` naming the file and frame.
    """
    for frame, atoms in read_indexed_frames(path, keep=keep):
        if tag:
            atoms.info["source"] = os.fspath(path)
            atoms.info["frame"] = frame
        yield atoms


def read_indexed_frames(path: str | os.PathLike, *, keep: Callable[[int], bool] | None = None
                        ) -> Iterator[tuple[int, ase.Atoms]]:
    """``(index, frame)`` of the frames of ``path`` that ``keep`` accepts (default: all),
    untagged; errors as in :func:`read_frames`."""
    from ntkal.datasets import DatasetFormatError
    from ntkal.datasets.files import iter_ase_frames

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    try:
        yield from iter_ase_frames(path, keep)
    except DatasetFormatError as err:  # names the frame it could not parse
        raise InvalidStructureError(err.reason, index=err.where,
                                    info={"source": path, "frame": err.where}) from err


class FileStructures(NamedTuple):
    """Every frame of one file, read and graphed once (:func:`read_structures`).

    Attributes:
      structures: the :class:`~ntkal.data.Structure` s in file order.
      energies: (n,) energy labels in eV (``None`` unless every frame has one).
      frames: the :class:`~ntkal.data.overlap.Frame` of every frame (copies across files).
    """

    structures: list
    energies: np.ndarray | None
    frames: list


def read_structures(path, cutoff: float, elements, *, progress: bool = False,
                    desc: str = "read", part: range | None = None) -> FileStructures:
    """Read and graph every frame of ``path`` once (with ``part``: only the frames whose 0-based
    index is in ``part``; the others are never graphed or held, and in a plain extxyz/xyz file
    never parsed).

    Returns:
      A :class:`FileStructures`.

    Raises:
      EmptyInputError: the file holds no frame.
      InvalidStructureError: a frame cannot be read or graphed (message names file and frame).
    """
    structures, energies, frames_seen = [], [], []
    frames = read_frames(path, keep=None if part is None else part.__contains__)
    if progress:
        frames = tqdm(frames, desc=f"{desc} {Path(path).name}", unit="frame", leave=False)
    for atoms in frames:
        n = atoms.info["frame"]
        structures.append(atoms_to_structure(atoms, cutoff, index=n, elements=elements))
        energies.append(labels_of(atoms)[0])
        frames_seen.append(frame_of(atoms))
    if not structures and part is None:
        raise EmptyInputError(f"{path}: no structures in the file")
    have = all(e is not None for e in energies)
    return FileStructures(structures, np.asarray(energies, np.float64) if have else None, frames_seen)


def _summary_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.stem + ".summary.json")


def select_from_files(
    model_path: str | os.PathLike,
    pool_path: str | os.PathLike,
    train_path: str | os.PathLike,
    budget: int,
    *,
    out_path: str | os.PathLike,
    config: AcquisitionConfig = AcquisitionConfig(),
    progress: bool = True,
    program_cache: str | os.PathLike | None = None,
    target_path: str | os.PathLike | None = None,
    test_paths: Sequence[str | os.PathLike] = (),
    test_overlap: str = "error",
    collectives: Collectives | None = None,
) -> SelectSummary:
    """Pick ``budget`` structures of ``pool_path`` and write them to ``out_path``.

    Args:
      model_path: an ntkal checkpoint (:func:`ntkal.models.save_checkpoint`) or a shipped
        pretrained name.
      pool_path: candidate structures, any ASE-readable file (labels ignored).
      train_path: structures the model was trained on (define the posterior; energy labels, if
        every frame has one, feed the evidence rule for σ²). Pool frames that are also training
        frames (:mod:`ntkal.data.overlap`) are never picked (``n_pool_in_train``).
      budget: number of structures to pick (1 ≤ budget ≤ pool size).
      out_path: output structure file (format from its extension; ``.extxyz`` recommended).
      config: the acquisition settings (kernel, selector, shortlist, σ², cascade, chunking).
      progress: show progress bars.
      program_cache: optional folder of traced programs (:class:`ntkal.cache.ProgramCache`;
        ``ntkal select`` passes ``programs/`` inside its compilation cache): a second run with the
        same model, kernel and padding classes skips tracing the feature map.
      target_path: optional target structures (any ASE-readable file, labels ignored), e.g.
        unlabelled frames like those the model will be used on: ``varred`` then reduces the
        posterior variance summed over them instead of over the pool. Never picked.
      test_paths: files of frames held out for testing: a pool, training or target frame among
        them (same numbers, cell, pbc and positions to 1e-6 Å, :mod:`ntkal.data.overlap`) is a
        :class:`~ntkal.data.overlap.LeakageError` naming both files and frames, before any
        feature is computed (a picked test frame would be labelled and trained on).
      test_overlap: ``"error"`` or ``"warn"`` (:class:`~ntkal.data.overlap.LeakageWarning`).
      collectives: several processes (:func:`ntkal.cluster.initialize`; ``ntkal select
        --distributed``), every one calling this function with the same arguments: each reads
        and graphs only its round-robin part of the pool file (frames ``index``, ``index +
        count``, ...), checks it against the training and test files, and scores it; the
        picks (``ids`` are frame indices in the whole file) are the single-process picks, and
        process 0 alone writes ``out_path`` and the summary. ``n_pool``, ``n_pool_in_train`` are
        totals; ``pool_duplicates`` counts repeats within each process's part.

    Returns:
      A :class:`SelectSummary` (also written as JSON next to ``out_path``).

    Raises:
      ValueError: ``budget`` < 1 or larger than the pool, empty pool, bad config.
      InvalidStructureError: a pool/training frame is unreadable or invalid (names file+frame);
        :class:`~ntkal.data.UnknownElementError` when the pool holds elements outside the model
        (all of them named, with the first frame holding one), before any feature is computed.

    Warns:
      UnseenElementWarning: the pool holds model elements missing from the checkpoint metadata's
        ``train_elements`` (:func:`ntkal.models.coverage.check_element_coverage`); the text is also
        the summary's ``element_warning``.
    """
    t_start = time.perf_counter()
    col = LocalCollectives() if collectives is None else collectives
    progress = progress and col.is_writer  # one set of progress bars
    budget = _checked_budget(budget, config)
    out_path = Path(out_path)
    timings = {}
    if col.is_writer:  # a killed earlier run may have left its temporary files beside the outputs
        remove_stale_temp_files(out_path.parent, names=(out_path.name, _summary_path(out_path).name))
    model, params, metadata = load_pretrained(str(model_path))

    t = time.perf_counter()
    inputs = _read_inputs(model.config, metadata, pool_path, train_path, target_path, budget=budget,
                          config=config, progress=progress, col=col)
    _check_no_test_leaks(test_paths, test_overlap, pool_path, train_path, target_path, inputs)
    timings["read_s"] = time.perf_counter() - t

    t = time.perf_counter()
    data, programs, acquirer = _make_acquirer(model, params, config, program_cache, inputs)
    timings["setup_s"] = time.perf_counter() - t
    picks = _pick(acquirer, params, data, inputs, budget, config, progress, col)
    for name in ("cascade_s", "train_features_s", "score_select_s", "shortlist_s", "gather_s", "select_s"):
        if name in picks.stats:
            timings[name] = picks.stats[name]

    t = time.perf_counter()
    if col.is_writer:
        _write_picked(pool_path, out_path, picks.ids, picks.scores, picks.pv)
    timings["write_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start

    summary = _select_summary(out_path, inputs, budget, config, picks, data, timings)
    if col.is_writer:
        paths = {"model": model_path, "pool": pool_path, "train": train_path, "out": out_path, "target": target_path}
        record = _summary_record(summary, paths, test_paths, inputs, acquirer, picks, data, programs)
        atomic_write_bytes(summary.summary_path, strict_dumps(record, indent=2).encode())
    return summary


class _Inputs(NamedTuple):
    """The frames :func:`select_from_files` works on, read and graphed once.

    Attributes:
      pool, train, target: :class:`~ntkal.data.Structure` s of each file (``target`` empty without
        a target file).
      pool_frames, train_frames, target_frames: their :class:`~ntkal.data.overlap.Frame` s.
      pool_ids: ``(len(pool),)`` frame index in the pool file of each pool structure held here.
      n_pool: frames in the whole pool file (every process's part).
      n_pool_in_train: pool frames that are training frames, in the whole pool file.
      energies: ``(n_train,)`` training energy labels in eV, or ``None`` unless every frame has one.
      in_train: pool frame indices that are also training frames (never picked).
      candidates: the other pool frame indices (sorted).
      element_warning: the pool's element coverage warning (``None`` if there is none).
    """

    pool: list
    pool_frames: list
    pool_ids: np.ndarray
    n_pool: int
    n_pool_in_train: int
    train: list
    energies: np.ndarray | None
    train_frames: list
    in_train: np.ndarray
    candidates: np.ndarray
    target: list
    target_frames: list
    element_warning: str | None


def _checked_budget(budget, config) -> int:
    """``budget`` as an int, after checking it and the type of ``config``."""
    if not isinstance(config, AcquisitionConfig):
        raise TypeError(f"config must be an AcquisitionConfig, got {type(config).__name__}")
    if int(budget) < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    return int(budget)


def _read_inputs(model_config, metadata, pool_path, train_path, target_path, *, budget: int,
                 config: AcquisitionConfig, progress: bool, col: Collectives) -> _Inputs:
    """Read and graph the pool (this process's part of it), training and target files (in that
    order), checking the pool's elements against the model (:func:`_read_pool`) and the budget
    against the pool frames that are not training frames."""
    cutoff, elements = model_config.cutoff, model_config.elements
    pool, pool_frames, element_warning, n_pool = _read_pool(pool_path, model_config, metadata, budget, progress, col)
    pool_ids = np.arange(col.index, col.index + col.count * len(pool), col.count, dtype=np.int64)
    train, energies, train_frames = read_structures(train_path, cutoff, elements, progress=progress, desc="read train")
    in_train, candidates, n_in_train = _candidates_outside_training(pool_frames, train_frames, budget, pool_path,
                                                                    train_path, col, n_pool)
    target, target_frames = _read_target(target_path, config, cutoff, elements, progress)
    return _Inputs(pool, pool_frames, pool_ids, n_pool, n_in_train, train, energies, train_frames, in_train,
                   candidates, target, target_frames, element_warning)


def _read_pool(pool_path, model_config, metadata, budget: int, progress: bool, col: Collectives):
    """This process's part of the pool (all of it with one process): structures, frames, the
    element coverage warning (also warned) and the number of frames in the whole file.

    Raises ``UnknownElementError`` for elements outside the model, ``ValueError`` for a budget
    larger than the pool.
    """
    part = None if col.count == 1 else range(col.index, sys.maxsize, col.count)
    pool, _, pool_frames = read_structures(pool_path, model_config.cutoff, None, progress=progress,
                                           desc="read pool", part=part)
    # elements outside the model: error (all of them, one example frame); known but never trained on: warn
    element_warning = check_element_coverage(model_config.elements, metadata, (s.numbers for s in pool),
                                             what="pool", source=os.fspath(pool_path))
    if element_warning:
        # stacklevel 4: the caller of select_from_files (-> _read_inputs -> _read_pool)
        warnings.warn(element_warning, UnseenElementWarning, stacklevel=4)
    n_pool = col.total(len(pool))
    if n_pool == 0:
        raise EmptyInputError(f"{pool_path}: no structures in the file")
    if budget > n_pool:
        raise ValueError(f"budget {budget} exceeds the pool's {n_pool} structures ({pool_path})")
    return pool, pool_frames, element_warning, n_pool


def _candidates_outside_training(pool_frames, train_frames, budget: int, pool_path, train_path,
                                 col: Collectives, n_pool: int):
    """``(in_train, candidates, n_in_train)``: indices (into ``pool_frames``) of the pool frames
    that are training frames (labelled already: never candidates) and of the others, and how many
    are training frames in the whole pool; ``ValueError`` when fewer than ``budget`` remain."""
    in_train = repeats_of(pool_frames, train_frames)
    candidates = np.setdiff1d(np.arange(len(pool_frames)), in_train)
    n_in_train = col.total(len(in_train))
    if budget > n_pool - n_in_train:
        raise ValueError(f"budget {budget} exceeds the pool's {n_pool - n_in_train} structures that are not "
                         f"in the training set ({pool_path}: {n_in_train} of {n_pool} frames are in {train_path})")
    return in_train, candidates, n_in_train


def _read_target(target_path, config: AcquisitionConfig, cutoff: float, elements, progress: bool):
    """``(structures, frames)`` of the target file (``varred`` only); empty lists without one."""
    if target_path is None:
        return [], []
    if config.selector != "varred":
        raise ValueError(f"a target set ({target_path}) needs selector 'varred', got {config.selector!r}")
    target, _, target_frames = read_structures(target_path, cutoff, elements, progress=progress, desc="read target")
    return target, target_frames


def _keyed_frames(path, frames) -> KeyedFrames:
    """``frames`` of the file ``path``, named ``<path> frame <k>`` in leakage errors."""
    return KeyedFrames(frames, lambda k: f"{os.fspath(path)} frame {k}")


def _check_no_test_leaks(test_paths, test_overlap: str, pool_path, train_path, target_path, inputs: _Inputs):
    """Refuse (or warn, ``test_overlap="warn"``) when a frame of a test file is also a pool,
    training or target frame (:func:`~ntkal.data.overlap.check_test_leaks`)."""
    tests = {Path(p).name: _keyed_frames(p, [frame_of(a) for a in read_frames(p, tag=False)]) for p in test_paths}
    check_test_leaks(tests, {"pool": _keyed_frames(pool_path, inputs.pool_frames),
                             "training set": _keyed_frames(train_path, inputs.train_frames),
                             "target set": _keyed_frames(target_path, inputs.target_frames)},
                     test_overlap=test_overlap, downgrade="--test-overlap warn")


def _make_acquirer(model, params, config: AcquisitionConfig, program_cache, inputs: _Inputs):
    """``(data, programs, acquirer)``: the size-classed structure set of pool + train + target
    (in that order), the program cache (``None`` without a folder) and the :class:`Acquirer`."""
    n_all = len(inputs.pool) + len(inputs.train) + len(inputs.target)
    data = structure_set(inputs.pool + inputs.train + inputs.target, config.max_classes(n_all), config.max_padding)
    programs = None if program_cache is None else ProgramCache(program_cache)
    return data, programs, Acquirer(model, params, config, programs=programs)


def _pick(acquirer: Acquirer, params, data, inputs: _Inputs, budget: int, config: AcquisitionConfig,
          progress: bool, col: Collectives):
    """Run the acquisition pipeline: ``budget`` picks among ``inputs.candidates`` (structure set
    indices: pool, then training, then target structures), seeded by ``config.seed``; the picks'
    ids are frame indices in the pool file."""
    n_pool, n_train = len(inputs.pool), len(inputs.train)
    target_ids = n_pool + n_train + np.arange(len(inputs.target)) if inputs.target else None
    global_ids = None
    if col.count > 1:
        global_ids = np.concatenate([inputs.pool_ids, np.full(n_train + len(inputs.target), -1, np.int64)])
    return acquirer.pick(params, data, n_pool + np.arange(n_train), inputs.candidates, budget,
                         jax.random.PRNGKey(config.seed), train_energies=inputs.energies,
                         progress=progress and col.is_writer, target_ids=target_ids, collectives=col,
                         global_ids=global_ids)


def _select_summary(out_path: Path, inputs: _Inputs, budget: int, config: AcquisitionConfig, picks, data,
                    timings: dict) -> SelectSummary:
    """The :class:`SelectSummary` of a finished selection."""
    stats = {k: v for k, v in picks.stats.items() if not k.endswith("_s")}
    return SelectSummary(out_path, _summary_path(out_path), inputs.n_pool, len(inputs.train), budget, config,
                         tuple(int(i) for i in picks.ids), tuple(float(s) for s in picks.scores),
                         tuple(float(v) for v in picks.pv), picks.noise_var, picks.w_force,
                         data.padding_ratio(config.chunk_size), timings, stats, inputs.n_pool_in_train,
                         count_duplicates(inputs.pool_frames))


def _summary_record(summary: SelectSummary, paths: dict, test_paths, inputs: _Inputs, acquirer: Acquirer, picks,
                    data, programs) -> dict:
    """The JSON summary written next to the output: ``summary`` plus the inputs (``paths``: model,
    pool, train, out and target file, the latter ``None`` without one), the acquisition settings and
    feature scale, the size classes and the program cache counters."""
    config = summary.config
    target_path = paths["target"]
    return {
        "model": os.fspath(paths["model"]), "pool": os.fspath(paths["pool"]), "train": os.fspath(paths["train"]),
        "out": os.fspath(paths["out"]), "n_pool": summary.n_pool, "n_train": summary.n_train,
        "budget": summary.budget,
        "target": None if target_path is None else os.fspath(target_path), "n_target": len(inputs.target),
        "tests": [os.fspath(p) for p in test_paths],
        "kernel": config.kind, "selector": config.selector, "config": config.to_dict(),
        "feature_dim": int(acquirer.feature_map.dim), "noise_var": picks.noise_var,
        "noise_var_from": "evidence" if config.uses_evidence(inputs.energies is not None) else "fixed",
        "w_force": picks.w_force, "feature_scale": float(picks.scale.scale),
        "size_classes": [list(b) for b in data.plan.budgets], "padding_ratio": summary.padding_ratio,
        "ids": list(summary.ids), "scores": list(summary.scores), "pv": list(summary.pv),
        "stats": summary.stats, "timings": summary.timings, "element_warning": inputs.element_warning,
        "n_pool_in_train": summary.n_pool_in_train, "pool_duplicates": summary.pool_duplicates,
        "programs": _programs_record(programs),
    }


def _programs_record(programs: ProgramCache | None) -> dict | None:
    """The program cache's folder and load/export counters (``None`` without a cache)."""
    if programs is None:
        return None
    return {"folder": str(programs.folder), "loaded": programs.loaded, "exported": programs.exported,
            "arrays_loaded": programs.arrays_loaded, "arrays_saved": programs.arrays_saved}


def _write_picked(pool_path, out_path: Path, ids: np.ndarray, scores: np.ndarray, pv: np.ndarray):
    """Third pass: write exactly the frames ``ids`` of ``pool_path`` (pick order), atomically."""
    rank = {int(i): k for k, i in enumerate(ids)}
    picked: list = [None] * len(ids)
    for frame, atoms in read_indexed_frames(pool_path, keep=rank.__contains__):
        k = rank[frame]
        atoms.info.update(pool_id=int(ids[k]), score=float(scores[k]), pv=float(pv[k]), rank=k)
        picked[k] = atoms
    missing = [int(ids[k]) for k, a in enumerate(picked) if a is None]
    if missing:
        raise RuntimeError(f"{pool_path}: frames {missing} vanished between passes")
    fmt = filetype(str(out_path), read=False) or "extxyz"
    with atomic_path(out_path) as tmp:
        ase.io.write(tmp, picked, format=fmt)
