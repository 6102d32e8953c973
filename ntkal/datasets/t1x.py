"""Transition1x HDF5: streaming reader and a writer of the exact layout.

Layout (``Transition1x.h5``)::

  /data/<formula>/<rxn>/atomic_numbers          int   [N]
                        positions               float [M, N, 3]  Å
                        <lot>.energy            float [M]        eV
                        <lot>.forces            float [M, N, 3]  eV/Å
                        reactant/ transition_state/ product/
                            the same four with M = 1, plus int ``hash``
  /train/<formula>  -> SoftLink("/data/<formula>")   (also /val, /test)

``<lot>`` is the level-of-theory prefix (``"wB97x_6-31G(d)"`` in T1x,
``"GFN2-xTB"`` in ntkal's T1x-like stand-in). Splits are by formula, so
``info["system_id"]`` is the formula.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence

import h5py
import numpy as np
from ase import Atoms

from ntkal.datasets._hdf5 import open_hdf5
from ntkal.datasets._errors import DatasetFormatError
from ntkal.datasets._frames import attach_labels, check_labels

__all__ = ["read_t1x", "write_t1x", "T1X_LEVEL_OF_THEORY", "T1X_ATOMIC_ENERGIES",
           "IMAGE_KINDS", "T1xReaction"]

T1X_LEVEL_OF_THEORY = "wB97x_6-31G(d)"
# Per-element reference energies (eV) at ωB97x/6-31G(d), used for atomization energies.
T1X_ATOMIC_ENERGIES: Mapping[int, float] = {
    1: -13.62222753701504, 6: -1029.4130839658328, 7: -1484.8710358098756,
    8: -2041.8396277138045, 9: -2712.8213146878606}
# info["image_kind"] value -> HDF5 subgroup name (None: the path arrays).
IMAGE_KINDS: Mapping[str, str | None] = {
    "path": None, "reactant": "reactant", "ts": "transition_state", "product": "product"}


def _read(path, grp: h5py.Group, key: str) -> np.ndarray:
    try:
        return grp[key][()]
    except KeyError:
        raise DatasetFormatError(path, f"{grp.name}/{key}", "missing dataset") from None
    except OSError as err:  # truncated / corrupt chunk
        raise DatasetFormatError(path, f"{grp.name}/{key}", f"cannot read ({err})") from err


def _frames(path, grp: h5py.Group, lot: str, kind: str, atomic_energies) -> Iterator[Atoms]:
    z = np.asarray(_read(path, grp, "atomic_numbers"), dtype=np.int64).reshape(-1)
    pos = np.asarray(_read(path, grp, "positions"), dtype=np.float64)
    energy = np.asarray(_read(path, grp, f"{lot}.energy"), dtype=np.float64).reshape(-1)
    forces = np.asarray(_read(path, grp, f"{lot}.forces"), dtype=np.float64)
    n = z.shape[0]
    if pos.ndim == 2:
        pos = pos[None]
    if forces.ndim == 2:
        forces = forces[None]
    if pos.shape[1:] != (n, 3):
        raise DatasetFormatError(path, f"{grp.name}/positions",
                                 f"shape {pos.shape} does not match {n} atomic_numbers")
    m = pos.shape[0]
    if energy.shape != (m,) or forces.shape[0] != m:
        raise DatasetFormatError(path, grp.name, f"{m} positions but energy {energy.shape}, "
                                 f"forces {forces.shape}")
    shift = 0.0
    if atomic_energies is not None:
        try:
            shift = float(sum(atomic_energies[int(k)] for k in z))
        except KeyError as err:
            raise DatasetFormatError(path, grp.name, f"no atomic reference energy for Z={err}") from None
    for j in range(m):
        e, f = check_labels(path, f"{grp.name} frame {j}", n, energy[j], forces[j])
        atoms = Atoms(numbers=z, positions=pos[j])
        attach_labels(atoms, e - shift, f)
        atoms.info.update(group_frame=j, image_kind=kind, key=grp.name)
        if atomic_energies is not None:
            atoms.info["total_energy"] = e
        yield atoms


def read_t1x(path: str | os.PathLike, split: str | None = "train", *,
             level_of_theory: str = T1X_LEVEL_OF_THEORY,
             image_kinds: Sequence[str] = ("path",),
             atomic_energies: Mapping[int, float] | None = None) -> Iterator[Atoms]:
    """Stream frames of a Transition1x-format HDF5 file.

    Args:
      path: the ``.h5`` file.
      split: ``"train"``/``"val"``/``"test"`` (groups of SoftLinks) or ``None``
        for everything under ``/data``.
      level_of_theory: dataset prefix, e.g. ``"wB97x_6-31G(d)"``.
      image_kinds: any of ``"path"`` (all kept NEB frames), ``"reactant"``,
        ``"ts"``, ``"product"`` (the M=1 subgroups).
      atomic_energies: per-Z reference energies (eV); if given the energy label
        is the atomization energy E − Σ E_Z and ``info["total_energy"]`` keeps E.
        Use :data:`T1X_ATOMIC_ENERGIES` for the real T1x.

    Yields:
      ``ase.Atoms`` (no cell, no pbc) with energy (eV), forces (N, 3) eV/Å and
      ``info``: ``source``, ``frame`` (running index of this read: with
      ``source`` and ``split`` a unique id), ``group_frame`` (index within the
      HDF5 group), ``key`` (HDF5 group), ``system_id`` = ``formula``,
      ``rxn``, ``image_kind``, ``split``.

    Raises:
      DatasetFormatError: naming the file and the HDF5 key (and frame) on
        missing keys, dangling links, mismatched shapes or NaN labels.
    """
    path = os.fspath(path)
    for k in image_kinds:
        if k not in IMAGE_KINDS:
            raise ValueError(f"unknown image kind {k!r}; expected one of {list(IMAGE_KINDS)}")
    f = open_hdf5(path)
    with f:
        root_key = "data" if split is None else split
        if root_key not in f:
            raise DatasetFormatError(path, f"/{root_key}", "missing group")
        root = f[root_key]
        frame = 0
        for formula in root.keys():
            link = root.get(formula, getlink=True)
            target = link.path if isinstance(link, h5py.SoftLink) else f"{root.name}/{formula}"
            if target not in f:
                raise DatasetFormatError(path, f"/{root_key}/{formula}",
                                         f"dangling link (target {target} missing)")
            fgrp = f[target]  # resolved, so errors name /data/... keys
            for rxn in fgrp.keys():
                rgrp = fgrp[rxn]
                if not isinstance(rgrp, h5py.Group):
                    raise DatasetFormatError(path, rgrp.name, "expected a reaction group")
                for kind in image_kinds:
                    sub = IMAGE_KINDS[kind]
                    if sub is None:
                        grp = rgrp
                    elif sub in rgrp:
                        grp = rgrp[sub]
                    elif kind == "path":
                        continue
                    else:
                        raise DatasetFormatError(path, f"{rgrp.name}/{sub}", "missing group")
                    for atoms in _frames(path, grp, level_of_theory, kind, atomic_energies):
                        atoms.info.update(source=path, frame=frame, system_id=formula,
                                          formula=formula, rxn=rxn)
                        frame += 1
                        if split is not None:
                            atoms.info["split"] = split
                        yield atoms


T1xReaction = Mapping  # documented structure, see write_t1x


def write_t1x(path: str | os.PathLike, reactions: Iterable[T1xReaction],
              splits: Mapping[str, Iterable[str]], *, level_of_theory: str) -> None:
    """Write reactions in the exact Transition1x layout (see module docstring).

    Args:
      path: output ``.h5`` (overwritten; callers write to a temp name and rename).
      reactions: mappings with ``formula`` (str), ``rxn`` (str), ``atomic_numbers``
        (N,), ``positions`` (M, N, 3) Å, ``energy`` (M,) eV, ``forces`` (M, N, 3)
        eV/Å and optional ``reactant``/``transition_state``/``product`` mappings
        with ``positions`` (N, 3), ``energy`` (), ``forces`` (N, 3).
      splits: split name -> formulas; each becomes ``/<split>/<formula>`` SoftLink.
      level_of_theory: the dataset prefix.
    """
    with h5py.File(os.fspath(path), "w") as f:
        data = f.create_group("data")
        for r in reactions:
            g = data.require_group(r["formula"]).create_group(r["rxn"])
            z = np.asarray(r["atomic_numbers"], dtype=np.int64)
            g["atomic_numbers"] = z
            g["positions"] = np.asarray(r["positions"], dtype=np.float64)
            g[f"{level_of_theory}.energy"] = np.asarray(r["energy"], dtype=np.float64)
            g[f"{level_of_theory}.forces"] = np.asarray(r["forces"], dtype=np.float64)
            for sub in ("reactant", "transition_state", "product"):
                if sub not in r:
                    continue
                s = g.create_group(sub)
                pos = np.asarray(r[sub]["positions"], dtype=np.float64).reshape(1, -1, 3)
                s["atomic_numbers"] = z
                s["positions"] = pos
                s[f"{level_of_theory}.energy"] = np.asarray(r[sub]["energy"], dtype=np.float64).reshape(1)
                s[f"{level_of_theory}.forces"] = np.asarray(r[sub]["forces"], dtype=np.float64).reshape(1, -1, 3)
                s["hash"] = np.int64(zlib.crc32(np.round(pos, 4).tobytes()))
        for split, formulas in splits.items():
            sg = f.create_group(split)
            for formula in formulas:
                if formula in data:
                    sg[formula] = h5py.SoftLink(f"/data/{formula}")
