r"""ASE calculator: model energy and forces plus their NTK posterior variances.

:class:`NTKALCalculator` returns, for one structure x with N atoms,

* ``energy`` (eV) and ``free_energy`` (= energy) from the model;
* ``forces`` (N, 3) eV/Å = −∂E/∂r (``jax.grad`` of the model energy);
* ``energy_variance`` (scalar, dimensionless) and ``forces_variance`` (N,) dimensionless,
  the posterior variances of a Gaussian process whose kernel is the sketched NTK of the
  model around its current parameters, conditioned on the training structures:

.. math::

    v_E(x) = σ^2\, \hat φ_E(x) A_E^{-1} \hat φ_E(x)^⊤,
        \qquad A_E = \sum_{t} \hat φ_E(t)^⊤ \hat φ_E(t) + σ^2 I_d,

    v_{F,i}(x) = \sum_{α ∈ \{x,y,z\}} σ^2\, \hat φ_{F,iα}(x) A_F^{-1} \hat φ_{F,iα}(x)^⊤,
        \qquad A_F = \sum_{t} \hat Φ_F(t)^⊤ \hat Φ_F(t) + σ^2 I_d,

with φ_E = Sᵀ∇_θE the energy-NTK feature and φ_{F,iα} = −Sᵀ∂(∇_θE)/∂r_{iα} the exact
force-NTK row of atom i, direction α (:mod:`ntkal.kernels.features`, one joint feature map
with exact force rows). Units: features are normalised by the training set,
φ̂_E = φ_E / c_E with c_E² = mean_t ‖φ_E(t)‖² and φ̂_F = φ_F / c_F with c_F² = mean prior
variance ‖φ_{F,iα}(t)‖² of one free force component over the training set, so both
variances are *relative to the typical prior variance* of the same quantity on the training
set (1 ≈ "as uncertain as before any training data", → 0 on well-covered structures) and
``noise_var`` σ² is on the same relative scale (a training structure's energy variance is
below σ²: φ̂A_E⁻¹φ̂ᵀ ≤ ‖φ̂‖²/(‖φ̂‖² + σ²) < 1). Multiply by a calibration constant (eV² or
(eV/Å)², fitted on held-out errors) to get absolute units. Fixed atoms (``FixAtoms``) of
training structures give no force rows; at prediction time every atom gets a variance.

Periodic and non-periodic structures are both supported (periodic images come from the
neighbour list). Each structure is padded to a bucket (:func:`ntkal.data.bucket`) of its
atom and edge counts, so the model and the feature map compile once per size bucket.

Example::

    calc = NTKALCalculator.from_training(model, params, train_atoms, sketch_dim=256)
    atoms.calc = calc
    atoms.get_forces(); calc.get_property("forces_variance", atoms)
"""

from __future__ import annotations

from typing import Callable, Iterable, NamedTuple

import ase
import jax
import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from ntkal.acquire import Acquirer, AcquisitionConfig
from ntkal.posterior import Posterior, PrecisionState, feature_posterior
from ntkal.data import atoms_to_structure, batch_structures, bucket
from ntkal.kernels import FeatureMap, KernelConfig
from ntkal.kernels.split import GraphSizes
from ntkal.models import MLIP, energy_and_forces_fn

__all__ = ["NTKALCalculator", "NTKUncertainty", "fit_uncertainty", "padded_graph"]


class NTKUncertainty(NamedTuple):
    """The energy and force posteriors of :class:`NTKALCalculator`.

    Attributes:
      feature_map: joint feature map with exact force rows, w_E = w_F = 1 (row 0 = energy,
        row 1 + 3i + α = force component α of atom i).
      energy_posterior: posterior over normalised energy features (d × d factors).
      force_posterior: posterior over normalised force features (d × d factors).
      energy_scale: c_E, sqrt of the mean squared energy-feature norm over the training set.
      force_scale: c_F, sqrt of the mean squared force-row norm over free training atoms.
      n_train: training structures.
      energy_and_forces: the jitted energy/forces compiled with the feature map (reused by the
        calculator).
    """

    feature_map: FeatureMap
    energy_posterior: Posterior
    force_posterior: Posterior
    energy_scale: float
    force_scale: float
    n_train: int
    energy_and_forces: Callable | None = None


