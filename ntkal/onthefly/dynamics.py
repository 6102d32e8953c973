r"""Langevin dynamics as pure functions (jax-md style: a state and a step).

BAOAB splitting (Leimkuhler & Matthews 2013) with friction γ at temperature T, forces from any
``force_fn(positions) -> Evaluation``:

.. math::

    p ← p + \tfrac{Δt}{2} F(r);\; r ← r + \tfrac{Δt}{2} p/m;\;
    p ← e^{-γΔt} p + \sqrt{1 - e^{-2γΔt}}\,\sqrt{m k_B T}\,ξ;\;
    r ← r + \tfrac{Δt}{2} p/m;\; p ← p + \tfrac{Δt}{2} F(r)

in ASE units (positions Å, masses amu, energies eV, time in ``ase.units.fs``, momenta
amu·Å/ase-time), so ``Σ p²/2m`` is eV. Fixed atoms and padding slots (``movable`` = 0) never
move and carry zero momentum. The noise ξ of step n is drawn from ``fold_in(key, n)``: a run
restarted from a saved state at step n continues with the same noise as an uninterrupted one.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import ase.units
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["MDState", "LangevinParams", "langevin_params", "langevin_step", "maxwell_boltzmann",
           "kinetic_temperature"]


class MDState(NamedTuple):
    """State after a step (arrays over padded node slots).

    Attributes:
      positions: (n_node, 3) Å.
      momenta: (n_node, 3) amu·Å/(ASE time unit).
      forces: (n_node, 3) eV/Å, the (biased) forces that drive the dynamics.
      model_forces: (n_node, 3) eV/Å, −∂E/∂r of the model.
      energy: model energy E, eV.
      variance: posterior variance σ² at ``positions``.
      rows: (r, d) normalised feature rows at ``positions`` (added to the posterior on a label).
      step: steps taken.
    """

    positions: jax.Array
    momenta: jax.Array
    forces: jax.Array
    model_forces: jax.Array
    energy: jax.Array
    variance: jax.Array
    rows: jax.Array
    step: jax.Array


class LangevinParams(NamedTuple):
    """Integrator constants (arrays, so changing them never recompiles).

    Attributes:
      dt: time step, ASE time units.
      kT: k_B T, eV.
      c1: e^{-γΔt}.
      mass: (n_node, 1) amu (1 on padding slots).
      movable: (n_node, 1) 1.0 for real free atoms, 0.0 otherwise.
    """

    dt: jax.Array
    kT: jax.Array
    c1: jax.Array
    mass: jax.Array
    movable: jax.Array


def langevin_params(masses: np.ndarray, movable: np.ndarray, n_node: int, *, timestep_fs: float,
                    temperature_K: float, friction_per_fs: float) -> LangevinParams:
    """Constants for atoms with ``masses`` (n_atoms,) amu and ``movable`` (n_atoms,) bool,
    padded to ``n_node`` slots."""
    n = len(masses)
    mass = np.ones((n_node, 1))
    mass[:n, 0] = masses
    mov = np.zeros((n_node, 1))
    mov[:n, 0] = np.asarray(movable, float)
    dt = timestep_fs * ase.units.fs
    return LangevinParams(np.float64(dt), np.float64(ase.units.kB * temperature_K),
                          np.float64(np.exp(-friction_per_fs * timestep_fs)), mass, mov)


def maxwell_boltzmann(key, lp: LangevinParams, dtype=jnp.float32) -> jax.Array:
    """(n_node, 3) momenta drawn at temperature kT (zero on fixed and padding slots)."""
    xi = jax.random.normal(key, (lp.mass.shape[0], 3), dtype)
    return xi * jnp.sqrt(lp.mass * lp.kT).astype(dtype) * lp.movable.astype(dtype)


def kinetic_temperature(momenta, lp: LangevinParams) -> float:
    """Instantaneous temperature (K) of the movable atoms (3 degrees of freedom each)."""
    p = np.asarray(momenta, np.float64)
    ekin = 0.5 * np.sum(p * p / np.asarray(lp.mass)) 
    dof = 3.0 * float(np.sum(np.asarray(lp.movable)))
    return 2.0 * ekin / max(dof, 1.0) / ase.units.kB


def langevin_step(force_fn: Callable, state: MDState, key, lp: LangevinParams) -> MDState:
    """One BAOAB step; ``force_fn(positions) -> Evaluation`` (pure; jit the caller)."""
    dtype = state.positions.dtype
    dt = jnp.asarray(lp.dt, dtype)
    mov = jnp.asarray(lp.movable, dtype)
    inv_m = mov / jnp.asarray(lp.mass, dtype)
    c1 = jnp.asarray(lp.c1, dtype)
    p = state.momenta + 0.5 * dt * state.forces * mov
    r = state.positions + 0.5 * dt * p * inv_m
    xi = jax.random.normal(jax.random.fold_in(key, state.step), p.shape, dtype)
    p = c1 * p + jnp.sqrt(1.0 - c1 * c1) * jnp.sqrt(jnp.asarray(lp.mass * lp.kT, dtype)) * xi * mov
    r = r + 0.5 * dt * p * inv_m
    ev = force_fn(r)
    p = p + 0.5 * dt * ev.biased_forces * mov
    return MDState(r, p, ev.biased_forces * mov, ev.forces, ev.energy, ev.variance, ev.rows, state.step + 1)
