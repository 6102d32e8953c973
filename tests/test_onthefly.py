"""On-the-fly MD pieces: posterior updates, variance gradients, biased forces (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tiny_models import tiny_config
from ntkal.data import batch_atoms
from ntkal.data.toy import cu_pt_slab_frames
from ntkal.models import build_model
from ntkal.onthefly import (OnTheFlyCalculator, SystemGraph, UncertainPotential, UncertaintyConfig,
                            add_rows, posterior_from_rows, variance)

CONFIG = tiny_config(num_layers=1, lmax=1)


# --- the posterior (numpy, float64) -------------------------------------------------------------

def test_rank_r_update_equals_refit_from_scratch(x64):
    rng = np.random.default_rng(0)
    d, sigma2 = 24, 3e-2
    old = rng.normal(size=(7, 5, d)) * rng.uniform(0.1, 3.0, size=(7, 1, 1))
    new = rng.normal(size=(2, 5, d))
    new[1, 3] = 0.0  # a padding row adds nothing
    updated = add_rows(posterior_from_rows(old, sigma2), new, n_structures=2)
    scratch = posterior_from_rows(np.concatenate([old, new]), sigma2)
    np.testing.assert_allclose(updated.chol, scratch.chol, rtol=1e-10, atol=1e-12)
    assert np.allclose(np.triu(updated.chol, 1), 0.0)
    assert (updated.n_structures, updated.n_rows) == (9, 7 * 5 + 9)
    # the variance from the factor equals σ² tr(φ A⁻¹ φᵀ) with an explicit solve
    x = np.concatenate([old, new]).reshape(-1, d)
    a = x.T @ x + sigma2 * np.eye(d)
    phi = rng.normal(size=(5, d))
    v = float(variance(jnp.asarray(updated.chol), sigma2, jnp.asarray(phi)))
    assert v == pytest.approx(sigma2 * np.trace(phi @ np.linalg.solve(a, phi.T)), rel=1e-9)


# --- the compiled potential (tiny model, float64) -----------------------------------------------

@pytest.fixture(scope="module")
def system(x64):
    model = build_model(CONFIG)
    frames = list(cu_pt_slab_frames(4, seed=1, rattle=(0.05, 0.1)))
    params = model.init(jax.random.key(0), batch_atoms(frames[:2], CONFIG.cutoff, elements=CONFIG.elements))
    params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params)
    unc = UncertaintyConfig(kernel="joint", sketch_dim=16, num_probes=2)
    pot = UncertainPotential(model, params, unc.acquisition())
    graphs = SystemGraph(frames[0], CONFIG.cutoff, 0.7, CONFIG.elements)
    raws = [pot.raw_rows(params, graphs.build(a.positions), graphs.sizes) for a in frames[1:]]
    post, factor = pot.fit(np.stack([r for r, _ in raws]), np.stack([m for _, m in raws]))
    far = frames[0].copy()
    far.rattle(0.15, seed=5)
    return model, params, pot, graphs, post, factor, frames, far


def _eval(system, positions, tau):
    model, params, pot, graphs, post, factor, frames, far = system
    graph = graphs.build(positions[: graphs.n_atoms])
    return pot.evaluate(params, params, post, factor, graph, graphs.padded_positions(positions),
                        graphs.sizes, tau=tau)


def test_variance_gradient_and_biased_forces_equal_finite_differences(system):
    """F_τ = −∇(E − τσ²) and ∂σ²/∂r = (F_τ − F)/τ, against central differences (float64)."""
    *_, far = system
    tau, eps = 0.8, 1e-5
    pos = far.positions.copy()
    ev = _eval(system, pos, tau)
    n = len(far)
    grad_var = (np.asarray(ev.biased_forces) - np.asarray(ev.forces))[:n] / tau
    atoms = [0, n // 2, n - 1]  # a fixed-layer atom, a middle one, a top one (each eval ~0.3 s)
    grad_var, ev_biased = grad_var[atoms], np.asarray(ev.biased_forces)[:n][atoms]
    fd_var, fd_biased = np.zeros((len(atoms), 3)), np.zeros((len(atoms), 3))
    for row, i in enumerate(atoms):
        for k in range(3):
            vals = []
            for sign in (1, -1):
                p = pos.copy()
                p[i, k] += sign * eps
                e = _eval(system, p, 0.0)  # same graph edges: eps ≪ skin
                vals.append((float(e.energy), float(e.variance)))
            fd_var[row, k] = (vals[0][1] - vals[1][1]) / (2 * eps)
            fd_biased[row, k] = -((vals[0][0] - tau * vals[0][1]) - (vals[1][0] - tau * vals[1][1])) / (2 * eps)
    assert np.abs(fd_var).max() > 1e-4  # the variance does depend on positions
    np.testing.assert_allclose(grad_var, fd_var, atol=1e-7 * np.abs(fd_var).max() + 1e-9, rtol=1e-5)
    np.testing.assert_allclose(ev_biased, fd_biased, atol=1e-7, rtol=1e-6)
    # τ = 0: the model's forces, the same variance
    ev0 = _eval(system, pos, 0.0)
    np.testing.assert_allclose(np.asarray(ev0.biased_forces), np.asarray(ev0.forces))
    assert float(ev0.variance) == pytest.approx(float(ev.variance), rel=1e-12)


def test_verlet_skin_edges_change_nothing(system):
    """Edges between cutoff and cutoff + skin contribute exactly zero: same E, F and σ² as the
    exact radius graph (biased forces are −∇ of those two, tested above)."""
    model, params, pot, graphs, post, factor, frames, far = system
    exact = SystemGraph(far, CONFIG.cutoff, 0.0, CONFIG.elements)
    ev_skin = _eval(system, far.positions, 0.0)
    graph = exact.build(far.positions)
    assert exact.capacity < graphs.capacity
    ev_exact = pot.evaluate(params, params, post, factor, graph, exact.padded_positions(far.positions),
                            exact.sizes, tau=0.0)
    n = len(far)
    assert float(ev_exact.energy) == pytest.approx(float(ev_skin.energy), rel=1e-12)
    assert float(ev_exact.variance) == pytest.approx(float(ev_skin.variance), rel=1e-9)
    np.testing.assert_allclose(np.asarray(ev_exact.biased_forces)[:n], np.asarray(ev_skin.biased_forces)[:n],
                               atol=1e-10)


def test_labelled_frame_variance_drops_and_ase_calculator_agrees(system):
    """Adding a frame (rank-r update) lowers its σ² below σ²_n·r; the ASE calculator returns the
    same numbers as the potential."""
    model, params, pot, graphs, post, factor, frames, far = system
    from ase.md.langevin import Langevin
    from ase import units

    calc = OnTheFlyCalculator(pot, params, params, post, factor, tau=0.0)
    atoms = far.copy()
    atoms.calc = calc
    before = calc.get_property("variance", atoms)
    assert before == pytest.approx(float(_eval(system, far.positions, 0.0).variance), rel=1e-9)
    calc.add_label(atoms)
    atoms.calc.reset()
    after = calc.get_property("variance", atoms)
    r = int(np.asarray(pot.raw_rows(params, graphs.build(far.positions), graphs.sizes)[1]).sum())
    assert after < before and after < post.noise_var * r
    # ASE dynamics run on it (shapes fixed: one compilation per property set)
    traces = pot.traces
    Langevin(atoms, 1.0 * units.fs, temperature_K=300, friction=0.02, fixcm=False,
             rng=np.random.default_rng(0)).run(5)
    assert pot.traces == traces and np.isfinite(calc.results["variance"])
