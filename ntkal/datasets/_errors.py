"""Exceptions raised by ntkal.datasets."""

from __future__ import annotations

__all__ = ["DatasetFormatError", "LabellingError"]


class DatasetFormatError(ValueError):
    """A dataset file is truncated, malformed or inconsistent.

    The message always names the file and the frame (or HDF5 key / db row)
    where reading went wrong, e.g.
    ``"/data/0.extxyz.xz: frame 17: compressed file ended early"``.

    Attributes:
      path: the offending file.
      where: frame index, HDF5 key or row id (``None`` for whole-file errors).
    """

    def __init__(self, path, where, reason: str):
        self.path = str(path)
        self.where = where
        self.reason = reason
        loc = "" if where is None else (
            f" frame {where}:" if isinstance(where, int) else f" {where}:")
        super().__init__(f"{self.path}:{loc} {reason}")


class LabellingError(RuntimeError):
    """A labelling oracle could not label a structure after every retry.

    Attributes:
      index: position of the structure in the list passed to the oracle.
      attempts: names of the retry steps tried, in order.
    """

    def __init__(self, index: int, attempts: tuple[str, ...], cause: str):
        self.index = index
        self.attempts = tuple(attempts)
        self.cause = cause
        super().__init__(
            f"labelling failed for structure {index} after attempts "
            f"{list(self.attempts)}: {cause}")
