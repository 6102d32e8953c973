"""Shared fixtures: a float64 switch. Tiny model configs live in ``tiny_models.py``."""

import jax
import pytest


@pytest.fixture(scope="module")
def x64():
    """Enable float64 for a module, restoring the previous setting afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)
