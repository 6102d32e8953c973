"""Hyper-parameters of the built-in equivariant MLIP."""

from __future__ import annotations

import dataclasses
from typing import Any

import ase.data

__all__ = ["ModelConfig"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Frozen hyper-parameters of :func:`ntkal.models.build_model`.

    Every field is static: changing one builds a different model (and recompiles).

    Attributes:
      elements: atomic numbers (or symbols) the model knows, in embedding order.
      cutoff: radial cutoff (Å); the neighbour list must use the same value.
      hidden_irreps: node-feature irreps of each interaction block (e3nn notation).
      num_layers: number of interaction (message-passing) blocks.
      lmax: maximum degree of the edge spherical harmonics.
      num_radial: Bessel radial basis functions per edge.
      radial_hidden: width of the radial MLP producing tensor-product weights.
      readout_hidden: width of the scalar readout hidden layer (the "last layer" input).
      avg_num_neighbors: message normalisation (sum of messages / sqrt of this).
      envelope_power: smoothness of the polynomial cutoff envelope.
      energy_scale: per-atom energy scale (eV) applied to the network output.
    """

    elements: tuple[int, ...] = (29, 78)
    cutoff: float = 5.0
    hidden_irreps: str = "64x0e + 32x1o + 16x2e"
    num_layers: int = 2
    lmax: int = 2
    num_radial: int = 8
    radial_hidden: int = 32
    readout_hidden: int = 16
    avg_num_neighbors: float = 20.0
    envelope_power: int = 6
    energy_scale: float = 1.0

    def __post_init__(self):
        elements = tuple(ase.data.atomic_numbers[z] if isinstance(z, str) else int(z) for z in self.elements)
        object.__setattr__(self, "elements", elements)
        if not elements or len(set(elements)) != len(elements):
            raise ValueError(f"elements must be a non-empty list of distinct atomic numbers, got {elements}")
        if any(z < 1 or z >= len(ase.data.chemical_symbols) for z in elements):
            raise ValueError(f"invalid atomic number in {elements}")
        if self.cutoff <= 0 or self.num_layers < 1 or self.lmax < 0:
            raise ValueError("cutoff must be > 0, num_layers >= 1, lmax >= 0")

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(ase.data.chemical_symbols[z] for z in self.elements)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["elements"] = list(self.elements)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {sorted(unknown)}")
        d = dict(d)
        if "elements" in d:
            d["elements"] = tuple(
                ase.data.atomic_numbers[z] if isinstance(z, str) else int(z) for z in d["elements"])
        return cls(**d)
