"""Tiny model configs for tests (imported by test modules; conftest holds the fixtures)."""

from ntkal.models import ModelConfig

#: A model small enough that one jit compile takes ~1–2 s on a 2-core CPU.
TINY = dict(hidden_irreps="8x0e + 4x1o", num_layers=2, lmax=2, num_radial=4, radial_hidden=8,
            readout_hidden=8, cutoff=4.0, avg_num_neighbors=10.0)


def tiny_config(elements=(29, 78), **overrides) -> ModelConfig:
    return ModelConfig(elements=elements, **{**TINY, **overrides})
