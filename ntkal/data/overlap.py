"""Copies of one structure across the inputs of a run: test leakage and repeated pool frames.

Two frames are *the same structure* when their atomic numbers, periodic flags, cell and positions
agree after rounding lengths to :data:`DECIMALS` decimals of an Å (1e-6 Å): a frame written to
extxyz (8 decimals) and read back, or converted between formats, is still recognised as a copy,
while two MD frames a femtosecond apart are not. Labels, tags, constraints and ``info`` are
ignored (a labelled copy of a pool frame is the pool frame). Atom order counts.

:func:`audit_inputs` applies this to the inputs of an active-learning run:

- a test frame that is also a pool, initial-set or target-set frame is *leakage* (the loop could
  pick it, train on it or steer its picks by it, and the test error would be meaningless):
  :class:`LeakageError`, naming both files and frames, unless downgraded to a warning;
- pool frames that repeat the initial labelled set are returned, to be never offered as
  candidates (they are labelled already);
- pool frames that repeat an earlier pool frame are counted (reported, kept).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["DECIMALS", "frame_key", "frame_keys", "locate", "LeakageError", "LeakageWarning",
           "KeyedFrames", "keyed", "check_test_leaks", "InputAudit", "audit_inputs", "repeats_of",
           "count_duplicates"]

#: lengths (Å) are compared after rounding to this many decimals
DECIMALS = 6


def frame_key(atoms) -> bytes:
    """A 16-byte digest of ``atoms``' numbers, pbc, cell and positions (Å, rounded to
    :data:`DECIMALS` decimals, so ``-0.0`` and ``0.0`` agree)."""
    scale = 10.0 ** DECIMALS
    h = hashlib.blake2b(digest_size=16)
    numbers = np.ascontiguousarray(atoms.numbers, dtype="<i8")
    h.update(np.asarray(numbers.shape, "<i8").tobytes() + numbers.tobytes())
    h.update(np.ascontiguousarray(atoms.pbc, dtype="?").tobytes())
    for lengths in (atoms.cell.array, atoms.positions):
        h.update(np.ascontiguousarray(np.rint(np.asarray(lengths, np.float64) * scale), dtype="<i8").tobytes())
    return h.digest()


def frame_keys(frames: Iterable) -> list[bytes]:
    """:func:`frame_key` of every frame."""
    return [frame_key(a) for a in frames]


def locate(atoms, index: int) -> str:
    """``"pool.extxyz frame 12"`` for a frame read from a file (``info["source"]``/``["frame"]``),
    else ``"frame 12"`` (its index in the group)."""
    source = atoms.info.get("source")
    frame = atoms.info.get("frame", index)
    return f"{source} frame {frame}" if source else f"frame {frame}"


def repeats_of(keys: Sequence[bytes], reference: Iterable[bytes]) -> np.ndarray:
    """Indices (int64, ascending) of ``keys`` that occur in ``reference``."""
    ref = set(reference)
    return np.asarray([k for k, key in enumerate(keys) if key in ref], np.int64)


def count_duplicates(keys: Sequence[bytes]) -> int:
    """Frames that repeat an earlier frame of the same list."""
    return len(keys) - len(set(keys))


class KeyedFrames(NamedTuple):
    """The keys of one group of frames and how to name a frame of it.

    Attributes:
      keys: :func:`frame_key` of every frame.
      where: ``where(k) -> "pool.extxyz frame 12"``.
    """

    keys: Sequence[bytes]
    where: Callable[[int], str]


def keyed(frames: Sequence) -> KeyedFrames:
    """:class:`KeyedFrames` of ``ase.Atoms`` (named by :func:`locate`)."""
    frames = list(frames)
    return KeyedFrames(frame_keys(frames), lambda k: locate(frames[k], k))


class LeakageError(ValueError):
    """A test frame is also a frame the run may pick, train on or steer its picks by."""


class LeakageWarning(UserWarning):
    """:class:`LeakageError`'s finding, downgraded (``test_overlap = "warn"``)."""


