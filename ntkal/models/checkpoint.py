"""Checkpoints: params + model config + metadata in one msgpack file, written atomically.

Serialised with ``flax.serialization`` (msgpack): arrays are stored as numpy,
config and metadata as JSON strings. A crash while writing leaves either the old
file or the new one, never a partial file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import jax
import numpy as np
from flax import serialization

from ntkal.models.config import ModelConfig
from ntkal.models.build import build_model
from ntkal.models.mlip import MLIP

__all__ = ["save_checkpoint", "load_checkpoint", "atomic_write_bytes", "atomic_path", "new_file_mode",
           "remove_stale_temp_files", "TEMP_SUFFIX"]

#: suffix of the temporary files of :func:`atomic_write_bytes` (``.<name>.<random>.tmp``)
TEMP_SUFFIX = ".tmp"


def new_file_mode() -> int:
    """The permission bits a plain ``open(path, "w")`` would give a new file (0o666 minus the
    umask). ``tempfile.mkstemp`` creates 0o600 files; atomic writes restore this mode."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def remove_stale_temp_files(folder: str | os.PathLike, *, names: tuple[str, ...] | None = None,
                            recursive: bool = False) -> list[Path]:
    """Delete temporary files left in ``folder`` by atomic writes that were killed.

    Only names of the form ``.<name>.<random>.tmp`` (what :func:`atomic_write_bytes` and the
    picks writer create) are removed; with ``names``, only those of the given target file
    names (use this in a user's folder). Call it when a run starts, before anything writes.

    Returns:
      the removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    patterns = [f".{name}.*{TEMP_SUFFIX}" for name in names] if names is not None else [f".*{TEMP_SUFFIX}"]
    removed = []
    for pattern in patterns:
        for path in (folder.rglob(pattern) if recursive else folder.glob(pattern)):
            if path.is_file() and path.name.count(".") >= 3:
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed

FORMAT = "ntkal-checkpoint"
VERSION = 1


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path ``.<name>.<random>.tmp`` beside ``path``; when the block ends
    without an error it gets normal permissions (:func:`new_file_mode`) and replaces ``path``
    (``os.replace``), otherwise it is removed. A crash leaves the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`), flushed to disk first."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(path: str | os.PathLike, params, config: ModelConfig,
                    metadata: dict[str, Any] | None = None) -> None:
    """Save ``params`` (pytree of arrays), ``config`` and JSON-able ``metadata`` to ``path``."""
    state = {
        "format": FORMAT,
        "version": VERSION,
        "config": json.dumps(config.to_dict()),
        "metadata": json.dumps(metadata or {}),
        "params": jax.tree_util.tree_map(np.asarray, params),
    }
    atomic_write_bytes(path, serialization.msgpack_serialize(state))


def load_checkpoint(path: str | os.PathLike) -> tuple[MLIP, Any, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Returns:
      ``(model, params, metadata)``.

    Raises:
      FileNotFoundError: no such file.
      ValueError: the file is not an ntkal checkpoint or is corrupt.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        state = serialization.msgpack_restore(raw)
    except Exception as err:  # msgpack raises several types on corrupt input
        raise ValueError(f"{path}: not a readable ntkal checkpoint ({err})") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not an ntkal checkpoint")
    config = ModelConfig.from_dict(json.loads(state["config"]))
    return build_model(config), state["params"], json.loads(state["metadata"])
