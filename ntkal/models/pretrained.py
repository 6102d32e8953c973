"""Pretrained checkpoints shipped with ntkal (``ntkal/pretrained/<name>.msgpack``).

Each has a model card ``<name>.md`` beside it (data, hyper-parameters, seed, command and
measured errors). They are produced by ``experiments/pretrain.py``.
"""

from __future__ import annotations

from pathlib import Path

from ntkal.models.checkpoint import load_checkpoint
from ntkal.models.converted_names import CONVERTED_NAMES, SEVENNET_CHECKPOINTS

__all__ = ["load_pretrained", "pretrained_names", "PRETRAINED_DIR"]

PRETRAINED_DIR = Path(__file__).resolve().parent.parent / "pretrained"


def pretrained_names() -> tuple[str, ...]:
    """Names of the shipped checkpoints (the converted foundation models,
    :data:`~ntkal.models.converted_names.CONVERTED_NAMES`, are loadable by name too)."""
    return tuple(sorted(p.stem for p in PRETRAINED_DIR.glob("*.msgpack")))


def load_pretrained(name_or_path: str):
    """Load a shipped checkpoint by name, or any checkpoint by path; a ``.zip`` path is an
    InstaDeep ``mlip`` model file (``save_model_to_zip``), converted by
    :func:`ntkal.models.mlip_adapter.load_mlip_zip` (needs ``ntkal[mlip]``); ``"sevennet-0"`` is
    SevenNet-0, converted from the installed ``sevenn`` wheel's checkpoint on first use and cached
    (:func:`ntkal.models.sevennet_convert.cached_sevennet`; ``pip install --no-deps sevenn==0.13.0``).

    Returns:
      ``(model, params, metadata)`` as :func:`ntkal.models.load_checkpoint`.

    Raises:
      FileNotFoundError: neither a shipped name nor an existing file; lists the names.
    """
    if name_or_path in SEVENNET_CHECKPOINTS:
        from ntkal.models.sevennet_convert import cached_sevennet

        return cached_sevennet(name_or_path)
    path = Path(name_or_path)
    if path.suffix == ".zip" and path.is_file():
        from ntkal.models.mlip_adapter import load_mlip_zip

        return load_mlip_zip(path)
    if path.suffix != ".msgpack" or not path.exists():
        candidate = PRETRAINED_DIR / f"{name_or_path}.msgpack"
        if candidate.exists():
            path = candidate
        elif not path.exists():
            raise FileNotFoundError(f"no pretrained checkpoint {name_or_path!r}: not a file and not one of "
                                    f"{pretrained_names() + CONVERTED_NAMES}")
    return load_checkpoint(path)
