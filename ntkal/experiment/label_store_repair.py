"""Check, export and rebuild a sweep's label store (``ntkal labels check|export|rebuild``).

The label store (:class:`~ntkal.labelling.LabelStore`, ``<out>/labels.db``) holds the most
expensive data of a run. Every point also writes the labels it acquired to
``<out>/points/<point>/labelled.extxyz`` after each round, so a store that was damaged (a full
disk, a bad copy) can be rebuilt from them: :func:`rebuild_store` reads the sweep's config, matches
every labelled frame to the exact pool frame it was computed for (the extxyz text keeps 8
decimals; the store is keyed by the exact structure, :func:`~ntkal.labelling.structure_hash`) and
stores its energy and forces under the point's oracle. A rerun then finds every label again and
computes none of them. Lost for good: failures (they are retried) and labels of a round that was
cut short before its ``labelled.extxyz`` was written (they are computed again).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import NamedTuple

__all__ = ["StoreCheck", "check_store", "export_store", "RebuiltStore", "rebuild_store"]


class StoreCheck(NamedTuple):
    """What a readable store holds.

    Attributes:
      path: the store file.
      counts: oracle fingerprint → ``{"labelled": n, "failed": n}``.
    """

    path: str
    counts: dict

    def lines(self) -> list[str]:
        total = sum(c["labelled"] for c in self.counts.values())
        failed = sum(c["failed"] for c in self.counts.values())
        out = [f"{self.path}: readable, {total} label(s) and {failed} failure(s) of {len(self.counts)} oracle(s)"]
        out += [f"  oracle {fp}: {c['labelled']} label(s), {c['failed']} failure(s)" for fp, c in self.counts.items()]
        return out


def check_store(path: str | os.PathLike) -> StoreCheck:
    """Check that the store at ``path`` reads (:meth:`~ntkal.labelling.LabelStore.check`) and count it.

    Raises:
      FileNotFoundError: no such file.
      LabelStoreError: the file is damaged or not a store.
    """
    from ntkal.labelling import LabelStore

    if not Path(path).is_file():
        raise FileNotFoundError(f"no such label store: {path}")
    store = LabelStore(path)
    store.check()
    return StoreCheck(store.path, {fp: store.counts(fp) for fp in store.fingerprints()})


def export_store(path: str | os.PathLike, out: str | os.PathLike, fingerprint: str | None = None) -> int:
    """Write every label of the store (of one oracle, or all) to ``out`` (any ASE format; written
    atomically); returns how many."""
    import ase.io
    from ase.io.formats import filetype

    from ntkal.labelling import LabelStore
    from ntkal.models.checkpoint import atomic_path

    check_store(path)
    frames = list(LabelStore(path).labelled(fingerprint))
    with atomic_path(out) as tmp:
        ase.io.write(tmp, frames, format=filetype(str(out), read=False) or "extxyz")
    return len(frames)


class RebuiltStore(NamedTuple):
    """What :func:`rebuild_store` did to one store.

    Attributes:
      path: the store file.
      restored: labels written (distinct structures per oracle).
      files: ``labelled.extxyz`` files read.
      unmatched: labelled frames that match no pool frame of their point (not restored).
      moved_aside: where the damaged store went, or ``None``.
    """

    path: str
    restored: int
    files: int
    unmatched: int
    moved_aside: str | None


def rebuild_store(config_path: str | os.PathLike, *, out: str | os.PathLike | None = None,
                  progress: bool = False) -> list[RebuiltStore]:
    """Rebuild the label store(s) of the sweep at ``config_path`` from its points' ``labelled.extxyz``.

    A damaged store is first moved aside (with its ``-wal``/``-shm`` files) to
    ``<name>.damaged-<time>``; a readable one is completed in place (labels already there are
    overwritten with the same values).

    Args:
      config_path: the sweep config the run was made with.
      out: its output folder, when it was given as ``ntkal run --out`` (default: the config's).
      progress: progress bars while reading the inputs.

    Returns:
      One :class:`RebuiltStore` per store of the sweep (none for stored-label runs).
    """
    import ase.io

    from ntkal.data.overlap import FrameIndex, frame_of
    from ntkal.experiment.config import load_sweep
    from ntkal.experiment.run import (_inputs_key, _label_store, load_inputs, oracle_config,
                                      shared_round0_fingerprint)
    from ntkal.labelling import LabelStore, LabelStoreError
    from ntkal.labelling.store import structure_hash, with_labels

    points = load_sweep(config_path)
    out_dir = Path(out or points[0].out)
    stores: dict[str, list] = {}
    for point in points:
        spec = oracle_config(point)
        if spec is not None:
            stores.setdefault(_label_store(spec, out_dir).path, []).append((spec.fingerprint(), point))
    pools: dict = {}
    report = []
    for path, members in stores.items():
        moved = None
        try:
            LabelStore(path).check()
        except LabelStoreError:
            moved = _move_aside(path)
        store = LabelStore(path)
        done: set = set()
        files = unmatched = 0
        for fingerprint, point in members:
            key = _inputs_key(point)
            if key not in pools:
                pools[key] = FrameIndex()
                for atoms in load_inputs(point, progress=progress).pool:
                    pools[key].add(frame_of(atoms), atoms)
            exact = pools[key]
            points_dir = out_dir / "points"
            folders = [points_dir / f"{point.label}-seed{point.loop.seed}",
                       points_dir / f"_round0-seed{point.loop.seed}-{shared_round0_fingerprint(point)}"]
            for folder in folders:
                labelled = folder / "labelled.extxyz"
                if not labelled.is_file() or labelled.stat().st_size == 0:  # nothing labelled yet
                    continue
                files += 1
                for frame in ase.io.iread(labelled, index=":"):
                    atoms = exact.find(frame_of(frame))
                    if atoms is None:
                        unmatched += 1
                        continue
                    item = (structure_hash(atoms), fingerprint)
                    if item in done:
                        continue
                    energy = frame.get_potential_energy()
                    forces = frame.calc.results["forces"]
                    store.put(with_labels(atoms, energy, forces, frame.info), fingerprint)
                    done.add(item)
        report.append(RebuiltStore(path, len(done), files, unmatched, moved))
    return report


def _move_aside(path: str) -> str:
    """Rename a damaged store and its SQLite side files to ``<path>.damaged-<time>``; never deletes."""
    target = f"{path}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, target + suffix)
    return target
