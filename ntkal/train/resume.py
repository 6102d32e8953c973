"""Resumable training: the state of :func:`ntkal.train.fit` after each epoch, on disk.

A fit with ``state_path`` writes, after every epoch and atomically, one ``.npz`` file holding the
current parameters, the optimizer state, the best parameters so far, the epoch reached, whether
the fit has finished (early stop or ``max_epochs``), the best validation loss and epoch, and the
history. A later call with the same inputs resumes after the last written epoch and returns
exactly what the uninterrupted fit would have (the epoch order, replay draws and learning rates
are functions of ``(seed, epoch)``, so nothing else needs saving).

"The same inputs" is checked, not assumed: the file records a fingerprint (SHA-256) of the
training configuration, the starting parameters and every structure's geometry and labels
(train, validation, replay), and a mismatch is an error rather than a silently different model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from ntkal.data.structure import Structure

__all__ = ["FitState", "fit_fingerprint", "save_fit_state", "load_fit_state"]

FORMAT = "ntkal-fit-state"
VERSION = 1


@dataclasses.dataclass
class FitState:
    """Where a fit stands after ``epoch`` (see module docstring).

    Attributes:
      epoch: the last completed epoch (0-based).
      finished: True once the fit stopped (early stopping or ``max_epochs``).
      params, opt_state: after that epoch.
      best_params, best_loss, best_epoch: the best epoch so far (``best_loss`` = inf and
        ``best_epoch`` = -1 before any).
      history: the per-epoch records so far.
    """

    epoch: int
    finished: bool
    params: Any
    opt_state: Any
    best_params: Any
    best_loss: float
    best_epoch: int
    history: list


def _hash_arrays(h, *arrays) -> None:
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())


def fit_fingerprint(config, params, train: Sequence[Structure], val: Sequence[Structure],
                    replay: Sequence[Structure]) -> str:
    """SHA-256 hex digest of a fit's inputs: ``config`` (a dataclass), the starting ``params``
    and the geometry, atomic numbers, cells, free masks and labels of every structure of the
    three sets, in order."""
    h = hashlib.sha256()
    h.update(json.dumps(dataclasses.asdict(config), sort_keys=True, default=str).encode())
    _hash_arrays(h, *jax.tree_util.tree_leaves(jax.device_get(params)))
    for name, part in (("train", train), ("val", val), ("replay", replay)):
        h.update(f"{name}:{len(part)}".encode())
        for s in part:
            _hash_arrays(h, s.numbers, s.positions, s.cell, s.free, np.float64(s.energy), s.forces,
                         np.bool_(s.has_forces))
    return h.hexdigest()


def save_fit_state(path: str | os.PathLike, fingerprint: str, state: FitState) -> None:
    """Write ``state`` to ``path`` atomically (a ``.npz``; a crash leaves the previous file)."""
    from ntkal.models.checkpoint import atomic_write_bytes
    arrays = {}
    for name in ("params", "opt_state", "best_params"):
        for k, leaf in enumerate(jax.tree_util.tree_leaves(jax.device_get(getattr(state, name)))):
            arrays[f"{name}/{k}"] = np.asarray(leaf)
    meta = {"format": FORMAT, "version": VERSION, "fingerprint": fingerprint, "epoch": state.epoch,
            "finished": state.finished, "best_loss": state.best_loss, "best_epoch": state.best_epoch,
            "history": state.history}
    arrays["meta"] = np.frombuffer(json.dumps(meta, default=float).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_fit_state(path: str | os.PathLike, fingerprint: str, params_template,
                   opt_state_template) -> FitState | None:
    """The :class:`FitState` in ``path`` (``None`` when there is no file).

    Args:
      path: a file written by :func:`save_fit_state`.
      fingerprint: :func:`fit_fingerprint` of the fit that wants to resume.
      params_template, opt_state_template: pytrees with the structure (and dtypes) of the
        parameters and optimizer state, e.g. the starting ones.

    Raises:
      ValueError: the file is not a fit state, or it belongs to a fit with other inputs.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same error for the user
        raise ValueError(f"{path}: not a readable ntkal fit state ({e})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not an ntkal fit state (format {meta.get('format')!r})")
    if meta["fingerprint"] != fingerprint:
        raise ValueError(f"{path}: this fit state belongs to a fit with other inputs (training "
                         f"config, starting parameters or data differ); delete it (ntkal train: "
                         f"--no-resume) or choose another path to start over")

    def restore(name, template):
        leaves, treedef = jax.tree_util.tree_flatten(template)
        got = [arrays[k] for k in sorted((k for k in arrays if k.startswith(name + "/")),
                                         key=lambda k: int(k.split("/")[1]))]
        if len(got) != len(leaves):
            raise ValueError(f"{path}: {name} has {len(got)} arrays, this fit has {len(leaves)}")
        for want, have in zip(leaves, got):
            if np.shape(want) != have.shape:
                raise ValueError(f"{path}: {name} leaf shape {have.shape} != {np.shape(want)}")
        return jax.tree_util.tree_unflatten(
            treedef, [jax.numpy.asarray(g, dtype=np.asarray(w).dtype) for w, g in zip(leaves, got)])

    return FitState(epoch=int(meta["epoch"]), finished=bool(meta["finished"]),
                    params=restore("params", params_template),
                    opt_state=restore("opt_state", opt_state_template),
                    best_params=restore("best_params", params_template),
                    best_loss=float(meta["best_loss"]), best_epoch=int(meta["best_epoch"]),
                    history=list(meta["history"]))
