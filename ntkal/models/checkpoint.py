"""Checkpoints: params + model config + metadata in one msgpack file, written atomically.

Serialised with ``flax.serialization`` (msgpack): arrays are stored as numpy,
config and metadata as JSON strings. A crash while writing leaves either the old
file or the new one, never a partial file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from ntkal.atomic import TEMP_SUFFIX, atomic_path, atomic_write_bytes, new_file_mode, remove_stale_temp_files
from ntkal.models.config import ModelConfig
from ntkal.models.build import build_model
from ntkal.models.mlip import MLIP

__all__ = ["save_checkpoint", "load_checkpoint", "atomic_write_bytes", "atomic_path", "new_file_mode",
           "remove_stale_temp_files", "TEMP_SUFFIX"]

FORMAT = "ntkal-checkpoint"
VERSION = 1


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
