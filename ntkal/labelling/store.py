"""A label store: every label an oracle ever produced, keyed by structure and oracle.

:class:`LabelStore` is an ``ase.db`` SQLite file (one committed transaction per write, so a
label is on disk before :meth:`LabelStore.put` returns and a crash loses nothing stored). The
file is kept in SQLite's write-ahead-log mode: a write goes to ``labels.db-wal`` first and
reaches the store only when its commit is complete, so a process killed mid-write leaves the
store as it was before that write (the log is folded back in, and removed, when the last
connection closes). A store that cannot be read (truncated by a full disk or a bad copy, or not
a store at all) is a :class:`LabelStoreError` naming the file and how to recover: the labels of
finished rounds are also in every point's ``labelled.extxyz``, and ``ntkal labels rebuild
CONFIG.toml`` (:func:`ntkal.labelling.maintenance.rebuild_store`) puts them back.
A record is keyed by :func:`structure_hash` of the input structure together with the oracle's
:meth:`~ntkal.labelling.OracleConfig.fingerprint`, so two oracles never share labels. The key
is the row's ``unique_id`` (indexed); rows also carry the searchable keys ``structure``,
``fingerprint`` and ``status`` (``"ok"`` / ``"failed"``), so ``ase db labels.db status=failed``
lists failures. Only one process (the main one) should write.

Stored per labelled structure: numbers, positions (Å), cell, pbc, tags, constraints, initial
charges/magnetic moments, energy (eV) and raw forces ``(n_atoms, 3)`` (eV/Å) bit-exactly, and
``atoms.info`` (``data["info"]``; its values must be JSON-encodable by ``ase.io.jsonio``).
Failures store the structure, the error text and the attempts (``data``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import numbers
import os
import sqlite3
from collections.abc import Iterator, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

__all__ = ["LabelStore", "LabelStoreError", "FailureRecord", "structure_hash", "with_labels",
           "HASHED_INFO_KEYS", "LABELLING_INFO_KEYS"]

#: ``atoms.info`` keys that change what a calculator computes, hence part of the hash.
HASHED_INFO_KEYS = ("charge", "spin", "multiplicity")
#: ``atoms.info`` keys the oracle writes (:class:`~ntkal.datasets.oracles.Oracle`); carried
#: from a stored label to the structure it is returned for.
LABELLING_INFO_KEYS = ("oracle", "labelling_attempt", "labelling_flag")


def _le_bytes(x, dtype: str) -> bytes:
    a = np.ascontiguousarray(x, dtype=dtype)
    if dtype == "<f8":
        a = a + 0.0  # -0.0 → 0.0
    return np.asarray(a.shape, dtype="<i8").tobytes() + a.tobytes()


def structure_hash(atoms: Atoms) -> str:
    """sha256 (64 hex digits) of what a calculator sees of ``atoms``.

    Hashed: atomic numbers, positions (Å), cell (Å), pbc, initial charges and initial magnetic
    moments (zeros when absent; some calculators read their sums as charge and spin), and the
    ``info`` keys :data:`HASHED_INFO_KEYS` when present (numbers as float, so ``0 == 0.0``).
    Floats are hashed *exactly* (little-endian float64 bytes; only ``-0.0`` is folded into
    ``0.0``): a structure moved by 1e-12 Å is a new structure. Not hashed: tags, masses,
    momenta, constraints (the stored forces are raw), other ``info``.
    """
    h = hashlib.sha256(b"ntkal-structure-v1")
    h.update(_le_bytes(atoms.numbers, "<i8"))
    h.update(_le_bytes(atoms.positions, "<f8"))
    h.update(_le_bytes(atoms.cell.array, "<f8"))
    h.update(_le_bytes(atoms.pbc, "?"))
    h.update(_le_bytes(atoms.get_initial_charges(), "<f8"))
    h.update(_le_bytes(atoms.get_initial_magnetic_moments(), "<f8"))
    for key in HASHED_INFO_KEYS:
        if key in atoms.info:
            v = atoms.info[key]
            text = repr(float(v)) if isinstance(v, numbers.Real) and not isinstance(v, bool) else repr(v)
            h.update(f"|{key}={text}".encode())
    return h.hexdigest()


def with_labels(atoms: Atoms, energy: float, forces: np.ndarray, info: dict | None = None) -> Atoms:
    """A copy of ``atoms`` (constraints, tags, info kept) carrying ``energy`` (eV) and raw
    ``forces`` ``(n_atoms, 3)`` (eV/Å) in a SinglePointCalculator; ``info`` entries of
    :data:`LABELLING_INFO_KEYS` are copied over."""
    out = atoms.copy()
    forces = np.array(forces, dtype=np.float64)
    out.calc = SinglePointCalculator(out, energy=float(energy), free_energy=float(energy), forces=forces)
    for key in LABELLING_INFO_KEYS:
        if info and key in info:
            out.info[key] = info[key]
    return out


@dataclasses.dataclass(frozen=True)
class FailureRecord:
    """A structure the oracle ``fingerprint`` could not label.

    Attributes:
      structure: :func:`structure_hash` of the input.
      fingerprint: the oracle's fingerprint.
      error: the last error text.
      attempts: names of the retry steps tried, in order.
    """
    structure: str
    fingerprint: str
    error: str
    attempts: tuple[str, ...]


class LabelStoreError(ValueError):
    """The label store file cannot be read.

    Attributes:
      path: the store file.
      reason: what SQLite said.
    """

    def __init__(self, path: str, reason: str, recovery: str | None = None):
        self.path, self.reason = path, reason
        recovery = recovery or ("rebuild it from the runs' labelled.extxyz files with `ntkal labels rebuild "
                                "CONFIG.toml` (it moves the damaged file aside first)")
        super().__init__(f"{path}: the label store cannot be read ({reason}); {recovery}")


@contextlib.contextmanager
def _readable(path: str):
    """Turn SQLite's errors about the file into :class:`LabelStoreError` naming ``path``."""
    try:
        yield
    except sqlite3.DatabaseError as err:  # "database disk image is malformed", "file is not a database"
        raise LabelStoreError(path, str(err)) from err


