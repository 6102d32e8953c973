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
import time
import warnings
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import ase
import ase.io
import jax
import numpy as np
from ase.io.formats import filetype
from tqdm.auto import tqdm

from ntkal.acquire import Acquirer, AcquisitionConfig, structure_set
from ntkal.data import EmptyInputError, InvalidStructureError, atoms_to_structure, labels_of
from ntkal.data.overlap import KeyedFrames, check_test_leaks, count_duplicates, frame_of, repeats_of
from ntkal.jsonio import dumps as strict_dumps
from ntkal.models import atomic_write_bytes, load_pretrained
from ntkal.models.checkpoint import atomic_path, remove_stale_temp_files
from ntkal.models.coverage import UnseenElementWarning, check_element_coverage
from ntkal.cache import ProgramCache

__all__ = ["SelectSummary", "FileStructures", "select_from_files", "read_frames", "read_structures"]


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


def read_frames(path: str | os.PathLike, *, tag: bool = True) -> Iterator[ase.Atoms]:
    """Stream the frames of any ASE-readable file (lazily, one frame at a time).

    With ``tag``, ``atoms.info["source"]`` (the path) and ``atoms.info["frame"]`` (0-based
    index in the file) are set so validation errors name both. Read errors are re-raised as
    :class:`~ntkal.data.InvalidStructureError` naming the file and frame.
    """
    from ntkal.datasets import DatasetFormatError
    from ntkal.datasets.files import read_ase_frames

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    try:
        for frame, atoms in enumerate(read_ase_frames(path)):
            if tag:
                atoms.info["source"] = path
                atoms.info["frame"] = frame
            yield atoms
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
                    desc: str = "read") -> FileStructures:
    """Read and graph every frame of ``path`` once.

    Returns:
      A :class:`FileStructures`.

    Raises:
      EmptyInputError: the file holds no frame.
      InvalidStructureError: a frame cannot be read or graphed (message names file and frame).
    """
    structures, energies, frames_seen = [], [], []
    frames = read_frames(path)
    if progress:
        frames = tqdm(frames, desc=f"{desc} {Path(path).name}", unit="frame", leave=False)
    for n, atoms in enumerate(frames):
        structures.append(atoms_to_structure(atoms, cutoff, index=n, elements=elements))
        energies.append(labels_of(atoms)[0])
        frames_seen.append(frame_of(atoms))
    if not structures:
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
    if not isinstance(config, AcquisitionConfig):
        raise TypeError(f"config must be an AcquisitionConfig, got {type(config).__name__}")
    if int(budget) < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    budget = int(budget)
    out_path = Path(out_path)
    timings = {}
    # a killed earlier run may have left its temporary files beside the outputs
    remove_stale_temp_files(out_path.parent, names=(out_path.name, _summary_path(out_path).name))

    model, params, metadata = load_pretrained(str(model_path))
    cutoff, elements = model.config.cutoff, model.config.elements

    t = time.perf_counter()
    pool, _, pool_frames = read_structures(pool_path, cutoff, None, progress=progress, desc="read pool")
    # elements outside the model: error (all of them, one example frame); known but never trained on: warn
    element_warning = check_element_coverage(elements, metadata, (s.numbers for s in pool), what="pool",
                                             source=os.fspath(pool_path))
    if element_warning:
        warnings.warn(element_warning, UnseenElementWarning, stacklevel=2)
    n_pool = len(pool)
    if budget > n_pool:
        raise ValueError(f"budget {budget} exceeds the pool's {n_pool} structures ({pool_path})")
    train, energies, train_frames = read_structures(train_path, cutoff, elements, progress=progress, desc="read train")
    # pool frames already in the training set are labelled: never candidates
    in_train = repeats_of(pool_frames, train_frames)
    candidates = np.setdiff1d(np.arange(n_pool), in_train)
    if budget > len(candidates):
        raise ValueError(f"budget {budget} exceeds the pool's {len(candidates)} structures that are not "
                         f"in the training set ({pool_path}: {len(in_train)} of {n_pool} frames are in {train_path})")
    target, target_frames = [], []
    if target_path is not None:
        if config.selector != "varred":
            raise ValueError(f"a target set ({target_path}) needs selector 'varred', got {config.selector!r}")
        target, _, target_frames = read_structures(target_path, cutoff, elements, progress=progress, desc="read target")

    def in_file(path, frames) -> KeyedFrames:
        return KeyedFrames(frames, lambda k: f"{os.fspath(path)} frame {k}")

    tests = {Path(p).name: in_file(p, [frame_of(a) for a in read_frames(p, tag=False)]) for p in test_paths}
    check_test_leaks(tests, {"pool": in_file(pool_path, pool_frames), "training set": in_file(train_path, train_frames),
                             "target set": in_file(target_path, target_frames)},
                     test_overlap=test_overlap, downgrade="--test-overlap warn")
    timings["read_s"] = time.perf_counter() - t

    t = time.perf_counter()
    n_all = n_pool + len(train) + len(target)
    data = structure_set(pool + train + target, config.max_classes(n_all), config.max_padding)
    programs = None if program_cache is None else ProgramCache(program_cache)
    acquirer = Acquirer(model, params, config, programs=programs)
    timings["setup_s"] = time.perf_counter() - t
    picks = acquirer.pick(params, data, n_pool + np.arange(len(train)), candidates, budget,
                          jax.random.PRNGKey(config.seed), train_energies=energies, progress=progress,
                          target_ids=n_pool + len(train) + np.arange(len(target)) if target else None)
    for name in ("cascade_s", "train_features_s", "score_select_s"):
        timings[name] = picks.stats[name]

    t = time.perf_counter()
    _write_picked(pool_path, out_path, picks.ids, picks.scores, picks.pv)
    timings["write_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start

    padding = data.padding_ratio(config.chunk_size)
    stats = {k: v for k, v in picks.stats.items() if not k.endswith("_s")}
    summary = SelectSummary(out_path, _summary_path(out_path), n_pool, len(train), budget, config,
                            tuple(int(i) for i in picks.ids), tuple(float(s) for s in picks.scores),
                            tuple(float(v) for v in picks.pv), picks.noise_var, picks.w_force,
                            padding, timings, stats, len(in_train), count_duplicates(pool_frames))
    record = {
        "model": os.fspath(model_path), "pool": os.fspath(pool_path), "train": os.fspath(train_path),
        "out": os.fspath(out_path), "n_pool": n_pool, "n_train": len(train), "budget": budget,
        "target": None if target_path is None else os.fspath(target_path), "n_target": len(target),
        "tests": [os.fspath(p) for p in test_paths],
        "kernel": config.kind, "selector": config.selector, "config": config.to_dict(),
        "feature_dim": int(acquirer.feature_map.dim), "noise_var": picks.noise_var,
        "noise_var_from": "evidence" if config.uses_evidence(energies is not None) else "fixed",
        "w_force": picks.w_force, "feature_scale": float(picks.scale.scale),
        "size_classes": [list(b) for b in data.plan.budgets], "padding_ratio": padding,
        "ids": list(summary.ids), "scores": list(summary.scores), "pv": list(summary.pv),
        "stats": stats, "timings": timings, "element_warning": element_warning,
        "n_pool_in_train": summary.n_pool_in_train, "pool_duplicates": summary.pool_duplicates,
        "programs": None if programs is None else {"folder": str(programs.folder), "loaded": programs.loaded,
                                                   "exported": programs.exported,
                                                   "arrays_loaded": programs.arrays_loaded,
                                                   "arrays_saved": programs.arrays_saved},
    }
    atomic_write_bytes(summary.summary_path, strict_dumps(record, indent=2).encode())
    return summary


def _write_picked(pool_path, out_path: Path, ids: np.ndarray, scores: np.ndarray, pv: np.ndarray):
    """Third pass: write exactly the frames ``ids`` of ``pool_path`` (pick order), atomically."""
    rank = {int(i): k for k, i in enumerate(ids)}
    picked: list = [None] * len(ids)
    for frame, atoms in enumerate(read_frames(pool_path, tag=False)):
        k = rank.get(frame)
        if k is None:
            continue
        atoms.info.update(pool_id=int(ids[k]), score=float(scores[k]), pv=float(pv[k]), rank=k)
        picked[k] = atoms
    missing = [int(ids[k]) for k, a in enumerate(picked) if a is None]
    if missing:
        raise RuntimeError(f"{pool_path}: frames {missing} vanished between passes")
    fmt = filetype(str(out_path), read=False) or "extxyz"
    with atomic_path(out_path) as tmp:
        ase.io.write(tmp, picked, format=fmt)
