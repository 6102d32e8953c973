"""Fine-tuning: learning on EMT Cu/Pt slabs, determinism, checkpoint reload."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tiny_models import tiny_config
from ntkal.data import structures_from_atoms
from ntkal.data.toy import cu_pt_slab_frames
from ntkal.models import (adapt_config, build_model, fit_reference_energies, load_checkpoint,
                          save_checkpoint)
from ntkal.train import TrainConfig, evaluate, fit, make_batches, make_error_sums_fn


@pytest.fixture(scope="module")
def data():
    config = tiny_config(hidden_irreps="16x0e + 8x1o", readout_hidden=16, num_radial=6,
                         radial_hidden=16, cutoff=4.5)
    frames = list(cu_pt_slab_frames(300, seed=0))
    structures = [s for _, s in structures_from_atoms(frames, config.cutoff, elements=config.elements)]
    train, val = structures[:240], structures[240:]
    config = adapt_config(config, train)
    model = build_model(config)
    params = model.init(jax.random.key(0), make_batches(train[:2], 2)[0])
    params["e0"] = jnp.asarray(fit_reference_energies(config, train), jnp.float32)
    return model, params, train, val


def test_reference_energies_solve_least_squares(data):
    model, _, train, _ = data
    e0 = fit_reference_energies(model.config, train)
    counts = np.array([[np.sum(s.numbers == z) for z in model.config.elements] for s in train])
    energies = np.array([s.energy for s in train])
    ref, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    np.testing.assert_allclose(e0, ref, rtol=1e-6)


def test_training_halves_validation_force_mae_and_checkpoint_reloads(data, tmp_path):
    model, params, train, val = data
    sums = jax.jit(make_error_sums_fn(model.energy))
    val_batches = make_batches(val, 16)
    before = evaluate(sums, params, val_batches)
    result = fit(model, params, train, val, TrainConfig(max_epochs=10, batch_size=8, learning_rate=5e-3),
                 progress=False)
    after = evaluate(sums, result.params, val_batches)
    assert after["force_mae"] < 0.5 * before["force_mae"], (before, after)
    assert after["n_structures"] == 60 and after["n_force_components"] == 3 * sum(int(s.free.sum()) for s in val)
    best = min(h["val_loss"] for h in result.history)
    assert result.history[result.best_epoch]["val_loss"] == best

    path = tmp_path / "model.msgpack"
    save_checkpoint(path, result.params, model.config)
    model2, params2, _ = load_checkpoint(path)
    again = evaluate(jax.jit(make_error_sums_fn(model2.energy)), params2, val_batches)
    assert again == after


def test_same_seed_same_parameters(data):
    model, params, train, _ = data
    config = TrainConfig(max_epochs=1, batch_size=8, seed=3)
    a = fit(model, params, train[:40], None, config, progress=False).params
    b = fit(model, params, train[:40], None, config, progress=False).params
    c = fit(model, params, train[:40], None, TrainConfig(max_epochs=1, batch_size=8, seed=4),
            progress=False).params
    leaves = lambda p: jax.tree_util.tree_leaves(p)
    assert all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b)))
    assert not all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(c)))
    # Reference energies are frozen.
    assert np.array_equal(a["e0"], params["e0"])


def test_empty_training_set_is_an_error(data):
    model, params, _, _ = data
    with pytest.raises(ValueError, match="empty"):
        fit(model, params, [], None, TrainConfig(max_epochs=1))