def fit_uncertainty(model: MLIP, params, train_atoms: Iterable[ase.Atoms], *,
                    sketch_dim: int | None = 256, noise_var: float = 1e-2,
                    param_filter: str | tuple = "all", seed: int = 0,
                    direction_batch_size: int | None = 32) -> NTKUncertainty:
    """Accumulate the energy and force posteriors over ``train_atoms`` (streamed by chunk).

    Args:
      model: the MLIP.
      params: its parameters (the NTK is taken around them).
      train_atoms: training structures (labels are not used).
      sketch_dim: d, the NTK sketch width (``None`` = unsketched, small models only).
      noise_var: σ², relative to the mean prior variance (see module docstring).
      param_filter: parameters the NTK differentiates (:func:`ntkal.kernels.select_params`).
      seed: seeds the sketch.
      direction_batch_size: position directions per derivative batch (bounds memory).

    Returns:
      An :class:`NTKUncertainty`.
    """
    kcfg = KernelConfig(kind="joint", joint_force="exact", w_energy=1.0, w_force=1.0,
                        sketch_dim=sketch_dim, param_filter=param_filter, seed=seed,
                        direction_batch_size=direction_batch_size)
    # the acquisition pipeline's object owns the compiled feature map and energy/forces
    acquirer = Acquirer(model, params, AcquisitionConfig(kernel=kcfg, joint_weights=(1.0, 1.0)))
    fmap = acquirer.feature_map
    d = fmap.dim
    gram_e, gram_f = np.zeros((d, d)), np.zeros((d, d))
    n_struct = n_force_rows = 0
    # One structure at a time, padded exactly as at prediction time: the compiled feature
    # map of a size bucket serves training and prediction alike.
    for index, atoms in enumerate(train_atoms):
        s, graph, sizes = padded_graph(model, atoms, index=index, keep_constraints=True)
        rows, mask = fmap.apply(params, graph, sizes=sizes)
        rows, mask = np.asarray(rows, np.float64)[0], np.asarray(mask, bool)[0]
        e = rows[:1]
        f = rows[1:][mask[1:]]
        gram_e += e.T @ e
        gram_f += f.T @ f
        n_struct += 1
        n_force_rows += f.shape[0]
    if n_struct == 0:
        raise ValueError("no training structures")
    c_e2 = max(np.trace(gram_e) / n_struct, 1e-30)
    c_f2 = max(np.trace(gram_f) / max(n_force_rows, 1), 1e-30)
    fns = feature_posterior(noise_var)
    eye = np.eye(d) * noise_var
    energy_post = fns.finalize(PrecisionState(gram_e / c_e2 + eye, n_struct, n_struct))
    force_post = fns.finalize(PrecisionState(gram_f / c_f2 + eye, n_force_rows, n_struct))
    return NTKUncertainty(fmap, energy_post, force_post, float(np.sqrt(c_e2)), float(np.sqrt(c_f2)),
                          n_struct, acquirer.energy_and_forces)


def padded_graph(model: MLIP, atoms: ase.Atoms, *, index: int | None = None,
                 keep_constraints: bool = False):
    """One structure as a two-slot padded graph in its size bucket.

    Returns:
      ``(structure, graph, sizes)``: the :class:`~ntkal.data.Structure`, the graph padded to
      ``bucket(max_atoms + 1)`` nodes and ``max_edges`` edges, and the per-graph
      :class:`GraphSizes` ``(bucket(n_atoms), bucket(n_edges))``. Without
      ``keep_constraints`` every atom is free (gets force rows).
    """
    work = atoms.copy()
    if not keep_constraints:
        work.set_constraint()
    work.calc = None
    s = atoms_to_structure(work, model.config.cutoff, index=index, elements=model.config.elements)
    sizes = GraphSizes(bucket(s.n_atoms), bucket(max(s.n_edges, 1)))
    graph = batch_structures([s], n_graph=2, n_node=bucket(sizes.max_atoms + 1), n_edge=sizes.max_edges)
    return s, graph, sizes


