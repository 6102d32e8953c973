"""NTKALCalculator: model energy/forces through ASE, NTK posterior variances."""

import logging

import jax
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError

from tiny_models import tiny_config
from ntkal.calculator import NTKALCalculator
from ntkal.data import batch_atoms
from ntkal.data.toy import cu_pt_slab_frames
from ntkal.models import build_model


@pytest.fixture(scope="module")
def setup():
    config = tiny_config()
    model = build_model(config)
    train = list(cu_pt_slab_frames(4, seed=1, rattle=(0.05, 0.1)))
    params = model.init(jax.random.key(0), batch_atoms(train[:2], config.cutoff, elements=config.elements))
    # direction_batch_size=None: all 3N directions in one vmap (one compile, fastest for 12 atoms)
    calc = NTKALCalculator.from_training(model, params, train, sketch_dim=32, noise_var=1e-2,
                                         direction_batch_size=None)
    return model, params, train, calc


def _far(atoms):
    """Same composition and size bucket, strongly rattled: far from the training set."""
    far = atoms.copy()
    far.rattle(0.4, seed=3)
    return far


def test_energy_matches_model_on_other_padding(setup):
    """The calculator pads to its own bucket; the energy must not depend on padding."""
    model, params, train, calc = setup
    atoms = train[0].copy()
    atoms.calc = calc
    energy, forces = atoms.get_potential_energy(), atoms.get_forces(apply_constraint=False)
    graph = batch_atoms(train[:3], model.config.cutoff, elements=model.config.elements)
    e_ref = jax.jit(model.energy)(params, graph)
    assert energy == pytest.approx(float(e_ref[0]), rel=1e-5)
    assert forces.shape == (len(atoms), 3) and np.all(np.isfinite(forces))
    assert atoms.get_potential_energy() == energy  # cached, no recomputation needed


def test_variances_nonnegative_and_smaller_on_training(setup):
    model, params, train, calc = setup
    results = {}
    for name, atoms in (("train", train[1].copy()), ("far", _far(train[1]))):
        atoms.calc = calc
        e_var = calc.get_property("energy_variance", atoms)
        f_var = calc.get_property("forces_variance", atoms)
        assert np.isfinite(e_var) and e_var >= 0
        assert f_var.shape == (len(atoms),) and np.all(np.isfinite(f_var)) and np.all(f_var >= 0)
        results[name] = (e_var, f_var.mean())
    assert results["train"][0] < 0.5 * results["far"][0]
    assert results["train"][1] < 0.5 * results["far"][1]
    # Below the prior: a training structure's energy variance is at most σ² (relative units).
    assert results["train"][0] <= 1e-2 * (1 + 1e-6)


def test_compiles_once_per_bucket_and_recomputes_on_change(setup, caplog):
    model, params, train, calc = setup
    atoms = train[2].copy()
    atoms.calc = calc
    e0 = atoms.get_potential_energy()
    v0 = calc.get_property("energy_variance", atoms)
    atoms.positions[3] += 0.05  # same size bucket (training and prediction share compiled code)
    caplog.clear()
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        e1 = atoms.get_potential_energy()
        v1 = calc.get_property("forces_variance", atoms)
        v1 = calc.get_property("energy_variance", atoms)
        n_calc = len(caplog.records)
        jax.jit(lambda x: x + 1)(np.ones(2))  # positive control: a fresh compile is captured
    assert e1 != e0 and v1 != v0
    compiles = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Compiling")]
    control = [r.getMessage() for r in caplog.records[n_calc:] if r.getMessage().startswith("Compiling")]
    assert control and compiles == control, compiles  # nothing compiled for the calculator


def test_non_periodic_structure(setup):
    model, params, train, calc = setup
    cluster = Atoms("Cu4Pt2", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.5],
                                          [2.5, 2.5, 0], [1.3, 1.3, 1.8]])
    cluster.calc = calc
    energy, forces = cluster.get_potential_energy(), cluster.get_forces()
    assert forces.shape == (6, 3) and np.all(np.isfinite(forces)) and np.isfinite(energy)
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-4)  # no external field
    shifted = cluster.copy()
    shifted.positions += [3.0, -1.0, 0.5]
    shifted.calc = calc
    assert shifted.get_potential_energy() == pytest.approx(energy, abs=1e-4)


def test_no_posterior_means_no_variance(setup):
    model, params, train, _ = setup
    atoms = train[0].copy()
    atoms.calc = NTKALCalculator(model, params)
    atoms.get_potential_energy()
    with pytest.raises(PropertyNotImplementedError):
        atoms.calc.get_property("energy_variance", atoms)


@pytest.fixture
def float64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def test_forces_are_minus_energy_gradient(setup, float64):
    """Central finite differences of the calculator's own energy, in float64."""
    model, params, train, _ = setup
    params64 = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params)
    calc = NTKALCalculator(model, params64)
    atoms = train[3].copy()
    atoms.calc = calc
    forces = atoms.get_forces(apply_constraint=False)
    h = 1e-4
    rng = np.random.default_rng(0)
    for i, a in [(0, 0), (5, 2), (11, 1), (int(rng.integers(12)), int(rng.integers(3)))]:
        probe = atoms.copy()
        probe.calc = calc
        probe.positions[i, a] += h
        e_plus = probe.get_potential_energy()
        probe.positions[i, a] -= 2 * h
        e_minus = probe.get_potential_energy()
        assert forces[i, a] == pytest.approx(-(e_plus - e_minus) / (2 * h), rel=1e-5, abs=1e-7)
