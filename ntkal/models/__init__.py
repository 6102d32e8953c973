"""Functional MLIPs: the protocol, the built-in equivariant network, mlip backbones, reference energies, checkpoints.

Names are imported on first use (``from ntkal.models import ModelConfig`` loads no JAX).
"""

from __future__ import annotations

from ntkal._lazy import lazy_attributes

_MLIP = ("MLIP", "ModelOutput", "count_parameters", "energy_and_forces_fn", "forces_fn",
         "species_index", "with_positions")
_WHERE = {
    "ModelConfig": "ntkal.models.config", "BACKBONES": "ntkal.models.config",
    "MLIP_BACKBONES": "ntkal.models.config",
    "params_from_mlip": "ntkal.models.mlip_adapter", "load_mlip_zip": "ntkal.models.mlip_adapter",
    "mlip_available": "ntkal.models.config",
    **{name: "ntkal.models.mlip" for name in _MLIP},
    "build_model": "ntkal.models.build",
    "atomic_write_bytes": "ntkal.models.checkpoint", "load_checkpoint": "ntkal.models.checkpoint",
    "save_checkpoint": "ntkal.models.checkpoint",
    "fit_reference_energies": "ntkal.models.reference", "force_rms": "ntkal.models.reference",
    "adapt_config": "ntkal.models.reference",
    "PRETRAINED_DIR": "ntkal.models.pretrained", "load_pretrained": "ntkal.models.pretrained",
    "pretrained_names": "ntkal.models.pretrained",
}

__all__ = list(_WHERE)

__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
