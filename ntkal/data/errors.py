"""Errors raised on bad input structures.

Every error names the structure index in the input sequence and, when the
structure was read from a file, the file and the frame within it
(``atoms.info["source"]`` and ``atoms.info["frame"]``).
"""

from __future__ import annotations

__all__ = ["InvalidStructureError", "UnknownElementError", "EmptyInputError", "where"]


def where(index: int | None, info: dict | None = None) -> str:
    """A human-readable location: ``structure 3 (file a.extxyz, frame 7)``."""
    parts = [f"structure {index}" if index is not None else "structure"]
    info = info or {}
    extra = []
    if info.get("source") is not None:
        extra.append(f"file {info['source']}")
    if info.get("frame") is not None:
        extra.append(f"frame {info['frame']}")
    if extra:
        parts.append("(" + ", ".join(extra) + ")")
    return " ".join(parts)


class InvalidStructureError(ValueError):
    """A structure that cannot be turned into a graph or a training target.

    Attributes:
      index: position of the structure in the input sequence.
      source: file it was read from, if known.
      frame: frame within that file, if known.
    """

    def __init__(self, message: str, *, index: int | None = None, info: dict | None = None):
        info = info or {}
        self.index = index
        self.source = info.get("source")
        self.frame = info.get("frame")
        super().__init__(f"{where(index, info)}: {message}")


class UnknownElementError(InvalidStructureError):
    """A structure holds an element the model was not built for."""


class EmptyInputError(ValueError):
    """An input sequence held no structure at all."""
