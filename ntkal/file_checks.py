"""File checks shared by the commands: can ASE read this structure file, can this folder be
written, is this a checkpoint or a shipped model name. JAX-free (ASE's format table is imported
when a check runs), so every command checks its files before the heavy modules load."""

from __future__ import annotations

import lzma
import os
from pathlib import Path

__all__ = ["shipped_model_names", "model_file_problem", "input_file_problem", "format_problem",
           "writable_folder_problem"]

#: Where the shipped checkpoints live (as :data:`ntkal.models.pretrained.PRETRAINED_DIR`).
_PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


def shipped_model_names() -> tuple[str, ...]:
    """Names of the shipped pretrained checkpoints and of the converted foundation models (as
    :func:`ntkal.models.pretrained_names`)."""
    from ntkal.models.converted_names import CONVERTED_NAMES

    return tuple(sorted([p.stem for p in _PRETRAINED_DIR.glob("*.msgpack")] + list(CONVERTED_NAMES)))


def model_file_problem(value: str) -> str | None:
    """Why ``value`` is neither a readable checkpoint file nor a shipped model name (``None``: it is one)."""
    if value in shipped_model_names():
        return None
    path = Path(value)
    if path.is_file():
        if path.stat().st_size == 0:
            return f"checkpoint {value} is empty"
        if not os.access(path, os.R_OK):
            return f"checkpoint {value} is not readable"
        return None
    if path.exists():
        return f"{value} is not a checkpoint file"
    return f"{value!r} is neither a checkpoint file nor a shipped model ({', '.join(shipped_model_names())})"


def input_file_problem(value: str) -> str | None:
    """Why ASE cannot read the structure file ``value`` (``None`` if it can); imports no JAX."""
    from ase.io.formats import UnknownFileTypeError, filetype

    path = Path(value)
    if not path.exists():
        return f"no such file: {value}"
    if not path.is_file():
        return f"{value} is not a file"
    if path.stat().st_size == 0:
        return f"{value} is empty"
    if not os.access(path, os.R_OK):
        return f"{value} is not readable"
    try:
        fmt = filetype(str(path))  # the name, else the first bytes (decompressed), as ase.io.read does
    except (UnknownFileTypeError, OSError, EOFError, ValueError, lzma.LZMAError) as err:
        return f"cannot tell the structure format of {value} ({err})"
    return format_problem(value, fmt, "read", ".extxyz, .xyz, .traj")


def format_problem(value: str, fmt: str, mode: str, example: str) -> str | None:
    """Why ASE cannot ``mode`` ("read"/"write") the format ``fmt`` of ``value`` (None if it can)."""
    from ase.io.formats import ioformats

    if fmt not in ioformats:
        return f"{value}: {fmt!r} is not a structure format ASE can {mode} (use e.g. {example})"
    try:
        able = getattr(ioformats[fmt], f"can_{mode}")
    except ImportError as err:
        doing = {"read": "reading", "write": "writing"}[mode]
        return f"{value}: {doing} the {fmt} format needs a package that is not installed ({err})"
    if not able:
        return f"{value}: ASE cannot {mode} the {fmt} format"
    return None


def writable_folder_problem(folder: str | os.PathLike) -> str | None:
    """Why ``folder`` cannot be used, or created, for writing files (``None`` = it can)."""
    folder = Path(os.path.abspath(folder))
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot create folder {folder}: {existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"folder {folder} is not writable" if existing == folder else \
            f"cannot create folder {folder}: {existing} is not writable"
    return None
