"""One entry point for the generated stand-ins: ``generate`` and ``load_split``.

Datasets are cached under ``cache_dir`` (default ``data_cache/`` in the current
directory) keyed by (generator, size, seed, version); a second call returns the
cached files. Sizes: ``"tiny"`` (seconds; tests), ``"small"``, ``"default"``
(< 5 min on 2 CPU cores), ``"large"`` (≥ 50k structures; scaling runs); a generator
may offer only some of them (``pmechdb_like``: tiny, small, default).
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator

from ase import Atoms

from ntkal.datasets import oc20_like, pmechdb_like, t1x_like
from ntkal.datasets._cache import DEFAULT_CACHE_DIR, cache_key, cached_build
from ntkal.datasets.oc20 import read_oc20_aselmdb, read_oc20_s2ef
from ntkal.datasets.t1x import read_t1x

__all__ = ["generate", "load_split", "dataset_dir", "GENERATORS", "SIZES", "splits_of"]

GENERATORS = ("oc20_like", "t1x_like", "pmechdb_like")
SIZES = ("tiny", "small", "default", "large")


def _spec(name: str):
    if name == "oc20_like":
        return oc20_like.OC20_LIKE_SIZES, oc20_like.generate_oc20_like, oc20_like.VERSION
    if name == "t1x_like":
        return t1x_like.T1X_LIKE_SIZES, t1x_like.generate_t1x_like, t1x_like.VERSION
    if name == "pmechdb_like":
        return (pmechdb_like.PMECHDB_LIKE_SIZES, pmechdb_like.generate_pmechdb_like,
                pmechdb_like.VERSION)
    raise ValueError(f"unknown generator {name!r}; expected one of {GENERATORS}")


def splits_of(name: str) -> tuple[str, ...]:
    """Split names of a generator, including the virtual ``"pretrain"`` split."""
    _spec(name)
    base = {"oc20_like": oc20_like.OC20_SPLITS, "t1x_like": t1x_like.T1X_SPLITS,
            "pmechdb_like": pmechdb_like.PMECHDB_SPLITS}[name]
    return (*base, "pretrain")


def _build(name: str, size: str, seed: int, cache_dir, progress: bool,
           workers: int = 1) -> tuple[str, dict]:
    sizes, fn, version = _spec(name)
    if size not in sizes:
        raise ValueError(f"unknown size {size!r}; expected one of {tuple(sizes)}")
    key = cache_key(name, size, int(seed), version)
    preload = ("tblite.ase",) if name in ("t1x_like", "pmechdb_like") else ()
    with _single_threaded(preload):
        return cached_build(cache_dir, key, lambda d: fn(d, sizes[size], int(seed), progress=progress,
                                                         workers=workers))


@contextlib.contextmanager
def _single_threaded(preload: tuple[str, ...] = ()):
    """Limit BLAS/OpenMP pools to one thread *for the duration of generation only*.

    Small-matrix BLAS threading made EMT relaxations ~3x slower and tblite's
    OpenMP up to ~1000x slower on small molecules (measured). Uses
    ``threadpoolctl`` when installed (scoped, no global mutation), else relies
    on ``OMP_NUM_THREADS=1`` / ``OPENBLAS_NUM_THREADS=1`` set before import.
    Modules in ``preload`` are imported first so their OpenMP runtime is seen.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is None:
        yield
        return
    for mod in preload:
        try:
            importlib.import_module(mod)
        except ImportError:
            pass
    with threadpool_limits(limits=1):
        yield


def dataset_dir(name: str, size: str = "default", seed: int = 0,
                cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR, *, progress: bool = True
                ) -> tuple[str, dict]:
    """Generate (or reuse) a dataset; returns ``(directory, manifest)``."""
    return _build(name, size, seed, cache_dir, progress)


