"""``ntkal select``: pick the most informative structures of a (large) pool file.

Three passes over the pool file, which is streamed with ``ase.io.iread`` and never held
in memory:

1. **validate** — every frame becomes a graph once (errors name the file and frame); the
   per-graph budgets :class:`~ntkal.kernels.GraphSizes` (bucketed max atoms / edges over
   pool and training set) are fixed so every feature chunk has the same row count r.
2. **score** — the pool is featurised chunk by chunk and streamed through the
   posterior-variance top-m shortlist (:func:`ntkal.acquisition.shortlist_pool`); the
   posterior comes from the training file's features.
3. **write** — the selector picks ``budget`` structures from the shortlist; the pool file is
   read again and exactly the picked frames are written (in pick order) to ``out_path``
   atomically, with ``info["pool_id"]`` (0-based frame index in the pool file),
   ``info["score"]`` (the selector's criterion at the time of the pick, e.g. the squared
   posterior distance for ``lcmd``) and ``info["pv"]`` (the structure's posterior variance,
   the shortlist score). A JSON summary goes next to it (``<out stem>.summary.json``).

Memory: the pool is never held (one chunk of frames and features at a time, plus the top-m
shortlist and the picked frames); the training set's feature rows (n_train × r × d) are held
because the train+pool selectors use them as initial centres.

Feature scale (as in :mod:`ntkal.loop`): for ``kernel="joint"`` the force rows are weighted
by the trace-equalising w_F (:func:`ntkal.kernels.default_joint_weights`) computed on the
training set; then every row is divided by sqrt(mean per-structure trace ‖Φ(x)‖²_F over the
training set), so ``noise_var`` is relative to the typical kernel diagonal.

Example::

    ntkal select --model ckpt.msgpack --pool pool.extxyz --train train.extxyz \\
        --budget 50 --kernel joint --out picked.extxyz
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator, NamedTuple

import ase
import ase.io
import jax
import jax.numpy as jnp
import numpy as np
from ase.io.formats import filetype
from tqdm.auto import tqdm

from ntkal.acquisition import (SELECTORS, FeatureChunk, ScoreConfig, fit_posterior, select_batch,
                               accumulate_second_moment, shortlist_pool)
from ntkal.data import (EmptyInputError, InvalidStructureError, atoms_to_structure, bucket,
                        iterate_chunks)
from ntkal.kernels import KINDS, KernelConfig, make_feature_map
from ntkal.kernels.split import GraphSizes
from ntkal.loop import scale_training_features
from ntkal.models import atomic_write_bytes, load_pretrained

__all__ = ["SelectSummary", "select_from_files", "add_select_arguments", "main_select",
           "read_frames", "scan_sizes"]

#: Selectors that also take the training features as initial centres (train+pool mode).
_DISTANCE_SELECTORS = ("lcmd", "maxdist", "kmeanspp")


class SelectSummary(NamedTuple):
    """What :func:`select_from_files` did.

    Attributes:
      out_path: the written structure file.
      summary_path: the JSON summary next to it.
      n_pool: structures in the pool file.
      n_train: structures in the training file.
      budget: structures picked.
      kernel: feature-map kind.
      selector: batch selector.
      ids: (budget,) 0-based pool frame indices, in pick order.
      scores: (budget,) selector criterion at the time of each pick.
      pv: (budget,) posterior variance of each pick (relative to the mean training trace).
      sizes: per-graph budgets used for every chunk.
      w_force: joint force-row weight (``None`` for other kernels).
      timings: seconds per stage (``validate_s``, ``train_features_s``, ``score_s``,
        ``select_s``, ``write_s``, ``total_s``).
    """

    out_path: Path
    summary_path: Path
    n_pool: int
    n_train: int
    budget: int
    kernel: str
    selector: str
    ids: tuple
    scores: tuple
    pv: tuple
    sizes: GraphSizes
    w_force: float | None
    timings: dict


def read_frames(path: str | os.PathLike, *, tag: bool = True) -> Iterator[ase.Atoms]:
    """Stream the frames of any ASE-readable file (lazily, one frame at a time).

    With ``tag``, ``atoms.info["source"]`` (the path) and ``atoms.info["frame"]`` (0-based
    index in the file) are set so validation errors name both. Read errors are re-raised as
    :class:`~ntkal.data.InvalidStructureError` naming the file and frame.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    if os.path.getsize(path) == 0:
        return
    frames = ase.io.iread(path, index=":")
    frame = 0
    while True:
        try:
            atoms = next(frames)
        except StopIteration:
            return
        except Exception as err:  # ase raises many parser error types
            raise InvalidStructureError(f"cannot read: {err}", index=frame,
                                        info={"source": path, "frame": frame}) from err
        if tag:
            atoms.info["source"] = path
            atoms.info["frame"] = frame
        yield atoms
        frame += 1


