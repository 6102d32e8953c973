"""The built-in MLIP: symmetries, forces vs finite differences, padding, checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from hypothesis import given, settings, strategies as st
from scipy.spatial.transform import Rotation

from tiny_models import tiny_config
from ntkal.data import atoms_to_structure, batch_structures
from ntkal.data.toy import cu_pt_slab_frames
from ntkal.models import (build_model, count_parameters, energy_and_forces_fn, load_checkpoint,
                          save_checkpoint, with_positions)

CUTOFF = 4.0
BUDGET = dict(n_graph=2, n_node=16, n_edge=1024)  # one shape for every hypothesis example


@pytest.fixture(scope="module")
def setup(x64):
    config = tiny_config()
    model = build_model(config)
    frames = list(cu_pt_slab_frames(3, seed=0))
    graph = batch_structures([atoms_to_structure(frames[0], CUTOFF)], **BUDGET)
    params = model.init(jax.random.key(0), graph)
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), params)
    params["e0"] = jnp.asarray([-1.0, -2.0])
    ef = jax.jit(energy_and_forces_fn(model.energy))
    return model, params, ef, frames


def predict(setup, atoms, **budget):
    model, params, ef, _ = setup
    g = batch_structures([atoms_to_structure(atoms, CUTOFF)], **(budget or BUDGET))
    e, f = ef(params, g)
    return float(e[0]), np.asarray(f[: len(atoms)])


def random_structure(seed, periodic):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 6))
    for _ in range(100):
        if periodic:
            cell = 4.5 * (np.eye(3) + 0.2 * rng.uniform(-1, 1, (3, 3)))
            atoms = Atoms(rng.choice(["Cu", "Pt"], n), scaled_positions=rng.uniform(0, 1, (n, 3)),
                          cell=cell, pbc=True)
            d = atoms.get_all_distances(mic=True) + 10 * np.eye(n)
        else:
            atoms = Atoms(rng.choice(["Cu", "Pt"], n), positions=rng.uniform(0, 3.0, (n, 3)))
            d = atoms.get_all_distances() + 10 * np.eye(n)
        if d.min() > 1.8:
            return atoms
    return Atoms("Cu", positions=[[0, 0, 0]], cell=4.5 * np.eye(3), pbc=periodic)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10**6), periodic=st.booleans())
def test_rotation_translation_permutation(setup, seed, periodic):
    atoms = random_structure(seed, periodic)
    rng = np.random.default_rng(seed + 1)
    e, f = predict(setup, atoms)
    assert np.isfinite(e) and np.all(np.isfinite(f))

    rot = Rotation.random(random_state=seed).as_matrix()
    moved = atoms.copy()
    moved.positions = atoms.positions @ rot.T + rng.normal(size=3)
    moved.cell = atoms.cell.array @ rot.T
    e2, f2 = predict(setup, moved)
    np.testing.assert_allclose(e2, e, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(f2, f @ rot.T, atol=1e-8)

    perm = rng.permutation(len(atoms))
    e3, f3 = predict(setup, atoms[perm])
    np.testing.assert_allclose(e3, e, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(f3, f[perm], atol=1e-9)


def test_forces_match_central_finite_differences(setup):
    model, params, _, frames = setup
    atoms = frames[1]
    g = batch_structures([atoms_to_structure(atoms, CUTOFF)], **BUDGET)
    _, f = predict(setup, atoms)
    energy = jax.jit(lambda pos: model.energy(params, with_positions(g, pos))[0])
    pos0 = jnp.asarray(g.nodes["positions"])
    h = 1e-5
    fd = np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for k in range(3):
            step = jnp.zeros_like(pos0).at[i, k].set(h)
            fd[i, k] = -(energy(pos0 + step) - energy(pos0 - step)) / (2 * h)
    rel = np.linalg.norm(f - fd) / np.linalg.norm(fd)
    assert rel < 1e-6, rel


def test_padded_batch_equals_single_structures(setup):
    model, params, ef, frames = setup
    singles = [predict(setup, a) for a in frames]
    structures = [atoms_to_structure(a, CUTOFF) for a in frames]
    g = batch_structures(structures, n_graph=5, n_node=64, n_edge=4096)
    e, f = ef(params, g)
    np.testing.assert_allclose(np.asarray(e[:3]), [s[0] for s in singles], rtol=1e-10)
    np.testing.assert_allclose(np.asarray(f[:36]), np.concatenate([s[1] for s in singles]), atol=1e-10)
    # Padding slots and padding nodes are exactly zero.
    assert np.all(np.asarray(e[3:]) == 0.0)
    assert np.all(np.asarray(f[36:]) == 0.0)
    out = model.apply(params, g)
    assert np.all(np.asarray(out.node_scalars[36:]) == 0.0)


def test_default_model_size_in_range():
    from ntkal.models import ModelConfig
    config = ModelConfig(elements=(29, 78))
    model = build_model(config)
    g = batch_structures([atoms_to_structure(next(cu_pt_slab_frames(1)), config.cutoff)])
    shapes = jax.eval_shape(model.init, jax.random.key(0), g)
    n = sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes["net"]))
    assert 50_000 <= n <= 1_000_000


def test_checkpoint_roundtrip_is_exact(setup, tmp_path):
    model, params, ef, frames = setup
    path = tmp_path / "ckpt.msgpack"
    save_checkpoint(path, params, model.config, {"note": "test"})
    model2, params2, meta = load_checkpoint(path)
    assert model2.config == model.config and meta == {"note": "test"}
    g = batch_structures([atoms_to_structure(a, CUTOFF) for a in frames])
    e1, f1 = ef(params, g)
    e2, f2 = jax.jit(energy_and_forces_fn(model2.energy))(params2, g)
    assert np.array_equal(np.asarray(e1), np.asarray(e2)) and np.array_equal(np.asarray(f1), np.asarray(f2))
    assert count_parameters(params2) == count_parameters(params)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.msgpack"]  # no temp files left


def test_corrupt_checkpoint_is_rejected(tmp_path):
    path = tmp_path / "bad.msgpack"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.msgpack"):
        load_checkpoint(path)
