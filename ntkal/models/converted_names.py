"""Foundation models that ntkal converts from another package's checkpoint on first use.

Imports nothing (the command line lists these names without loading NumPy or JAX).
"""

__all__ = ["SEVENNET_CHECKPOINTS", "CONVERTED_NAMES"]

#: ntkal name → (the checkpoint's path inside the installed ``sevenn`` package, display name)
SEVENNET_CHECKPOINTS = {
    "sevennet-0": ("pretrained_potentials/SevenNet_0__11Jul2024/checkpoint_sevennet_0.pth", "SevenNet-0 (11Jul2024)"),
}

#: every name :func:`ntkal.models.load_pretrained` converts (:mod:`ntkal.models.sevennet_convert`)
CONVERTED_NAMES = tuple(sorted(SEVENNET_CHECKPOINTS))
