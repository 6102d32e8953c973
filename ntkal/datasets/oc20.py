"""Loaders for OC20 S2EF data: raw ``extxyz.xz`` + ``txt.xz`` and ``.aselmdb``.

Raw S2EF layout (fairchem ``s2ef_*`` downloads): ``<k>.extxyz.xz`` holds up to
5000 frames with ``Properties=species:S:1:pos:R:3:move_mask:L:1:tags:I:1:forces:R:3``
and ``energy``/``free_energy`` in the header (VASP RPBE; eV, eV/Å); line ``j`` of
``<k>.txt.xz`` is ``random<sid>,frame<fid>,<reference_energy>`` for frame ``j``.
Adsorption energy = energy − reference_energy. Tags: 0 subsurface (fixed),
1 surface, 2 adsorbate; ``move_mask`` becomes an :class:`ase.constraints.FixAtoms`.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable, Iterator

from ase import Atoms

from ntkal.datasets._errors import DatasetFormatError
from ntkal.datasets._frames import attach_labels, open_text
from ntkal.datasets.generic import _relabel, iter_extxyz_frames, read_ase_db

__all__ = ["read_oc20_extxyz", "read_oc20_s2ef", "read_oc20_aselmdb", "s2ef_pairs"]

_TXT_RE = re.compile(r"^\s*([^,]+),\s*frame(\d+),\s*([^,\s]+)\s*$")


def _txt_lines(path: str) -> Iterator[tuple[str, int, float]]:
    with open_text(path) as fh:
        i = 0
        while True:
            try:
                line = fh.readline()
            except (EOFError, OSError, ValueError) as err:
                raise DatasetFormatError(path, i, f"cannot read txt line ({err})") from err
            if not line:
                return
            if not line.strip():
                continue
            m = _TXT_RE.match(line)
            if m is None:
                raise DatasetFormatError(path, i, f"malformed S2EF txt line {line.strip()!r}")
            try:
                ref = float(m.group(3))
            except ValueError as err:
                raise DatasetFormatError(path, i, f"bad reference energy {m.group(3)!r}") from err
            yield m.group(1), int(m.group(2)), ref
            i += 1


def _txt_for(extxyz_path: str) -> str | None:
    base = extxyz_path
    for ext in (".xz", ".gz"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    base = base[: -len(".extxyz")] if base.endswith(".extxyz") else base
    for cand in (base + ".txt.xz", base + ".txt", base + ".txt.gz"):
        if os.path.exists(cand):
            return cand
    return None


def read_oc20_extxyz(extxyz_path: str | os.PathLike, txt_path: str | os.PathLike | None = None,
                     *, adsorption_energy: bool = False, split: str | None = None
                     ) -> Iterator[Atoms]:
    """Stream one raw S2EF chunk (``<k>.extxyz.xz`` and its ``<k>.txt.xz``).

    Args:
      extxyz_path: the extxyz(.xz) chunk.
      txt_path: the matching txt(.xz); found next to the extxyz when ``None``.
        Required when ``adsorption_energy=True``.
      adsorption_energy: if True the energy label becomes E − E_ref (eV) and the
        total energy is kept in ``info["total_energy"]``. Forces are unchanged.
      split: stored in ``info["split"]``.

    Yields:
      ``ase.Atoms`` (n_atoms atoms; positions Å; raw forces (n_atoms, 3) eV/Å;
      tags; FixAtoms) with ``info`` keys ``source``, ``frame``, ``system_id``
      (``random<sid>``), ``fid`` (trajectory frame), ``reference_energy`` (eV).

    Raises:
      DatasetFormatError: naming file and frame (truncated xz, bad header,
        NaN labels, extxyz/txt length mismatch).
    """
    extxyz_path = os.fspath(extxyz_path)
    txt = os.fspath(txt_path) if txt_path is not None else _txt_for(extxyz_path)
    if txt is None and adsorption_energy:
        raise DatasetFormatError(extxyz_path, None, "no matching .txt(.xz) with reference energies")
    meta = _txt_lines(txt) if txt is not None else None
    n = 0
    for i, atoms in iter_extxyz_frames(extxyz_path):
        atoms = _relabel(extxyz_path, i, atoms, require_labels=True)
        if meta is not None:
            try:
                sid, fid, ref = next(meta)
            except StopIteration:
                raise DatasetFormatError(txt, i, "txt has fewer lines than the extxyz has frames") from None
            atoms.info.update(system_id=sid, fid=fid, reference_energy=ref)
            if adsorption_energy:
                e = atoms.calc.results["energy"]
                atoms.info["total_energy"] = e
                attach_labels(atoms, e - ref, atoms.calc.results.get("forces"))
        else:
            atoms.info["system_id"] = str(atoms.info.get("system_id", atoms.info.get("sid", f"{extxyz_path}#{i}")))
        atoms.info["source"] = extxyz_path
        atoms.info["frame"] = i
        if split is not None:
            atoms.info["split"] = split
        n += 1
        yield atoms
    if meta is not None and next(meta, None) is not None:
        raise DatasetFormatError(txt, n, "txt has more lines than the extxyz has frames")


def s2ef_pairs(directory: str | os.PathLike) -> list[tuple[str, str | None]]:
    """Sorted ``(extxyz, txt)`` chunk pairs in an S2EF directory (``0, 1, …, 10``)."""
    files = glob.glob(os.path.join(os.fspath(directory), "*.extxyz*"))
    key = lambda p: (int(m.group(1)) if (m := re.match(r"(\d+)\.", os.path.basename(p))) else 1 << 60, p)
    return [(p, _txt_for(p)) for p in sorted(files, key=key)]


def read_oc20_s2ef(paths: str | os.PathLike | Iterable[str], *, adsorption_energy: bool = False,
                   split: str | None = None) -> Iterator[Atoms]:
    """Stream every chunk of an S2EF directory (or an explicit list of extxyz files)."""
    if isinstance(paths, (str, os.PathLike)) and os.path.isdir(paths):
        pairs = s2ef_pairs(paths)
        if not pairs:
            raise DatasetFormatError(paths, None, "no *.extxyz(.xz) files in directory")
    elif isinstance(paths, (str, os.PathLike)):
        pairs = [(os.fspath(paths), None)]
    else:
        pairs = [(os.fspath(p), None) for p in paths]
    for xyz, txt in pairs:
        yield from read_oc20_extxyz(xyz, txt, adsorption_energy=adsorption_energy, split=split)


def read_oc20_aselmdb(path: str | os.PathLike, selection=None, *, adsorption_energy: bool = False,
                      split: str | None = None) -> Iterator[Atoms]:
    """Stream an OC20 ``.aselmdb`` (fairchem v2; needs ``ase-db-backends``).

    The system id is taken from ``sid`` (key-value pairs or ``data``), prefixed
    with ``random`` as in the raw txt files when it is an integer; ``fid`` and the
    reference energy (``ref_energy`` / ``reference_energy``) likewise.
    """
    for atoms in read_ase_db(path, selection, split=split, require_labels=True):
        info = atoms.info
        sid = info.get("sid", info.get("system_id"))
        if sid is not None:
            info["system_id"] = f"random{sid}" if isinstance(sid, int) else str(sid)
        ref = info.get("reference_energy", info.get("ref_energy"))
        if ref is not None:
            info["reference_energy"] = float(ref)
        if adsorption_energy:
            if ref is None:
                raise DatasetFormatError(path, info["frame"], "row has no reference energy")
            e = atoms.calc.results["energy"]
            info["total_energy"] = e
            attach_labels(atoms, e - float(ref), atoms.calc.results.get("forces"))
        yield atoms