def generate(name: str, size: str = "default", seed: int = 0,
             cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR, *, progress: bool = True,
             workers: int = 1) -> dict[str, tuple[str, ...]]:
    """Generate (or reuse from cache) a stand-in dataset.

    Args:
      name: ``"oc20_like"`` (EMT slabs), ``"t1x_like"`` (GFN2-xTB H-transfer reactions)
        or ``"pmechdb_like"`` (GFN2-xTB template reactions; needs ``rdkit``).
      size: ``"tiny"``, ``"small"``, ``"default"`` or ``"large"``.
      seed: seed of the numpy Generator that draws everything.
      cache_dir: cache root.
      progress: show a tqdm bar while generating.
      workers: generator processes (spawned); the output does not depend on it.

    Returns:
      split name -> absolute file paths. ``oc20_like``: the ``<k>.extxyz.xz``
      chunks (each with its ``<k>.txt.xz`` next to it) followed by the split's
      ``.aselmdb``; ``pretrain`` lists the train files (read it with
      :func:`load_split`, which applies :func:`oc20_like.is_source`).
      ``t1x_like``: ``(transition1x_like.h5,)`` for train/val/test (the split is
      a group inside) and ``(near_equilibrium.h5,)`` for ``pretrain``;
      ``pmechdb_like`` likewise with ``pmechdb_like.h5`` for train/val_id/val/test.
    """
    root, man = _build(name, size, seed, cache_dir, progress, workers)
    j = lambda p: os.path.abspath(os.path.join(root, p))
    if name == "oc20_like":
        out = {s: tuple(j(x) for x, _ in v["s2ef"]) + (j(v["aselmdb"]),) for s, v in man["splits"].items()}
        out["pretrain"] = out["train"]
        return out
    h5 = j(man["files"]["paths"])
    out = {s: (h5,) for s in splits_of(name) if s != "pretrain"}
    out["pretrain"] = (j(man["files"]["near_equilibrium"]),)
    return out


def load_split(name: str, split: str, *, size: str = "default", seed: int = 0,
               cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR, fmt: str = "extxyz",
               progress: bool = True, **reader_kwargs) -> Iterator[Atoms]:
    """Stream one split of a generated dataset (generating it first if needed).

    Args:
      name, size, seed, cache_dir: as in :func:`generate`.
      split: one of :func:`splits_of` ``(name)``. ``"pretrain"`` is the source
        distribution: OC20-like train frames passing :func:`oc20_like.is_source`
        (clean slabs, atomic adsorbates, ID metals); T1x-like near-equilibrium
        MD frames of the train formulas; PMechDB-like: MD frames around the endpoints
        of the train reactions (``info["template"]`` names each frame's template).
      fmt: OC20-like only: ``"extxyz"`` (raw S2EF chunks) or ``"aselmdb"``.
      **reader_kwargs: forwarded to the reader (e.g. ``adsorption_energy=True``
        for OC20-like, ``image_kinds=("path", "ts")`` for T1x-like).

    Yields:
      ``ase.Atoms`` with labels and ``info["split"] = split``.
    """
    if split not in splits_of(name):
        raise ValueError(f"unknown split {split!r} for {name}; expected one of {splits_of(name)}")
    root, man = _build(name, size, seed, cache_dir, progress)
    if name == "oc20_like":
        base = "train" if split == "pretrain" else split
        v = man["splits"][base]
        if fmt == "extxyz":
            it = read_oc20_s2ef([os.path.join(root, x) for x, _ in v["s2ef"]], split=split, **reader_kwargs)
        elif fmt == "aselmdb":
            it = read_oc20_aselmdb(os.path.join(root, v["aselmdb"]), split=split, **reader_kwargs)
        else:
            raise ValueError(f"unknown fmt {fmt!r}; expected 'extxyz' or 'aselmdb'")
        for atoms in it:
            if split != "pretrain" or oc20_like.is_source(atoms):
                atoms.info["split"] = split
                yield atoms
        return
    lot = man["level_of_theory"]
    if split == "pretrain":
        path, h5split = man["files"]["near_equilibrium"], "train"
    else:
        path, h5split = man["files"]["paths"], split
    for atoms in read_t1x(os.path.join(root, path), h5split, level_of_theory=lot, **reader_kwargs):
        atoms.info["split"] = split
        if split == "pretrain":  # near_equilibrium.h5 holds MD frames only
            atoms.info["image_kind"] = "md"
        if name == "pmechdb_like":
            atoms.info["template"] = pmechdb_like.template_of(atoms.info["system_id"])
        yield atoms
