"""Hyper-parameters of an MLIP: the built-in equivariant network or an ``mlip`` backbone."""

from __future__ import annotations

import dataclasses
from typing import Any

import ase.data

__all__ = ["ModelConfig", "BACKBONES", "MLIP_BACKBONES", "NTKAL_ONLY_FIELDS", "mlip_available"]

#: ``"ntkal"`` is the built-in NequIP-style network (:mod:`ntkal.models.nequip`); the others are
#: InstaDeep ``mlip`` networks (optional extra ``ntkal[mlip]``, :mod:`ntkal.models.mlip_adapter`).
MLIP_BACKBONES = ("mace", "nequip", "visnet")
#: ``"sevennet"``: SevenNet's NequIP network in JAX (:mod:`ntkal.models.sevennet`), for converted
#: SevenNet checkpoints (``load_pretrained("sevennet-0")``)
BACKBONES = ("ntkal",) + MLIP_BACKBONES + ("sevennet",)
#: ModelConfig fields that only the built-in ``"ntkal"`` network uses.
NTKAL_ONLY_FIELDS = ("hidden_irreps", "radial_hidden", "readout_hidden", "envelope_power")
#: ``mlip`` network ``Config`` fields set from ModelConfig fields (network name → ModelConfig name).
NETWORK_CONFIG_FIELDS = {"num_layers": "num_layers", "l_max": "lmax", "num_rbf": "num_radial"}
#: ``mlip`` options an ``mlip`` backbone takes from ModelConfig, never from ``backbone_options``
#: (``avg_num_neighbors`` reaches the network through its ``DatasetInfo``).
SHARED_OPTIONS = {**NETWORK_CONFIG_FIELDS, "avg_num_neighbors": "avg_num_neighbors"}


def mlip_available() -> bool:
    """Whether InstaDeep's optional ``mlip`` package is installed (nothing is imported)."""
    import importlib.util

    return importlib.util.find_spec("mlip") is not None


def _frozen(value: Any, where: str) -> Any:
    """A TOML/JSON option value as a hashable one (lists → tuples); anything else is rejected."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v, where) for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"backbone_options {where}: values must be numbers, strings, booleans, null or lists, "
                     f"got {value!r}")


def _thawed(value: Any) -> Any:
    return [_thawed(v) for v in value] if isinstance(value, tuple) else value


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Frozen hyper-parameters of :func:`ntkal.models.build_model`.

    Every field is static: changing one builds a different model (and recompiles).

    ``backbone`` picks the network. ``"ntkal"`` (default) is the built-in network and uses every
    field below. ``"mace"``, ``"nequip"`` and ``"visnet"`` are InstaDeep ``mlip`` networks: they
    use ``elements``, ``cutoff``, ``num_layers``, ``lmax`` (their ``l_max``), ``num_radial`` (their
    ``num_rbf``), ``avg_num_neighbors`` and ``energy_scale``; every other hyper-parameter of the
    ``mlip`` network comes from ``backbone_options`` (keyword arguments of its ``Config``, e.g.
    ``{"num_channels": 32, "correlation": 2}`` for MACE), and ``hidden_irreps``,
    ``radial_hidden``, ``readout_hidden`` and ``envelope_power`` are not used.

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
      backbone: one of :data:`BACKBONES`.
      backbone_options: an ``mlip`` network's own hyper-parameters, as sorted ``(name, value)``
        pairs (a dict is accepted and converted; lists become tuples); empty for ``"ntkal"``.
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
    backbone: str = "ntkal"
    backbone_options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        elements = tuple(ase.data.atomic_numbers[z] if isinstance(z, str) else int(z) for z in self.elements)
        object.__setattr__(self, "elements", elements)
        if not elements or len(set(elements)) != len(elements):
            raise ValueError(f"elements must be a non-empty list of distinct atomic numbers, got {elements}")
        if any(z < 1 or z >= len(ase.data.chemical_symbols) for z in elements):
            raise ValueError(f"invalid atomic number in {elements}")
        if self.cutoff <= 0 or self.num_layers < 1 or self.lmax < 0:
            raise ValueError("cutoff must be > 0, num_layers >= 1, lmax >= 0")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        options = self.backbone_options
        pairs = options.items() if isinstance(options, dict) else options
        try:
            pairs = [(k, v) for k, v in pairs]
        except (TypeError, ValueError):
            raise ValueError(f"backbone_options must be a table of name = value, got {options!r}") from None
        if any(not isinstance(k, str) for k, _ in pairs):
            raise ValueError(f"backbone_options names must be strings, got {options!r}")
        if self.backbone == "sevennet":
            pairs = [(k, v) for k, v in pairs]  # checked by ntkal.models.sevennet.spec_of
        elif pairs and self.backbone == "ntkal":
            raise ValueError("backbone_options are for an mlip backbone (mace, nequip, visnet); the ntkal "
                             "backbone takes its hyper-parameters from the other fields")
        shared = sorted(k for k, _ in pairs if k in SHARED_OPTIONS and self.backbone != "sevennet")
        if shared:
            raise ValueError(f"backbone_options {shared[0]!r}: set the model field "
                             f"{SHARED_OPTIONS[shared[0]]!r} instead")
        object.__setattr__(self, "backbone_options",
                           tuple(sorted((k, _frozen(v, repr(k))) for k, v in pairs)))

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(ase.data.chemical_symbols[z] for z in self.elements)

    def options_dict(self) -> dict[str, Any]:
        """``backbone_options`` as a dict of JSON values (tuples back to lists)."""
        return {k: _thawed(v) for k, v in self.backbone_options}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["elements"] = list(self.elements)
        d["backbone_options"] = self.options_dict()
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
