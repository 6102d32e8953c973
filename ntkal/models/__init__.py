"""Functional MLIPs: the protocol, the built-in equivariant network, reference energies, checkpoints."""

from ntkal.models.config import ModelConfig
from ntkal.models.mlip import (MLIP, ModelOutput, build_model, count_parameters,
                               energy_and_forces_fn, forces_fn, species_index, with_positions)

__all__ = ["ModelConfig", "MLIP", "ModelOutput", "build_model", "count_parameters",
           "energy_and_forces_fn", "forces_fn", "species_index", "with_positions"]