def _key(structure: str, fingerprint: str) -> str:
    return f"{structure}-{fingerprint}"


def storable_info(info: dict) -> dict:
    """``atoms.info`` in a form ``ase.db`` can store: numpy scalars become Python numbers
    (ASE's extxyz reader returns integer fields as ``numpy.int64``), nested dicts and lists are
    converted recursively, arrays are kept, anything else becomes its ``str``."""
    def convert(value):
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, (str, int, float, bool, np.ndarray)) or value is None:
            return value
        if isinstance(value, dict):
            return {str(k): convert(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        return str(value)

    return {str(k): convert(v) for k, v in info.items()}


class LabelStore:
    """Labels and failures per (structure, oracle fingerprint) in an ``ase.db`` SQLite file.

    Args:
      path: the SQLite file (created with its parent folder on the first write).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._db = None

    def __repr__(self) -> str:
        return f"LabelStore({self.path!r})"

    @property
    def db(self):
        """The ``ase.db`` connection, opened on first use after :meth:`check` (a damaged file is
        a :class:`LabelStoreError`) and switched to write-ahead logging."""
        if self._db is None:
            import ase.db

            self.check()
            with _readable(self.path):
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                with contextlib.closing(sqlite3.connect(self.path, timeout=20)) as con:
                    con.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the file
            # SQLite locks the file itself; ASE's extra lock file (created and deleted around each
            # write) would be left behind by a killed writer and make the next write wait forever
            self._db = ase.db.connect(self.path, type="db", append=True, use_lock_file=False)
        return self._db

    def check(self) -> None:
        """Raise :class:`LabelStoreError` unless the file is absent or a readable SQLite
        database (SQLite's ``quick_check``: every page and index entry is read once)."""
        if not os.path.exists(self.path):
            return
        with _readable(self.path), contextlib.closing(sqlite3.connect(self.path, timeout=20)) as con:
            result = con.execute("PRAGMA quick_check").fetchall()
            if result != [("ok",)]:
                problems = [line.strip() for r in result for line in str(r[0]).splitlines()
                            if line.strip() and not line.startswith("***")]
                more = f" and {len(problems) - 1} more problem(s)" if len(problems) > 1 else ""
                raise LabelStoreError(self.path, f"damaged: {problems[0] if problems else result[0][0]}{more}")

    def _row(self, structure: str, fingerprint: str):
        if not os.path.exists(self.path):
            return None
        with _readable(self.path):
            for row in self.db.select(unique_id=_key(structure, fingerprint), limit=1):
                return row
        return None

    # -- reading -------------------------------------------------------------------------------
    def get(self, atoms: Atoms, fingerprint: str) -> Atoms | None:
        """``atoms`` labelled by the oracle ``fingerprint`` (see :func:`with_labels`), or None
        if there is no label (never computed, or failed: see :meth:`failure`)."""
        row = self._row(structure_hash(atoms), fingerprint)
        if row is None or row.get("status") != "ok":
            return None
        return with_labels(atoms, row.energy, row.forces, row.data.get("info"))

    def failure(self, atoms: Atoms, fingerprint: str) -> FailureRecord | None:
        """The recorded failure of ``atoms`` under ``fingerprint``, or None."""
        structure = structure_hash(atoms)
        row = self._row(structure, fingerprint)
        if row is None or row.get("status") != "failed":
            return None
        return FailureRecord(structure, fingerprint, str(row.data.get("error", "")),
                             tuple(row.data.get("attempts", ())))

    def labelled(self, fingerprint: str | None = None) -> Iterator[Atoms]:
        """Every stored labelled structure (of one oracle, or all), as stored: constraints,
        tags, ``info``, energy (eV) and raw forces (eV/Å). A training set export."""
        if not os.path.exists(self.path):
            return
        query = {"status": "ok"} if fingerprint is None else {"status": "ok", "fingerprint": fingerprint}
        with _readable(self.path):
            for row in self.db.select(**query):
                atoms = row.toatoms()
                atoms.calc = None
                atoms.info = dict(row.data.get("info", {}))
                yield with_labels(atoms, row.energy, row.forces, atoms.info)

    def counts(self, fingerprint: str | None = None) -> dict[str, int]:
        """``{"labelled": n_ok, "failed": n_failed}`` (of one oracle, or all)."""
        if not os.path.exists(self.path):
            return {"labelled": 0, "failed": 0}
        fp = {} if fingerprint is None else {"fingerprint": fingerprint}
        with _readable(self.path):
            return {"labelled": self.db.count(status="ok", **fp), "failed": self.db.count(status="failed", **fp)}

    def fingerprints(self) -> list[str]:
        """The oracle fingerprints that have records, sorted."""
        if not os.path.exists(self.path):
            return []
        with _readable(self.path):
            return sorted({row.get("fingerprint") for row in self.db.select(columns=["key_value_pairs"])} - {None})

    def __len__(self) -> int:
        """Records (labels and failures) of every oracle."""
        if not os.path.exists(self.path):
            return 0
        with _readable(self.path):
            return self.db.count()

    # -- writing -------------------------------------------------------------------------------
    def _write(self, atoms: Atoms, structure: str, fingerprint: str, status: str, data: dict) -> None:
        from ase.db.core import now
        from ase.db.row import AtomsRow

        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        key = _key(structure, fingerprint)
        row = AtomsRow(atoms)
        row.unique_id = key
        row.ctime = now()
        row.user = os.getenv("USER")
        old = self._row(structure, fingerprint)
        kvp = {"structure": structure, "fingerprint": fingerprint, "status": status}
        # one statement = one committed transaction (an existing record is overwritten in place)
        with _readable(self.path):
            self.db.write(row, key_value_pairs=kvp, data=data, id=None if old is None else old.id)
        self._checkpoint()

    def _checkpoint(self) -> None:
        """Fold the write-ahead log into the store file, so that the file alone holds every
        label between writes (a copy of ``labels.db`` without its ``-wal`` is complete)."""
        with _readable(self.path), contextlib.closing(sqlite3.connect(self.path, timeout=20)) as con:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def put(self, atoms: Atoms, fingerprint: str) -> None:
        """Store labelled ``atoms`` (energy and forces from its calculator) under
        ``fingerprint``; durable when this returns. Overwrites a label or failure of the same
        structure and oracle.

        Raises:
          ValueError: ``atoms`` has no energy or forces.
        """
        calc = atoms.calc
        results = getattr(calc, "results", {}) if calc is not None else {}
        if "energy" not in results or "forces" not in results:
            raise ValueError("LabelStore.put needs atoms with energy and forces "
                             "(a SinglePointCalculator); use put_failure for failures")
        energy = float(results["energy"])
        forces = np.array(results["forces"], dtype=np.float64)
        if forces.shape != (len(atoms), 3):
            raise ValueError(f"forces of shape {forces.shape}, expected ({len(atoms)}, 3)")
        work = atoms.copy()
        work.calc = SinglePointCalculator(work, energy=energy, free_energy=energy, forces=forces)
        self._write(work, structure_hash(atoms), fingerprint, "ok", {"info": storable_info(atoms.info)})

    def put_failure(self, atoms: Atoms, fingerprint: str, error: str, attempts: Sequence[str]) -> None:
        """Record that the oracle ``fingerprint`` failed on ``atoms`` after ``attempts``
        (retry step names) with last error ``error``; durable when this returns."""
        work = atoms.copy()
        work.calc = None
        self._write(work, structure_hash(atoms), fingerprint, "failed",
                    {"info": storable_info(atoms.info), "error": str(error),
                     "attempts": [str(a) for a in attempts]})

    def forget_failures(self, fingerprint: str | None = None) -> int:
        """Delete recorded failures (of one oracle, or all) so they are offered again; returns
        how many were deleted."""
        if not os.path.exists(self.path):
            return 0
        fp = {} if fingerprint is None else {"fingerprint": fingerprint}
        with _readable(self.path):
            ids = [row.id for row in self.db.select(status="failed", **fp)]
            if ids:
                self.db.delete(ids)
        if ids:
            self._checkpoint()
        return len(ids)
