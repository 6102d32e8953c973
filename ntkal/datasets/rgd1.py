"""Reader for RGD1 (``RGD1_CHNO.h5``): reactant/TS/product geometries, energies only.

Layout: one group per transition state ``MR_<rxn>_<k>`` with ``Rsmiles``,
``Psmiles`` (bytes), ``elements`` [N] (atomic numbers or symbols), ``RG``,
``PG``, ``TSG`` [N, 3] Å, ``R_E``, ``P_E``, ``TS_E`` (Hartree) and the
enthalpies / free energies ``*_H``, ``*_F`` (Hartree). There are **no forces**:
frames carry energy-only labels (``"forces"`` absent from ``atoms.calc.results``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence

import h5py
import numpy as np
from ase import Atoms
from ase.data import atomic_numbers as _Z
from ase.units import Hartree

from ntkal.datasets._hdf5 import open_hdf5
from ntkal.datasets._errors import DatasetFormatError
from ntkal.datasets._frames import attach_labels, check_labels

__all__ = ["read_rgd1"]

_PARTS = {"reactant": ("RG", "R"), "ts": ("TSG", "TS"), "product": ("PG", "P")}


def _text(x) -> str:
    x = x[()] if isinstance(x, h5py.Dataset) else x
    if isinstance(x, np.ndarray):
        x = x.reshape(-1)[0] if x.size else b""
    return x.decode() if isinstance(x, bytes) else str(x)


def _numbers(path, key, raw) -> np.ndarray:
    raw = np.asarray(raw).reshape(-1)
    if raw.dtype.kind in "iu":
        return raw.astype(np.int64)
    try:
        return np.array([_Z[s.decode() if isinstance(s, bytes) else str(s)] for s in raw])
    except KeyError as err:
        raise DatasetFormatError(path, f"{key}/elements", f"unknown element {err}") from None


def read_rgd1(path: str | os.PathLike, *, image_kinds: Sequence[str] = ("reactant", "ts", "product")
              ) -> Iterator[Atoms]:
    """Stream RGD1 structures with energy-only labels (converted Hartree → eV).

    Yields:
      ``ase.Atoms`` with energy (eV) and no forces; ``info``: ``source``,
      ``frame`` (running index in the file), ``key`` (group), ``rxn`` and
      ``system_id`` (``MR_<rxn>``: conformers of a reaction stay together),
      ``image_kind``, ``rsmiles``, ``psmiles``, ``enthalpy``/``free_energy_h``
      (eV) when present.

    Raises:
      DatasetFormatError: naming the file and group on missing keys or bad shapes.
    """
    path = os.fspath(path)
    f = open_hdf5(path)
    frame = 0
    with f:
        for key in f.keys():
            g = f[key]
            m = re.match(r"^(MR_\d+)_\d+$", key)
            rxn = m.group(1) if m else key
            try:
                z = _numbers(path, key, g["elements"][()])
                rs, ps = _text(g["Rsmiles"]), _text(g["Psmiles"])
            except KeyError as err:
                raise DatasetFormatError(path, f"/{key}", f"missing dataset {err}") from None
            for kind in image_kinds:
                gk, ek = _PARTS[kind]
                try:
                    pos = np.asarray(g[gk][()], dtype=np.float64)
                    e = g[f"{ek}_E"][()]
                except KeyError as err:
                    raise DatasetFormatError(path, f"/{key}", f"missing dataset {err}") from None
                if pos.shape != (len(z), 3):
                    raise DatasetFormatError(path, f"/{key}/{gk}",
                                             f"shape {pos.shape}, expected {(len(z), 3)}")
                e, _ = check_labels(path, f"/{key}/{ek}_E", len(z), e, None)
                atoms = attach_labels(Atoms(numbers=z, positions=pos), e * Hartree, None)
                atoms.info.update(source=path, frame=frame, key=f"/{key}", rxn=rxn, system_id=rxn,
                                  image_kind=kind, rsmiles=rs, psmiles=ps)
                for suffix, name in (("H", "enthalpy"), ("F", "free_energy_h")):
                    if f"{ek}_{suffix}" in g:
                        atoms.info[name] = float(np.asarray(g[f"{ek}_{suffix}"][()]).reshape(())) * Hartree
                frame += 1
                yield atoms
