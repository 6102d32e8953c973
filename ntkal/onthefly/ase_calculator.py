"""The on-the-fly potential as an ASE calculator, for users of ASE dynamics.

:class:`OnTheFlyCalculator` evaluates the same compiled function as ``ntkal md``
(:class:`~ntkal.onthefly.UncertainPotential`) and returns ``energy`` (eV, the model's E),
``forces`` (eV/Å, the *biased* forces −∂(E − τσ²)/∂r that drive the dynamics; the model's own
with τ = 0), ``model_forces`` and ``variance`` (σ², dimensionless). The neighbour list is
rebuilt at every call (no skin); shapes stay fixed for a fixed number of atoms, so an
``ase.md.Langevin`` run compiles once. :meth:`add_label` adds a labelled frame to the
posterior by a rank-r update.

Example::

    calc = OnTheFlyCalculator.from_training(model, params, train_frames, tau=0.5)
    atoms.calc = calc
    Langevin(atoms, 1 * units.fs, temperature_K=600, friction=0.01).run(100)
    calc.results["variance"]
"""

from __future__ import annotations

from typing import Iterable

import ase
import jax.numpy as jnp
import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from ntkal.onthefly.config import UncertaintyConfig
from ntkal.onthefly.posterior import add_rows
from ntkal.onthefly.potential import SystemGraph, UncertainPotential

__all__ = ["OnTheFlyCalculator"]


class OnTheFlyCalculator(Calculator):
    """Model energy, biased forces and σ² through ASE (see the module docstring).

    Args:
      potential: the compiled potential.
      params: model parameters (E and F).
      feature_params: parameters the features are taken around.
      posterior, factor: from :meth:`UncertainPotential.fit`.
      tau: bias strength τ, eV per unit σ².
    """

    implemented_properties = ["energy", "free_energy", "forces", "model_forces", "variance"]

    def __init__(self, potential: UncertainPotential, params, feature_params, posterior, factor, *,
                 tau: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.potential, self.params, self.feature_params = potential, params, feature_params
        self.posterior, self.factor, self.tau = posterior, np.asarray(factor), float(tau)
        self._graphs: dict = {}

    @classmethod
    def from_training(cls, model, params, train_atoms: Iterable[ase.Atoms], *,
                      uncertainty: UncertaintyConfig = UncertaintyConfig(), tau: float = 0.0,
                      seed: int = 0, **kwargs) -> "OnTheFlyCalculator":
        """Fit the posterior on ``train_atoms`` (features around ``params``)."""
        potential = UncertainPotential(model, params, uncertainty.acquisition(seed))
        calc = cls(potential, params, params, None, None, tau=tau, **kwargs)
        raws = [calc._raw(a) for a in train_atoms]
        calc.posterior, calc.factor = potential.fit(np.stack([r for r, _ in raws]),
                                                    np.stack([m for _, m in raws]))
        return calc

    def _system(self, atoms: ase.Atoms) -> SystemGraph:
        key = (len(atoms), tuple(atoms.numbers), tuple(np.asarray(atoms.pbc)))
        if key not in self._graphs:
            cfg = self.potential.model.config
            self._graphs[key] = SystemGraph(atoms, cfg.cutoff, 0.0, cfg.elements)
        return self._graphs[key]

    def _raw(self, atoms: ase.Atoms):
        system = self._system(atoms)
        graph = system.build(atoms.positions)
        return self.potential.raw_rows(self.feature_params, graph, system.sizes)

    def add_label(self, atoms: ase.Atoms) -> None:
        """Condition the posterior on ``atoms`` too (rank-r Cholesky update; labels unused)."""
        raw, mask = self._raw(atoms)
        self.posterior = add_rows(self.posterior, self.potential.normalise(raw, mask, self.factor))

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        system = self._system(self.atoms)
        graph = system.build(self.atoms.positions)
        ev = self.potential.evaluate(self.params, self.feature_params, self.posterior, self.factor, graph,
                                     jnp.asarray(system.padded_positions(self.atoms.positions)),
                                     system.sizes, tau=self.tau)
        n = len(self.atoms)
        self.results = {
            "energy": float(ev.energy), "free_energy": float(ev.energy),
            "forces": np.asarray(ev.biased_forces, np.float64)[:n].copy(),
            "model_forces": np.asarray(ev.forces, np.float64)[:n].copy(),
            "variance": float(ev.variance),
        }