def scan_sizes(path, cutoff: float, elements, *, progress: bool = False,
               desc: str = "validate") -> tuple[int, int, int]:
    """Validate every frame of ``path``; returns ``(n_frames, max_atoms, max_edges)``.

    Raises:
      EmptyInputError: the file holds no frame.
      InvalidStructureError: a frame cannot be read or graphed (message names file and frame).
    """
    n = max_atoms = max_edges = 0
    frames = read_frames(path)
    if progress:
        frames = tqdm(frames, desc=f"{desc} {Path(path).name}", unit="frame", leave=False)
    for atoms in frames:
        s = atoms_to_structure(atoms, cutoff, index=n, elements=elements)
        max_atoms, max_edges = max(max_atoms, s.n_atoms), max(max_edges, s.n_edges)
        n += 1
    if n == 0:
        raise EmptyInputError(f"{path}: no structures in the file")
    return n, max_atoms, max_edges


def _feature_chunks(fmap, params, path, cutoff, elements, sizes: GraphSizes, chunk_size: int,
                    weights=None, scale: float = 1.0) -> Iterator[FeatureChunk]:
    """Fixed-budget feature chunks of every frame of ``path`` (ids = frame index)."""
    n_node = bucket(chunk_size * sizes.max_atoms + 1)
    n_edge = bucket(chunk_size * sizes.max_edges)
    for chunk in iterate_chunks(read_frames(path), cutoff, max_graphs=chunk_size, max_nodes=n_node,
                                max_edges=n_edge, fixed_budget=True, elements=elements):
        rows, mask = fmap.apply(params, chunk.graph, sizes=sizes)
        rows = jnp.asarray(rows)
        if weights is not None:
            rows = rows * weights.astype(rows.dtype)
        yield FeatureChunk(rows / scale, jnp.asarray(mask), jnp.asarray(chunk.ids, jnp.int32))


def _concat(chunks: list[FeatureChunk]) -> FeatureChunk:
    return FeatureChunk(*(jnp.concatenate([getattr(c, f) for c in chunks]) for f in FeatureChunk._fields))


def _summary_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.stem + ".summary.json")


