"""Functional MLIPs: the protocol, the built-in equivariant network, reference energies, checkpoints."""

from ntkal.models.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint
from ntkal.models.config import ModelConfig
from ntkal.models.mlip import (MLIP, ModelOutput, build_model, count_parameters,
                               energy_and_forces_fn, forces_fn, species_index, with_positions)
from ntkal.models.pretrained import PRETRAINED_DIR, load_pretrained, pretrained_names
from ntkal.models.reference import adapt_config, fit_reference_energies, force_rms

__all__ = ["ModelConfig", "MLIP", "ModelOutput", "build_model", "count_parameters",
           "energy_and_forces_fn", "forces_fn", "species_index", "with_positions",
           "atomic_write_bytes", "load_checkpoint", "save_checkpoint", "fit_reference_energies",
           "force_rms", "adapt_config",
           "PRETRAINED_DIR", "load_pretrained", "pretrained_names"]
