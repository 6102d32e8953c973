"""One reader for a user's structure files, by format: ``read_structure_file(spec)``.

A *file spec* is a path, optionally with ``:group`` after an HDF5 file (``t1x.h5:train``):

* ``*.aselmdb`` — OC20 ASE-LMDB (:func:`ntkal.datasets.read_oc20_aselmdb`; needs
  ``ase-db-backends``);
* ``*.db`` / ``*.json`` ASE databases (:func:`ntkal.datasets.read_ase_db`);
* ``*.h5`` / ``*.hdf5`` — Transition1x layout (a ``/data`` group; ``:train`` etc. picks a
  split, default everything; the level-of-theory prefix is read from the first reaction
  group when it holds exactly one ``<prefix>.energy``, e.g. ``GFN2-xTB`` in ntkal's
  generated stand-ins, else T1x's ``wB97x_6-31G(d)``) or RGD1 layout (one group per
  reaction; energy-only labels);
* ``*.extxyz[.xz|.gz]`` with an OC20 ``*.txt[.xz]`` beside it — OC20 S2EF chunk (tags and
  system ids from the txt);
* anything else ASE can read (extxyz, xyz, traj, VASP OUTCAR/vasprun, CIF, ...) through
  ``ase.io.iread``.

Every frame gets ``info["source"]`` (the file) and ``info["frame"]`` (its 0-based index), so
later validation errors name both. Labels (energy eV, forces eV/Å) are kept when the file has
them.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterator

import ase
import ase.io

from ntkal.datasets._errors import DatasetFormatError
from ntkal.file_checks import input_file_problem

__all__ = ["read_structure_file", "read_ase_frames", "iter_ase_frames", "split_spec", "file_spec_problem", "file_sha256",
           "HDF5_SUFFIXES"]

HDF5_SUFFIXES = (".h5", ".hdf5")


def split_spec(spec: str | os.PathLike) -> tuple[str, str | None]:
    """``"file.h5:train"`` → ``("file.h5", "train")``; other specs → ``(path, None)``."""
    spec = os.fspath(spec)
    if os.path.exists(spec):
        return spec, None
    path, sep, group = spec.rpartition(":")
    if sep and path.lower().endswith(HDF5_SUFFIXES) and group:
        return path, group
    return spec, None


def file_sha256(spec: str | os.PathLike) -> str:
    """Hex sha256 of the bytes of the file behind a file spec (``path`` or ``path.h5:group``)."""
    digest = hashlib.sha256()
    with open(split_spec(spec)[0], "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_t1x(path: str) -> bool:
    import h5py

    with h5py.File(path, "r") as fh:
        return "data" in fh


def _t1x_level_of_theory(path: str) -> str:
    """The ``<prefix>`` of the first reaction group's ``<prefix>.energy`` (if it has exactly
    one), else Transition1x's ``wB97x_6-31G(d)``."""
    import h5py

    from ntkal.datasets.t1x import T1X_LEVEL_OF_THEORY

    with h5py.File(path, "r") as fh:
        for formula in fh["data"].values():
            for rxn in formula.values():
                if isinstance(rxn, h5py.Group):
                    found = [k[: -len(".energy")] for k in rxn.keys() if k.endswith(".energy")]
                    return found[0] if len(found) == 1 else T1X_LEVEL_OF_THEORY
    return T1X_LEVEL_OF_THEORY


def read_ase_frames(path: str | os.PathLike) -> Iterator[ase.Atoms]:
    """Stream the frames of any ASE-readable file lazily (``ase.io.iread``); an empty file yields
    nothing.

    Raises:
      DatasetFormatError: naming the file and the frame that cannot be parsed.
    """
    for _, atoms in iter_ase_frames(path):
        yield atoms


#: Plain-text suffixes whose frames :func:`iter_ase_frames` can step over without parsing
#: (ASE reads both with its extxyz reader).
XYZ_SUFFIXES = (".extxyz", ".xyz")