class InputAudit(NamedTuple):
    """What :func:`audit_inputs` found.

    Attributes:
      pool_in_initial: (k,) int64 pool indices of frames that repeat the initial labelled set
        (never offered as candidates).
      pool_duplicates: pool frames that repeat an earlier pool frame.
      leaks: one line per test frame found in the pool, the initial set or the target set
        (empty unless downgraded to warnings).
    """

    pool_in_initial: np.ndarray
    pool_duplicates: int
    leaks: tuple[str, ...]

    def notes(self) -> list[str]:
        """Human-readable lines for what was found besides leakage (empty when nothing)."""
        out = []
        if len(self.pool_in_initial):
            out.append(f"{len(self.pool_in_initial)} pool frame(s) repeat the initial labelled set; "
                       "they are never offered as candidates")
        if self.pool_duplicates:
            out.append(f"{self.pool_duplicates} pool frame(s) repeat an earlier pool frame (kept)")
        return out


def audit_inputs(pool: Sequence, tests: Mapping[str, Sequence] | None = None, initial: Sequence = (),
                 target: Sequence = (), *, test_overlap: str = "error", max_listed: int = 5) -> InputAudit:
    """Check the ``ase.Atoms`` of one run for copies across its inputs (module docstring).

    Args:
      pool: candidate ``ase.Atoms``.
      tests: split name → labelled ``ase.Atoms`` the run is evaluated on.
      initial: the initial labelled ``ase.Atoms`` (not from the pool).
      target: unlabelled target ``ase.Atoms`` (``variance_target = "target_set"``).
      test_overlap: ``"error"`` (raise) or ``"warn"`` (a :class:`LeakageWarning`, and the run
        goes on) when a test frame is also a pool, initial-set or target-set frame.
      max_listed: copies named in the message (the count is always complete).

    Returns:
      An :class:`InputAudit`.

    Raises:
      LeakageError: a test frame is also an input frame and ``test_overlap == "error"``; the
        message names both files and frames.
    """
    pool, initial = keyed(pool), keyed(initial)
    leaks = check_test_leaks({split: keyed(frames) for split, frames in (tests or {}).items()},
                             {"pool": pool, "initial labelled set": initial, "target set": keyed(target)},
                             test_overlap=test_overlap, max_listed=max_listed,
                             downgrade='[data] test_overlap = "warn"')
    return InputAudit(repeats_of(pool.keys, initial.keys), count_duplicates(pool.keys), tuple(leaks))


def check_test_leaks(tests: Mapping[str, KeyedFrames], others: Mapping[str, KeyedFrames], *,
                     test_overlap: str = "error", max_listed: int = 5,
                     downgrade: str = 'test_overlap = "warn"') -> list[str]:
    """Find the test frames that are also frames of ``others`` (see :func:`audit_inputs`).

    Args:
      tests: split name → its :class:`KeyedFrames`.
      others: group name (``"pool"``, ...) → its :class:`KeyedFrames`; a frame in several groups
        is named in the first.
      test_overlap: ``"error"`` or ``"warn"``.
      max_listed: copies named in the message.
      downgrade: how the user downgrades the error (named in its message).

    Returns:
      One line per leaked test frame (empty when none).

    Raises:
      LeakageError: leaks were found and ``test_overlap == "error"``.
    """
    if test_overlap not in ("error", "warn"):
        raise ValueError(f"test_overlap must be 'error' or 'warn', got {test_overlap!r}")
    where: dict[bytes, tuple[str, Callable[[int], str], int]] = {}
    for name, group in others.items():
        for k, key in enumerate(group.keys):
            where.setdefault(key, (name, group.where, k))
    leaks = []
    for split, group in tests.items():
        for k, key in enumerate(group.keys):
            hit = where.get(key)
            if hit is not None:
                name, other, j = hit
                leaks.append(f"test split {split!r} {group.where(k)} is also {name} {other(j)}")
    if leaks:
        shown = "\n  ".join(leaks[:max_listed]) + (f"\n  ... ({len(leaks) - max_listed} more)"
                                                    if len(leaks) > max_listed else "")
        text = (f"{len(leaks)} test frame(s) are also frames the run picks from, trains on or targets:\n"
                f"  {shown}\nremove them from the test files (or from the other files); {downgrade} "
                f"runs anyway")
        if test_overlap == "error":
            raise LeakageError(text)
        warnings.warn(text, LeakageWarning, stacklevel=3)
    return leaks