def select_from_files(
    model_path: str | os.PathLike,
    pool_path: str | os.PathLike,
    train_path: str | os.PathLike,
    budget: int,
    *,
    out_path: str | os.PathLike,
    kernel: str = "joint",
    selector: str = "lcmd",
    shortlist: int = 200,
    sketch_dim: int | None = 256,
    num_probes: int = 8,
    joint_force: str = "probe",
    param_filter: str = "all",
    noise_var: float = 1e-2,
    reduction: str = "total",
    chunk_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> SelectSummary:
    """Pick ``budget`` structures of ``pool_path`` and write them to ``out_path``.

    Args:
      model_path: an ntkal checkpoint (:func:`ntkal.models.save_checkpoint`).
      pool_path: candidate structures, any ASE-readable file (streamed; labels ignored).
      train_path: structures the model was trained on (define the posterior; labels ignored).
      budget: number of structures to pick (1 ≤ budget ≤ pool size).
      out_path: output structure file (format from its extension; ``.extxyz`` recommended).
      kernel: feature map, one of :data:`ntkal.kernels.KINDS`; ``joint`` gets trace-equalising
        weights from the training set.
      selector: one of :data:`ntkal.acquisition.SELECTORS`.
      shortlist: m, structures kept by the streaming posterior-variance top-m (raised to
        ``budget`` if smaller).
      sketch_dim: d, the NTK sketch width (``None`` = unsketched; small models only).
      num_probes: k, probe tangents of the ``force_probe``/``joint`` force rows.
      joint_force: ``"probe"`` or ``"exact"`` force rows inside the joint kernel.
      param_filter: parameters the NTK differentiates (see :func:`ntkal.kernels.select_params`).
      noise_var: σ², relative to the mean per-structure kernel trace of the training set.
      reduction: per-structure reduction of row variances (``total``, ``mean``, ``max``).
      chunk_size: structures per featurisation chunk.
      seed: seeds the sketch, probes and the random/k-means++ selectors.
      progress: show progress bars.

    Returns:
      A :class:`SelectSummary` (also written as JSON next to ``out_path``).

    Raises:
      ValueError: unknown kernel/selector, ``budget`` < 1 or larger than the pool, empty pool.
      InvalidStructureError: a pool/training frame is unreadable or invalid (names file+frame).
    """
    t_start = time.perf_counter()
    if kernel not in KINDS:
        raise ValueError(f"unknown kernel {kernel!r}; choose from {KINDS}")
    if selector not in SELECTORS:
        raise ValueError(f"unknown selector {selector!r}; choose from {SELECTORS}")
    if int(budget) < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    if chunk_size < 1 or shortlist < 1:
        raise ValueError("chunk_size and shortlist must be >= 1")
    budget = int(budget)
    out_path = Path(out_path)
    timings = {}

    model, params, _ = load_pretrained(str(model_path))
    cutoff, elements = model.config.cutoff, model.config.elements

    t = time.perf_counter()
    n_pool, pool_atoms, pool_edges = scan_sizes(pool_path, cutoff, elements, progress=progress)
    if budget > n_pool:
        raise ValueError(f"budget {budget} exceeds the pool's {n_pool} structures ({pool_path})")
    n_train, train_atoms, train_edges = scan_sizes(train_path, cutoff, elements, progress=progress)
    sizes = GraphSizes(bucket(max(pool_atoms, train_atoms)), bucket(max(pool_edges, train_edges, 1)))
    timings["validate_s"] = time.perf_counter() - t

    kcfg = KernelConfig(kind=kernel, sketch_dim=sketch_dim, num_probes=num_probes,
                        joint_force=joint_force, param_filter=param_filter, seed=seed)
    fmap = make_feature_map(model, kcfg, params)
    featurise = dict(cutoff=cutoff, elements=elements, sizes=sizes, chunk_size=chunk_size)

    t = time.perf_counter()
    train = _concat(list(_feature_chunks(fmap, params, train_path, **featurise)))
    train, weights, scale, w_force = scale_training_features(train, joint_auto=kernel == "joint")
    posterior = fit_posterior([train], fmap.dim, noise_var=noise_var)
    timings["train_features_s"] = time.perf_counter() - t

    t = time.perf_counter()
    pool_chunks = _feature_chunks(fmap, params, pool_path, weights=weights, scale=scale, **featurise)
    target = np.zeros((fmap.dim, fmap.dim)) if selector == "varred" else None
    if target is not None:  # varred's target set is the whole pool: accumulate its moment in the one pass
        pool_chunks = accumulate_second_moment(pool_chunks, target)
    if progress:
        pool_chunks = tqdm(pool_chunks, total=-(-n_pool // chunk_size), desc="score pool", leave=False)
    score_config = ScoreConfig(reduction=reduction)
    m = max(min(shortlist, n_pool), budget)
    short = shortlist_pool(pool_chunks, posterior, m, score_config=score_config)
    timings["score_s"] = time.perf_counter() - t

    t = time.perf_counter()
    selection = select_batch(selector, short.as_chunk(), budget=budget, key=jax.random.PRNGKey(seed),
                             posterior=posterior,
                             train=train if selector in _DISTANCE_SELECTORS else None,
                             score_config=score_config, target_gram=target)
    ids = np.asarray(selection.ids, np.int64)
    scores = np.asarray(selection.scores, np.float64)
    pv = np.asarray(short.values, np.float64)[np.asarray(selection.indices)]
    if len(set(ids.tolist())) != budget or (ids < 0).any():
        raise RuntimeError(f"selector {selector!r} returned invalid or duplicate ids {ids.tolist()}")
    timings["select_s"] = time.perf_counter() - t

    t = time.perf_counter()
    _write_picked(pool_path, out_path, ids, scores, pv)
    timings["write_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start

    summary = SelectSummary(out_path, _summary_path(out_path), n_pool, n_train, budget, kernel,
                            selector, tuple(int(i) for i in ids), tuple(float(s) for s in scores),
                            tuple(float(v) for v in pv), sizes, w_force, timings)
    record = {
        "model": os.fspath(model_path), "pool": os.fspath(pool_path), "train": os.fspath(train_path),
        "out": os.fspath(out_path), "n_pool": n_pool, "n_train": n_train, "budget": budget,
        "kernel": kernel, "selector": selector, "shortlist": m, "sketch_dim": sketch_dim,
        "num_probes": num_probes, "joint_force": joint_force, "param_filter": param_filter,
        "noise_var": noise_var, "reduction": reduction, "chunk_size": chunk_size, "seed": seed,
        "feature_dim": int(fmap.dim), "sizes": dict(sizes._asdict()), "w_force": w_force,
        "feature_scale": scale, "ids": list(summary.ids), "scores": list(summary.scores),
        "pv": list(summary.pv), "timings": timings,
    }
    atomic_write_bytes(summary.summary_path, json.dumps(record, indent=2).encode())
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
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fmt = filetype(str(out_path), read=False) or "extxyz"
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        ase.io.write(tmp, picked, format=fmt)
        os.replace(tmp, out_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --- CLI ------------------------------------------------------------------------------------

def add_select_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``ntkal select`` options to ``parser`` (a subcommand parser)."""
    parser.add_argument("--model", required=True, help="ntkal checkpoint (.msgpack) or a shipped pretrained name")
    parser.add_argument("--pool", required=True, help="candidate structures (any ASE-readable file)")
    parser.add_argument("--train", required=True, help="training structures (define the posterior)")
    parser.add_argument("--budget", required=True, type=int, help="number of structures to pick")
    parser.add_argument("--out", required=True, help="output file for the picks (e.g. picked.extxyz)")
    parser.add_argument("--kernel", default="joint", choices=KINDS)
    parser.add_argument("--selector", default="lcmd", choices=SELECTORS)
    parser.add_argument("--shortlist", type=int, default=200, help="streaming top-m by PV")
    parser.add_argument("--sketch-dim", type=int, default=256)
    parser.add_argument("--num-probes", type=int, default=8)
    parser.add_argument("--joint-force", default="probe", choices=("probe", "exact"))
    parser.add_argument("--param-filter", default="all")
    parser.add_argument("--noise-var", type=float, default=1e-2,
                        help="sigma^2 relative to the mean training kernel trace")
    parser.add_argument("--reduction", default="total", choices=("total", "mean", "max"))
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main_select(args: argparse.Namespace) -> int:
    """Run ``ntkal select`` from parsed arguments; prints a one-line summary; returns 0."""
    summary = select_from_files(
        args.model, args.pool, args.train, args.budget, out_path=args.out, kernel=args.kernel,
        selector=args.selector, shortlist=args.shortlist, sketch_dim=args.sketch_dim,
        num_probes=args.num_probes, joint_force=args.joint_force, param_filter=args.param_filter,
        noise_var=args.noise_var, reduction=args.reduction, chunk_size=args.chunk_size,
        seed=args.seed, progress=not args.no_progress)
    print(f"picked {summary.budget} of {summary.n_pool} pool structures ({summary.kernel} kernel, "
          f"{summary.selector}) in {summary.timings['total_s']:.1f} s -> {summary.out_path} "
          f"(summary {summary.summary_path})")
    return 0