def iter_ase_frames(path: str | os.PathLike, keep: Callable[[int], bool] | None = None
                    ) -> Iterator[tuple[int, ase.Atoms]]:
    """``(index, frame)`` for every frame of an ASE-readable file whose 0-based index ``keep``
    accepts (default: every frame), in file order.

    In a plain ``.extxyz``/``.xyz`` file a frame that is not kept is stepped over line by line
    (its atom count, then that many lines plus the comment) and never parsed, so a process that
    keeps every P-th frame parses 1/P of the file (:func:`ntkal.select.read_structures`); the
    kept frames are parsed by ASE's extxyz reader from their own lines, exactly as
    ``ase.io.iread`` parses them. Other formats are parsed frame by frame and the others dropped.

    Raises:
      DatasetFormatError: naming the file and the frame that cannot be read.
    """
    path = os.fspath(path)
    if os.path.getsize(path) == 0:
        return
    if keep is not None and path.lower().endswith(XYZ_SUFFIXES):
        yield from _step_xyz_frames(path, keep)
        return
    frames = ase.io.iread(path, index=":")
    frame = 0
    while True:
        try:
            atoms = next(frames)
        except StopIteration:
            return
        except Exception as err:  # ase raises many parser error types
            raise DatasetFormatError(path, frame, f"cannot read: {err}") from err
        if keep is None or keep(frame):
            yield frame, atoms
        frame += 1


def _step_xyz_frames(path: str, keep: Callable[[int], bool]) -> Iterator[tuple[int, ase.Atoms]]:
    """:func:`iter_ase_frames` for a plain (ext)xyz file: frame boundaries from the atom-count
    lines (a blank line where a count belongs ends the file, as in ASE's reader)."""
    def truncated(frame: int, n_atoms: int) -> DatasetFormatError:
        return DatasetFormatError(path, frame, f"cannot read: the file ends inside the frame ({n_atoms} atoms "
                                               f"announced)")

    with open(path) as fh:
        frame = 0
        while True:
            first = fh.readline()
            if not first.strip():
                return
            try:
                n_atoms = int(first)
            except ValueError:
                raise DatasetFormatError(path, frame, f"cannot read: expected the atom count of a frame, got "
                                                      f"{first.strip()[:60]!r}") from None
            if keep(frame):
                lines = [first] + [fh.readline() for _ in range(n_atoms + 1)]
                if not lines[-1]:
                    raise truncated(frame, n_atoms)
                try:
                    atoms = ase.io.read(io.StringIO("".join(lines)), format="extxyz")
                except Exception as err:  # ase raises many parser error types
                    raise DatasetFormatError(path, frame, f"cannot read: {err}") from err
                yield frame, atoms
            else:
                for _ in range(n_atoms + 1):
                    if not fh.readline():
                        raise truncated(frame, n_atoms)
            frame += 1


def read_structure_file(spec: str | os.PathLike) -> Iterator[ase.Atoms]:
    """Stream the structures of one file spec (see the module docstring).

    Yields:
      ``ase.Atoms`` with ``info["source"]`` and ``info["frame"]``; labels when present.

    Raises:
      FileNotFoundError: no such file.
      DatasetFormatError: a frame or group that cannot be read (names file and frame).
    """
    from ntkal import datasets

    path, group = split_spec(spec)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    lower = path.lower()
    if lower.endswith(HDF5_SUFFIXES):
        if _is_t1x(path):
            frames = datasets.read_t1x(path, group, level_of_theory=_t1x_level_of_theory(path))
        elif group is not None:
            raise DatasetFormatError(path, None, f"':{group}' selects a split of a Transition1x file; "
                                                 f"this HDF5 file has no /data group (RGD1 layout?)")
        else:
            frames = datasets.read_rgd1(path)
    elif lower.endswith(".aselmdb"):
        frames = datasets.read_oc20_aselmdb(path)
    elif lower.endswith((".db", ".json")):
        frames = datasets.read_ase_db(path)
    elif ".extxyz" in lower and _oc20_txt(path):
        frames = datasets.read_oc20_extxyz(path)
    else:
        frames = read_ase_frames(path)
    for frame, atoms in enumerate(frames):
        atoms.info["source"] = os.fspath(spec)
        atoms.info["frame"] = frame
        yield atoms


def _oc20_txt(path: str) -> bool:
    from ntkal.datasets.oc20 import _txt_for

    return _txt_for(path) is not None


def file_spec_problem(spec: str) -> str | None:
    """Why ``spec`` cannot be read (``None`` if it looks readable); cheap, imports no JAX."""
    path, group = split_spec(spec)
    if not os.path.exists(path):
        return f"no such file: {path}"
    if not os.path.isfile(path):
        return f"{path} is not a file"
    if not os.access(path, os.R_OK):
        return f"{path} is not readable"
    lower = path.lower()
    if lower.endswith(HDF5_SUFFIXES + (".aselmdb", ".db", ".json")):
        return None
    if os.path.getsize(path) == 0:
        return f"{path} is empty"
    return input_file_problem(path)
