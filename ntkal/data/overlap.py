"""Copies of one structure across the inputs of a run: test leakage and repeated pool frames.

Two frames are *the same structure* when their atomic numbers and periodic flags are equal and
every cell component and Cartesian coordinate agrees to :data:`TOLERANCE` (1e-6 Å): a frame
written to extxyz (8 decimals) and read back, or converted between formats, is recognised as a
copy, while two MD frames a femtosecond apart are not. Labels, tags, constraints and ``info``
are ignored (a labelled copy of a pool frame is the pool frame). Atom order counts.

Finding copies among many frames (:class:`FrameIndex`): frames are grouped by numbers and pbc,
and within a group by a random projection ``s = w·v`` of their lengths ``v`` (cell and
positions) into buckets of width ``‖w‖₁ · TOLERANCE``; a copy moves ``s`` by at most that width,
so it lies in its original's bucket or a neighbouring one, where the frames are compared
coordinate by coordinate. (Rounding coordinates and hashing them would not do: a round trip
through 8 decimals moves a coordinate across a rounding boundary often enough that 77 of 200
extxyz copies of random 40-atom frames got another hash.)

:func:`audit_inputs` applies this to the inputs of an active-learning run:

- a test frame that is also a pool, initial-set or target-set frame is *leakage* (the loop could
  pick it, train on it or steer its picks by it, and the test error would be meaningless):
  :class:`LeakageError`, naming both files and frames, unless downgraded to a warning;
- pool frames that repeat the initial labelled set are returned, to be never offered as
  candidates (they are labelled already);
- pool frames that repeat an earlier pool frame are counted (reported, kept).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = ["TOLERANCE", "Frame", "frame_of", "frames_of", "same_frame", "FrameIndex", "locate",
           "LeakageError", "LeakageWarning", "KeyedFrames", "keyed", "check_test_leaks", "InputAudit",
           "audit_inputs", "repeats_of", "count_duplicates"]

#: cell components and coordinates (Å) of two copies differ by at most this
TOLERANCE = 1e-6


class Frame(NamedTuple):
    """What decides whether two frames are the same structure.

    Attributes:
      exact: atomic numbers and pbc as bytes (equal in copies).
      lengths: (9 + 3 n_atoms,) float64 cell (Å, row-major) then positions (Å).
    """

    exact: bytes
    lengths: np.ndarray


def frame_of(atoms) -> Frame:
    """The :class:`Frame` of an ``ase.Atoms``."""
    numbers = np.ascontiguousarray(atoms.numbers, dtype="<i8")
    exact = np.asarray(numbers.shape, "<i8").tobytes() + numbers.tobytes() + np.asarray(atoms.pbc, "?").tobytes()
    lengths = np.concatenate([np.asarray(atoms.cell.array, np.float64).ravel(),
                              np.asarray(atoms.positions, np.float64).ravel()])
    return Frame(exact, lengths)


def frames_of(frames: Iterable) -> list[Frame]:
    """:func:`frame_of` of every frame."""
    return [frame_of(a) for a in frames]


def same_frame(a: Frame, b: Frame, tolerance: float = TOLERANCE) -> bool:
    """Whether ``a`` and ``b`` are the same structure (module docstring)."""
    return a.exact == b.exact and bool(np.max(np.abs(a.lengths - b.lengths)) <= tolerance)


@functools.lru_cache(maxsize=64)
def _projection(n: int) -> np.ndarray:
    """Fixed random weights (n,) of the bucketing projection for frames of n lengths."""
    return np.random.default_rng([0x0F7A3E, n]).standard_normal(n)


class FrameIndex:
    """Frames, each with a reference, found again by any copy (within ``tolerance``).

    Example:
      >>> index = FrameIndex()
      >>> index.add(frame_of(atoms), "pool frame 3")      # doctest: +SKIP
      >>> index.find(frame_of(copy_of_atoms))              # doctest: +SKIP
      'pool frame 3'
    """

    def __init__(self, tolerance: float = TOLERANCE):
        self.tolerance = float(tolerance)
        self._buckets: dict[tuple[bytes, int], list[tuple[int, Frame, Any]]] = {}
        self._added = 0

    def _bucket(self, frame: Frame) -> int:
        w = _projection(frame.lengths.size)
        width = max(float(np.sum(np.abs(w))) * self.tolerance, 1e-300)
        return math.floor(float(w @ frame.lengths) / width)

    def add(self, frame: Frame, ref: Any) -> None:
        """Remember ``frame`` with ``ref`` (a copy added later is found after it)."""
        self._buckets.setdefault((frame.exact, self._bucket(frame)), []).append((self._added, frame, ref))
        self._added += 1

    def find(self, frame: Frame, default: Any = None) -> Any:
        """The reference of the first added copy of ``frame``, else ``default``."""
        b = self._bucket(frame)
        hits = [(seq, ref) for dk in (-1, 0, 1) for seq, other, ref in self._buckets.get((frame.exact, b + dk), ())
                if same_frame(frame, other, self.tolerance)]
        return min(hits, key=lambda hit: hit[0])[1] if hits else default


def locate(atoms, index: int) -> str:
    """``"pool.extxyz frame 12"`` for a frame read from a file (``info["source"]``/``["frame"]``),
    else ``"frame 12"`` (its index in the group)."""
    source = atoms.info.get("source")
    frame = atoms.info.get("frame", index)
    return f"{source} frame {frame}" if source else f"frame {frame}"


def repeats_of(frames: Sequence[Frame], reference: Iterable[Frame]) -> np.ndarray:
    """Indices (int64, ascending) of ``frames`` that are copies of a ``reference`` frame."""
    index = FrameIndex()
    for frame in reference:
        index.add(frame, True)
    return np.asarray([k for k, frame in enumerate(frames) if index.find(frame, False)], np.int64)


def count_duplicates(frames: Sequence[Frame]) -> int:
    """Frames that repeat an earlier frame of the same list."""
    index, count = FrameIndex(), 0
    for frame in frames:
        if index.find(frame, False):
            count += 1
        else:
            index.add(frame, True)
    return count


class KeyedFrames(NamedTuple):
    """The :class:`Frame` s of one group and how to name a frame of it.

    Attributes:
      frames: :func:`frame_of` of every frame.
      where: ``where(k) -> "pool.extxyz frame 12"``.
    """

    frames: Sequence[Frame]
    where: Callable[[int], str]


def keyed(frames: Sequence) -> KeyedFrames:
    """:class:`KeyedFrames` of ``ase.Atoms`` (named by :func:`locate`)."""
    frames = list(frames)
    return KeyedFrames(frames_of(frames), lambda k: locate(frames[k], k))


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
    return InputAudit(repeats_of(pool.frames, initial.frames), count_duplicates(pool.frames), tuple(leaks))


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
    index = FrameIndex()
    for name, group in others.items():
        for k, frame in enumerate(group.frames):
            index.add(frame, (name, group.where, k))
    leaks = []
    for split, group in tests.items():
        for k, frame in enumerate(group.frames):
            hit = index.find(frame)
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
