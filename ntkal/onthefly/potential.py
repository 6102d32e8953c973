r"""Energy, forces and posterior variance of one system, compiled once, for dynamics.

:class:`UncertainPotential` owns, for one structure size, one jitted function

.. math::

    (r) \mapsto \big(E(r),\; F(r) = -∂E/∂r,\; σ^2(r),\; F_τ(r) = -∂(E - τσ^2)/∂r\big)

where σ²(r) = σ²_n ‖L⁻¹ Φ̂(r)ᵀ‖²_F is the posterior variance of the normalised NTK feature rows
Φ̂ (energy row, k probe rows, or both: :mod:`ntkal.kernels`) under the Cholesky factor L of
:mod:`ntkal.onthefly.posterior`. With τ = 0 the variance is evaluated but not differentiated
(one forward-over-reverse pass for the features on top of energy and forces); with τ > 0 its
position gradient comes from ``jax.vjp`` through the feature map (the biased forces of
uncertainty-biased MD, Zaverkin et al. 2024). Units: E eV, F eV/Å, σ² dimensionless (relative
to the feature unit of the normalisation), τ eV per unit σ².

Neighbour lists are Verlet lists: built at cutoff + skin around reference positions
(:class:`SystemGraph`) and valid while no atom moved more than skin/2 from them; edges
beyond the cutoff contribute exactly zero (the radial envelope vanishes there), so energies,
forces and features equal those of the exact radius graph. The edge capacity is padded
(``edge_headroom``) so that rebuilding does not change shapes; the parameters, the factor L
and the normalisation are arguments, so a rank-r update, a fine-tune or a new scale never
recompiles.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import ase
import jax
import jax.numpy as jnp
import jraph
import numpy as np

from ntkal.acquire.config import AcquisitionConfig
from ntkal.acquire.pipeline import fit_scale
from ntkal.posterior import FeatureChunk
from ntkal.posterior.normalize import FeatureScale, apply_feature_scale
from ntkal.data import atoms_to_structure, batch_structures, bucket
from ntkal.kernels import make_feature_map
from ntkal.kernels.split import GraphSizes
from ntkal.models import MLIP, with_positions
from ntkal.onthefly.posterior import CholeskyPosterior, posterior_from_rows, variance

__all__ = ["Evaluation", "SystemGraph", "UncertainPotential", "MD_KERNELS"]

#: Kernels whose variance is a smooth, cheap function of positions (fixed probes).
MD_KERNELS = ("energy", "force_probe", "joint")


class Evaluation(NamedTuple):
    """One evaluation at positions r (padded node slots are zero).

    Attributes:
      energy: E(r), eV (scalar).
      forces: (n_node, 3) eV/Å, −∂E/∂r.
      variance: σ²(r) (scalar, dimensionless).
      biased_forces: (n_node, 3) eV/Å, −∂(E − τσ²)/∂r (= ``forces`` when τ = 0).
      rows: (r, d) the normalised feature rows at r (what a label adds to the posterior).
    """

    energy: jax.Array
    forces: jax.Array
    variance: jax.Array
    biased_forces: jax.Array
    rows: jax.Array


class SystemGraph:
    """Padded Verlet-list graphs of one system (fixed atoms, numbers, cell) at any positions.

    Args:
      atoms: the system (its constraints mark fixed atoms).
      cutoff: the model cutoff, Å.
      skin: Verlet skin, Å (edges are listed to cutoff + skin).
      elements: atomic numbers known to the model.
      edge_headroom: edge capacity = bucket(headroom × edges of the first graph); grows (one
        recompilation) when a rebuild needs more.
    """

    def __init__(self, atoms: ase.Atoms, cutoff: float, skin: float, elements, *,
                 edge_headroom: float = 1.3):
        self.template = atoms.copy()
        self.template.calc = None
        self.cutoff, self.skin = float(cutoff), float(skin)
        self.elements = tuple(int(z) for z in elements)
        self.edge_headroom = float(edge_headroom)
        self.n_atoms = len(atoms)
        self.max_atoms = bucket(self.n_atoms)
        self.n_node = bucket(self.max_atoms + 1)
        self.capacity = 0

    @property
    def sizes(self) -> GraphSizes:
        """Static per-graph budgets of the current capacity."""
        return GraphSizes(self.max_atoms, self.capacity)

    def build(self, positions) -> jraph.GraphsTuple:
        """The padded two-slot graph at ``positions`` (n_atoms, 3) Å, edges to cutoff + skin.

        Raises:
          InvalidStructureError: atoms closer than ``ntkal.data.MIN_DISTANCE`` or non-finite.
        """
        work = self.template.copy()
        work.set_positions(np.asarray(positions, np.float64)[: self.n_atoms])
        s = atoms_to_structure(work, self.cutoff + self.skin, elements=self.elements)
        if s.n_edges > self.capacity:
            self.capacity = bucket(max(int(np.ceil(s.n_edges * self.edge_headroom)), 1))
        return batch_structures([s], n_graph=2, n_node=self.n_node, n_edge=self.capacity)

    def padded_positions(self, positions) -> np.ndarray:
        """(n_node, 3) positions with zero padding rows."""
        out = np.zeros((self.n_node, 3))
        out[: self.n_atoms] = np.asarray(positions, np.float64)[: self.n_atoms]
        return out


def _row_groups(kind: str, r: int) -> np.ndarray:
    return np.array([0] + [1] * (r - 1)) if kind == "joint" else np.zeros(r, int)


def _normalise(rows, mask, factor, groups: np.ndarray, per_structure: bool):
    """Normalised rows (r, d) of one structure: trace modes multiply by ``factor`` (r,);
    ``per_structure`` divides each row group by its own norm first."""
    rows = jnp.where(mask[:, None], rows, 0.0)
    if per_structure:
        onehot = jnp.asarray(groups[:, None] == np.arange(groups.max() + 1)[None, :], rows.dtype)
        per_row = (jnp.sum(rows * rows, axis=-1) @ onehot) @ onehot.T
        safe = jnp.where(per_row > 0, per_row, 1.0)
        rows = rows * jnp.where(per_row > 0, jax.lax.rsqrt(safe), 0.0)[:, None]
    return rows * factor[:, None]


class UncertainPotential:
    """Compiled energy/forces/variance of one system for dynamics (see module docstring).

    Args:
      model: the MLIP.
      params: parameters of the structure all later parameters share.
      config: acquisition settings: ``kernel`` (kind in :data:`MD_KERNELS`, joint with probe
        force rows), ``feature_norm``, ``joint_weights``, ``noise_var``.

    Attributes:
      feature_map: the unit-weight feature map.
      traces: how many times the evaluation was traced (compilations), for tests.
    """

    def __init__(self, model: MLIP, params, config: AcquisitionConfig):
        kernel = config.kernel
        if kernel.kind not in MD_KERNELS or (kernel.kind == "joint" and kernel.joint_force != "probe"):
            raise ValueError(f"on-the-fly dynamics needs a kernel in {MD_KERNELS} (joint with probe "
                             f"force rows), got {kernel.kind!r}" + (
                                 f" with joint_force={kernel.joint_force!r}" if kernel.kind == "joint" else ""))
        self.model, self.config = model, config
        unit = dataclasses.replace(kernel, w_energy=1.0, w_force=1.0)
        self.feature_map = make_feature_map(model, unit, params)
        self.per_structure = config.feature_norm == "per_structure"
        self.traces = 0
        self._evaluate = jax.jit(self._evaluate_impl, static_argnames=("sizes", "bias"))
        self._rows = jax.jit(self._rows_impl, static_argnames=("sizes",))

    # --- features ---------------------------------------------------------------------------

    def _rows_impl(self, fparams, graph, sizes):
        rows, mask = self.feature_map.apply_padded(fparams, graph, sizes)
        return rows[0], mask[0]

    def raw_rows(self, fparams, graph, sizes: GraphSizes) -> tuple[np.ndarray, np.ndarray]:
        """Unit-weight, unnormalised rows (r, d) and mask (r,) of the structure in slot 0."""
        rows, mask = self._rows(fparams, graph, sizes=sizes)
        return np.asarray(rows, np.float64), np.asarray(mask, bool)

    def fit(self, raw_rows: np.ndarray, raw_mask: np.ndarray) -> tuple[CholeskyPosterior, np.ndarray]:
        """Normalisation and posterior from the training set's raw rows.

        Args:
          raw_rows: (n_T, r, d) from :meth:`raw_rows`.
          raw_mask: (n_T, r).

        Returns:
          ``(posterior, factor)``: ``factor`` (r,) is the argument :meth:`evaluate` and
          :meth:`normalise` take (the joint block weights over the global scale, or the
          weights alone with ``per_structure``).
        """
        n = raw_rows.shape[0]
        chunk = FeatureChunk(raw_rows, raw_mask, np.arange(n, dtype=np.int32))
        scale, _ = fit_scale(self.config, chunk)
        r = raw_rows.shape[1]
        weights = np.ones(r) if scale.group_weights is None else np.asarray(scale.group_weights, np.float64)
        factor = weights if self.per_structure else weights / scale.scale
        rows = self.normalise(raw_rows, raw_mask, factor)
        return posterior_from_rows(rows, self.config.noise_var, n_structures=n), factor

    def normalise(self, raw_rows: np.ndarray, raw_mask: np.ndarray, factor: np.ndarray) -> np.ndarray:
        """Normalised rows of one (r, d) or several (n, r, d) structures (float64, host)."""
        rows = np.asarray(raw_rows, np.float64)
        mask = np.asarray(raw_mask, bool)
        single = rows.ndim == 2
        rows, mask = (rows[None], mask[None]) if single else (rows, mask)
        groups = _row_groups(self.config.kernel.kind, rows.shape[1])
        if self.per_structure:
            chunk = FeatureChunk(rows, mask, np.arange(rows.shape[0], dtype=np.int32))
            fs = FeatureScale("per_structure", 1.0, None, groups)
            rows = np.asarray(apply_feature_scale(chunk, fs).rows, np.float64)
        rows = np.where(mask[..., None], rows, 0.0) * np.asarray(factor)[None, :, None]
        return rows[0] if single else rows

    # --- the compiled evaluation ------------------------------------------------------------

    def _evaluate_impl(self, params, fparams, chol, noise_var, factor, tau, graph, positions,
                       sizes, bias):
        self.traces += 1
        groups = _row_groups(self.config.kernel.kind, factor.shape[0])
        model = self.model

        def energy(pos):
            return model.energy(params, with_positions(graph, pos))[0]

        def var(pos):
            rows, mask = self.feature_map.apply_padded(fparams, with_positions(graph, pos), sizes)
            rows = _normalise(rows[0], mask[0], factor.astype(rows.dtype), groups, self.per_structure)
            return variance(chol.astype(rows.dtype), noise_var, rows), rows

        if bias:
            def both(p):
                v, rows = var(p)
                return (energy(p), v), rows

            (e, v), pullback, rows = jax.vjp(both, positions, has_aux=True)
            (grad_e,) = pullback((jnp.ones_like(e), jnp.zeros_like(v)))
            (grad_v,) = pullback((jnp.zeros_like(e), jnp.ones_like(v)))
            forces = -grad_e
            biased = forces + tau * grad_v
        else:
            e, grad_e = jax.value_and_grad(energy)(positions)
            v, rows = var(positions)
            forces = biased = -grad_e
        return Evaluation(e, forces, v, biased, rows)

    def evaluate(self, params, fparams, posterior: CholeskyPosterior, factor, graph, positions,
                 sizes: GraphSizes, tau: float = 0.0) -> Evaluation:
        """Evaluate at ``positions`` (n_node, 3) Å on ``graph`` (from :class:`SystemGraph`).

        Args:
          params: model parameters for E and F.
          fparams: parameters the NTK features are taken around (e.g. the pretrained ones).
          posterior: the factor L and σ²_n.
          factor: (r,) from :meth:`fit`.
          tau: bias strength τ (eV per unit σ²); τ = 0 skips the variance gradient.
        """
        return self._evaluate(params, fparams, jnp.asarray(posterior.chol), posterior.noise_var,
                              jnp.asarray(factor), tau, graph, positions, sizes=sizes,
                              bias=bool(tau != 0.0))

    def evaluation_fn(self, sizes: GraphSizes, bias: bool):
        """The pure, un-jitted ``f(params, fparams, chol, noise_var, factor, tau, graph,
        positions) -> Evaluation`` (to compose inside a jitted MD step)."""
        def f(params, fparams, chol, noise_var, factor, tau, graph, positions):
            return self._evaluate_impl(params, fparams, chol, noise_var, factor, tau, graph,
                                       positions, sizes, bias)
        return f
