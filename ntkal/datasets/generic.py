"""Loaders for generic formats: (compressed) extxyz and ASE databases.

Every loader is a generator of :class:`ase.Atoms` with labels on a
:class:`~ase.calculators.singlepoint.SinglePointCalculator` (energy in eV,
raw forces ``(n_atoms, 3)`` in eV/Å, possibly absent) and metadata in
``atoms.info``: ``"source"`` (file path), ``"frame"`` (index within the file),
``"system_id"`` (the unit splits are made by) and ``"split"`` when known.
"""

from __future__ import annotations

import io
import lzma
import os
from collections.abc import Iterator

import ase.db
import ase.io
from ase import Atoms

from ntkal.datasets._errors import DatasetFormatError
from ntkal.datasets._frames import attach_labels, check_labels, open_text

__all__ = ["read_extxyz", "read_ase_db", "iter_extxyz_frames"]

# Errors a truncated or malformed text / xz stream can raise inside ASE's parser.
_PARSE_ERRORS = (lzma.LZMAError, EOFError, ValueError, IndexError, KeyError,
                 StopIteration, TypeError, OSError)


def iter_extxyz_frames(path: str | os.PathLike) -> Iterator[tuple[int, Atoms]]:
    """Yield ``(frame_index, atoms)`` from an extxyz file (``.xz``/``.gz`` ok).

    Truly streaming: the file is read frame by frame (ASE's ``iread`` first
    scans the whole file, which means decompressing an ``.xz`` twice), and each
    frame's lines are parsed on their own, so errors point at the right frame.

    Raises:
      DatasetFormatError: naming the file and frame on truncation or bad syntax.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DatasetFormatError(path, None, "file does not exist")
    with open_text(path) as fh:
        i = 0
        while True:
            try:
                head = fh.readline()
                while head and not head.strip():
                    head = fh.readline()
                if not head:
                    return
                try:
                    n = int(head.strip())
                except ValueError:
                    raise DatasetFormatError(
                        path, i, f"expected an atom count, got {head.strip()[:40]!r}") from None
                lines = [head]
                for _ in range(n + 1):
                    line = fh.readline()
                    if not line:
                        raise DatasetFormatError(
                            path, i, f"file ends inside the frame ({len(lines) - 2} of {n} atoms)")
                    lines.append(line)
                atoms = ase.io.read(io.StringIO("".join(lines)), format="extxyz")
            except DatasetFormatError:
                raise
            except _PARSE_ERRORS as err:
                raise DatasetFormatError(
                    path, i, f"cannot parse extxyz frame ({type(err).__name__}: {err})"
                ) from err
            yield i, atoms
            i += 1


def _relabel(path, i, atoms: Atoms, *, require_labels: bool) -> Atoms:
    """Validate the labels ASE parsed and re-attach them (raw forces)."""
    res = dict(atoms.calc.results) if atoms.calc is not None else {}
    energy = res.get("energy", res.get("free_energy"))
    if energy is None:
        if require_labels:
            raise DatasetFormatError(path, i, "frame has no energy label")
        atoms.calc = None
        return atoms
    e, f = check_labels(path, i, len(atoms), energy, res.get("forces"))
    return attach_labels(atoms, e, f)


def read_extxyz(path: str | os.PathLike, *, split: str | None = None,
                require_labels: bool = False) -> Iterator[Atoms]:
    """Stream labelled frames from a generic extxyz file.

    Args:
      path: ``.extxyz``/``.xyz`` file, optionally ``.xz``/``.gz``/``.bz2``.
      split: value stored in ``info["split"]`` (if not already in the file).
      require_labels: raise if a frame lacks an energy.

    Yields:
      ``ase.Atoms`` with ``info["source"]``, ``info["frame"]`` and
      ``info["system_id"]`` (taken from the file's ``system_id``/``sid`` key,
      otherwise ``"<file>#<frame>"``: every frame its own system).
    """
    path = os.fspath(path)
    for i, atoms in iter_extxyz_frames(path):
        atoms = _relabel(path, i, atoms, require_labels=require_labels)
        atoms.info.setdefault("system_id", str(atoms.info.get("sid", f"{path}#{i}")))
        atoms.info["system_id"] = str(atoms.info["system_id"])
        atoms.info["source"] = path
        atoms.info["frame"] = i
        if split is not None:
            atoms.info.setdefault("split", split)
        yield atoms


def read_ase_db(path: str | os.PathLike, selection=None, *, split: str | None = None,
                require_labels: bool = False, **select_kwargs) -> Iterator[Atoms]:
    """Stream rows of an ASE database (``.db``, ``.json``, ``.aselmdb``).

    ``.aselmdb`` needs the ``ase-db-backends`` package. Row key-value pairs and
    the row's ``data`` dict (when it holds only scalars/strings) are copied to
    ``atoms.info``; ``info["frame"]`` is the 0-based row position, ``info["row_id"]``
    the db id.

    Raises:
      DatasetFormatError: missing file, unreadable rows, bad labels.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DatasetFormatError(path, None, "file does not exist")
    try:
        db = ase.db.connect(path)
        rows = db.select(selection, **select_kwargs)
    except Exception as err:  # backend-specific errors (lmdb, sqlite, json)
        raise DatasetFormatError(path, None, f"cannot open ASE db ({err})") from err
    i = 0
    while True:
        try:
            row = next(rows)
            atoms = row.toatoms()
            kvp = dict(row.key_value_pairs)
            data = dict(row.data) if row.get("data") is not None else {}
        except StopIteration:
            return
        except Exception as err:  # noqa: BLE001 - wrap any backend error
            raise DatasetFormatError(path, i, f"cannot read row ({type(err).__name__}: {err})") from err
        atoms.info.update({k: v for k, v in data.items() if isinstance(v, (str, int, float, bool))})
        atoms.info.update(kvp)
        atoms = _relabel(path, f"row {row.id}", atoms, require_labels=require_labels)
        atoms.info.setdefault("system_id", str(atoms.info.get("sid", f"{path}#{i}")))
        atoms.info["system_id"] = str(atoms.info["system_id"])
        atoms.info["source"] = path
        atoms.info["frame"] = i
        atoms.info["row_id"] = int(row.id)
        if split is not None:
            atoms.info.setdefault("split", split)
        yield atoms
        i += 1