def _whitened_variance(rows: np.ndarray, posterior: Posterior) -> np.ndarray:
    """σ² φ A⁻¹ φᵀ for each row of ``rows`` (n, d) = ‖σ L⁻¹ φ‖²."""
    z = np.sqrt(posterior.noise_var) * (rows @ posterior.chol_inv.T)
    return np.sum(z * z, axis=-1)


class NTKALCalculator(Calculator):
    """Energy and forces of an ntkal model with NTK posterior variances (see module docstring).

    Args:
      model: the MLIP.
      params: its parameters.
      uncertainty: from :func:`fit_uncertainty`; ``None`` = energy/forces only (asking for a
        variance then raises ``PropertyNotImplementedError``).
      **kwargs: passed to ``ase.calculators.calculator.Calculator``.

    Results (``calc.results`` / ``calc.get_property(name, atoms)``): ``energy`` eV,
    ``free_energy`` eV, ``forces`` (N, 3) eV/Å, ``energy_variance`` (dimensionless),
    ``forces_variance`` (N,) (dimensionless). Variances are computed only when asked for.
    """

    implemented_properties = ["energy", "free_energy", "forces", "energy_variance", "forces_variance"]

    def __init__(self, model: MLIP, params, uncertainty: NTKUncertainty | None = None, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.params = params
        self.uncertainty = uncertainty
        shared = None if uncertainty is None else uncertainty.energy_and_forces
        self._ef = shared if shared is not None else jax.jit(energy_and_forces_fn(model.energy))

    @classmethod
    def from_training(cls, model: MLIP, params, train_atoms: Iterable[ase.Atoms], *,
                      sketch_dim: int | None = 256, noise_var: float = 1e-2,
                      param_filter: str | tuple = "all", seed: int = 0,
                      direction_batch_size: int | None = 32, **kwargs) -> "NTKALCalculator":
        """A calculator whose posteriors are conditioned on ``train_atoms``.

        See :func:`fit_uncertainty` for the arguments; ``kwargs`` go to the ASE base class.
        """
        unc = fit_uncertainty(model, params, train_atoms, sketch_dim=sketch_dim, noise_var=noise_var,
                              param_filter=param_filter, seed=seed,
                              direction_batch_size=direction_batch_size)
        return cls(model, params, unc, **kwargs)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if system_changes:
            self.results = {}
        s, graph, sizes = padded_graph(self.model, self.atoms)
        n = s.n_atoms
        if "energy" not in self.results:
            energy, forces = self._ef(self.params, graph)
            self.results["energy"] = float(np.asarray(energy)[0])
            self.results["free_energy"] = self.results["energy"]
            self.results["forces"] = np.asarray(forces, np.float64)[:n].copy()
        if {"energy_variance", "forces_variance"} & set(properties):
            unc = self.uncertainty
            if unc is None:
                raise PropertyNotImplementedError(
                    "this NTKALCalculator has no training posterior; build it with from_training")
            rows, _ = unc.feature_map.apply(self.params, graph, sizes=sizes)
            rows = np.asarray(rows, np.float64)[0]                     # (1 + 3m, d)
            e_var = _whitened_variance(rows[:1] / unc.energy_scale, unc.energy_posterior)[0]
            f_var = _whitened_variance(rows[1:1 + 3 * n] / unc.force_scale, unc.force_posterior)
            self.results["energy_variance"] = float(e_var)
            self.results["forces_variance"] = f_var.reshape(n, 3).sum(axis=1)
