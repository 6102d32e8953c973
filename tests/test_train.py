"""Fine-tuning: learning on EMT Cu/Pt slabs, determinism, checkpoint reload, hold-out, schedules, replay."""

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tiny_models import tiny_config
from ntkal.data import structures_from_atoms
from ntkal.data.toy import cu_pt_slab_frames
from ntkal.models import (adapt_config, build_model, fit_reference_energies, load_checkpoint,
                          save_checkpoint)
from ntkal.train import (TrainConfig, evaluate, holdout_split, learning_rate_at, make_batches,
                         make_error_sums_fn, replay_indices)
from ntkal.train import fit as _fit

#: this module's fits own one program store, as a loop run does (``compiled=``); a test that
#: counts compiles passes its own dict
PROGRAMS: dict = {}


def fit(*args, **kwargs):
    kwargs.setdefault("compiled", PROGRAMS)
    return _fit(*args, **kwargs)


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


# --- hold-out, schedules, replay, compile sharing -------------------------------------------------


def _dense(train):
    """The training structures with > 256 edges: any ≥ 8 of them pad to the budget of the tests above.

    Fits on them therefore re-use the step compiled there (one e3nn compile costs ~20 s here).
    """
    dense = [s for s in train if s.n_edges > 256]
    assert len(dense) >= 24 and max(s.n_edges for s in dense) * 8 <= 3072
    return dense


def test_holdout_split_is_seeded_disjoint_and_covering():
    a_train, a_val = holdout_split(20, 0.2, seed=1)
    b_train, b_val = holdout_split(20, 0.2, seed=1)
    _, c_val = holdout_split(20, 0.2, seed=2)
    assert np.array_equal(a_train, b_train) and np.array_equal(a_val, b_val)
    assert not np.array_equal(a_val, c_val)
    assert len(a_val) == 4 and len(a_train) == 16
    assert not set(a_train) & set(a_val) and sorted([*a_train, *a_val]) == list(range(20))
    assert len(holdout_split(10, 0.01, seed=0)[1]) == 1  # at least one
    assert len(holdout_split(4, 0.99, seed=0)[1]) == 3  # at least one left to train on
    for n in range(4):
        train_idx, val_idx = holdout_split(n, 0.5, seed=0)
        assert list(train_idx) == list(range(n)) and len(val_idx) == 0
    assert len(holdout_split(20, 0.0, seed=0)[1]) == 0
    with pytest.raises(ValueError, match="fraction"):
        holdout_split(10, 1.0, seed=0)


def test_learning_rate_schedules():
    const = TrainConfig(learning_rate=1e-2, max_epochs=10)
    assert all(learning_rate_at(const, t) == 1e-2 for t in (0, 0.5, 3, 10))
    cos = TrainConfig(learning_rate=1e-2, max_epochs=10, schedule="cosine", min_lr_ratio=0.1)
    values = [learning_rate_at(cos, t) for t in np.linspace(0, 10, 21)]
    assert values[0] == pytest.approx(1e-2) and values[-1] == pytest.approx(1e-3)
    assert values[10] == pytest.approx(0.5 * (1e-2 + 1e-3))
    assert all(np.diff(values) < 0)
    assert learning_rate_at(cos, 50) == pytest.approx(1e-3)  # clipped past the end
    warm = TrainConfig(learning_rate=1e-2, max_epochs=10, schedule="warmup_cosine", warmup_epochs=2,
                       min_lr_ratio=0.05)
    ramp = [learning_rate_at(warm, t) for t in (0, 1, 2, 6, 10)]
    assert ramp[0] == pytest.approx(5e-4) and ramp[1] == pytest.approx(0.5 * (5e-4 + 1e-2))
    assert ramp[2] == pytest.approx(1e-2) == max(learning_rate_at(warm, t) for t in np.linspace(0, 10, 101))
    assert ramp[3] == pytest.approx(0.5 * (5e-4 + 1e-2)) and ramp[4] == pytest.approx(5e-4)
    # No epochs left after the warmup: stay at the peak.
    assert learning_rate_at(dataclasses.replace(warm, max_epochs=2), 2) == pytest.approx(1e-2)


@pytest.mark.parametrize("kwargs, match", [
    (dict(schedule="linear"), "schedule"), (dict(min_lr_ratio=1.5), "min_lr_ratio"),
    (dict(warmup_epochs=-1), "warmup_epochs"), (dict(val_fraction=1.0), "val_fraction"),
    (dict(val_fraction=-0.1), "val_fraction"), (dict(replay_weight=-1.0), "replay_weight"),
    (dict(batch_size=0), "batch_size"), (dict(force_huber_delta=-0.1), "force_huber_delta"),
    (dict(force_huber_delta=float("inf")), "force_huber_delta"),
])
def test_train_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_huber_force_loss_against_a_hand_computed_reference(data):
    """δ > 0: force components with |e| ≤ δ count e², beyond 2δ|e| − δ² (numpy reference on the
    model's own errors); a δ above every error gives the plain loss; reported sums stay squared."""
    from ntkal.data import batch_structures
    from ntkal.train import make_loss_fn
    from ntkal.train.loss import label_masks
    from ntkal.models import energy_and_forces_fn
    model, params, train, _ = data
    graph = batch_structures(train[:3])
    _, f_pred = jax.jit(energy_and_forces_fn(model.energy))(params, graph)
    _, fmask, _ = label_masks(graph)
    err = np.asarray(f_pred - graph.nodes["forces"])[np.asarray(fmask)].ravel()
    delta = float(np.quantile(np.abs(err), 0.7))  # 30 % of the components beyond δ
    rho = np.where(np.abs(err) <= delta, err**2, 2 * delta * np.abs(err) - delta**2)

    @jax.jit  # one program for the four losses (op-by-op they take ~40 s on two CPU cores)
    def losses(params, graph):
        forces_only = dict(energy_weight=0.0, force_weight=1.0)
        return (make_loss_fn(model.energy, **forces_only)(params, graph),
                make_loss_fn(model.energy, **forces_only, force_huber_delta=delta)(params, graph),
                make_loss_fn(model.energy, force_huber_delta=2 * np.abs(err).max())(params, graph)[0],
                make_loss_fn(model.energy)(params, graph)[0])
    (plain, aux), (huber, aux_h), wide, default = losses(params, graph)
    np.testing.assert_allclose(float(plain), np.mean(err**2), rtol=1e-5)
    np.testing.assert_allclose(float(huber), np.mean(rho), rtol=1e-5)
    assert float(huber) < float(plain)
    np.testing.assert_allclose(float(aux_h["f_sse"]), float(aux["f_sse"]), rtol=1e-6)
    np.testing.assert_allclose(float(wide), float(default), rtol=1e-6)


def test_replay_indices():
    assert list(replay_indices(3, 1.0, seed=0, epoch=0)) == [0, 1, 2]
    assert sorted(replay_indices(3, 2.0, seed=0, epoch=5)) == [0, 0, 1, 1, 2, 2]
    assert len(replay_indices(3, 0.0, seed=0, epoch=0)) == 0
    half = [replay_indices(10, 1.5, seed=0, epoch=e) for e in range(3)]
    assert all(len(h) == 15 and np.all(np.bincount(h, minlength=10) >= 1) for h in half)
    assert not np.array_equal(half[0], half[1])
    assert np.array_equal(half[0], replay_indices(10, 1.5, seed=0, epoch=0))


def test_fit_with_holdout_returns_best_validation_params(data):
    model, params, train, _ = data
    train = _dense(train)
    config = TrainConfig(max_epochs=3, batch_size=8, learning_rate=5e-3, val_fraction=0.25, patience=100,
                         seed=1)
    result = fit(model, params, train[:16], None, config, progress=False)
    assert (result.n_train, result.n_holdout, result.n_replay) == (12, 4, 0)
    assert len(result.history) == 3
    assert all(h["val_n_structures"] == 4 and h["lr"] == 5e-3 for h in result.history)
    val_losses = [h["val_loss"] for h in result.history]
    assert result.best_epoch == int(np.argmin(val_losses))
    # The returned parameters are those after epoch best_epoch: a run stopped there ends on them.
    again = fit(model, params, train[:16], None, dataclasses.replace(config, max_epochs=result.best_epoch + 1),
                progress=False)
    leaves = jax.tree_util.tree_leaves
    assert all(np.array_equal(x, y) for x, y in zip(leaves(result.params), leaves(again.params)))
    # An explicit validation set takes precedence over the hold-out.
    explicit = fit(model, params, train[:8], train[8:12], dataclasses.replace(config, max_epochs=1),
                   progress=False)
    assert (explicit.n_train, explicit.n_holdout) == (8, 0)


def test_replay_lowers_error_on_replay_structures(data):
    model, params, train, _ = data
    train = _dense(train)
    fine_tune, replay = train[:8], train[8:16]
    config = TrainConfig(max_epochs=5, batch_size=8, learning_rate=1e-2, seed=0, patience=100)
    # ``val=replay`` only records the replay-set errors after every epoch (with the shared compiled sums).
    without = fit(model, params, fine_tune, replay, config, progress=False)
    with_replay = fit(model, params, fine_tune, replay, config, replay=replay, progress=False)
    assert (with_replay.n_train, with_replay.n_holdout, with_replay.n_replay) == (8, 0, 8)
    assert (without.n_train, without.n_holdout, without.n_replay) == (8, 0, 0)
    err_without = without.history[-1]["val_force_mae"]
    err_with = with_replay.history[-1]["val_force_mae"]
    assert err_with < 0.8 * err_without, (err_with, err_without)


def test_fits_of_different_sizes_and_schedules_share_one_compiled_step(data, caplog):
    model, params, train, _ = data
    train = _dense(train)
    compiled = {}  # the owner of the fits' programs (the loop passes its per-run cache)
    fit(model, params, train[:8], None, TrainConfig(max_epochs=1, batch_size=8), progress=False,
        compiled=compiled)
    before = dict(compiled)
    other = TrainConfig(max_epochs=2, batch_size=8, learning_rate=1e-3, schedule="warmup_cosine",
                        warmup_epochs=1, seed=5, patience=3, replay_weight=0.5)
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        result = fit(model, params, train[8:20], None, other, replay=train[20:24], progress=False,
                     compiled=compiled)
        n_fit = len(caplog.records)

        @jax.jit
        def step(x):  # positive control: a fresh compile of a function named like the train step
            return x + 1

        step(np.ones(2))
    assert len(before) == 1 and compiled.keys() == before.keys()  # found again, nothing new built
    assert all(compiled[k] is before[k] for k in before)
    compiles = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Compiling jit(step)")]
    control = [r.getMessage() for r in caplog.records[n_fit:] if r.getMessage().startswith("Compiling jit(step)")]
    assert control and compiles == control, compiles
    assert [h["lr"] for h in result.history] == [pytest.approx(5e-5), pytest.approx(1e-3)]


def test_a_reloaded_checkpoint_is_the_same_model_and_compiles_nothing_new(data, tmp_path):
    """Every sweep point loads its checkpoint anew: the programs compiled for the first load must
    serve the next (each copy holds hundreds of mapped regions until the process ends)."""
    from ntkal.process_stats import CompileCounter

    model, params, train, _ = data
    train = _dense(train)[:8]
    config = TrainConfig(max_epochs=1, batch_size=8)
    save_checkpoint(tmp_path / "ckpt.msgpack", params, model.config)
    compiled = {}  # the sweep's per-pool cache: the owner of the points' programs
    first, loaded, _ = load_checkpoint(tmp_path / "ckpt.msgpack")
    fit(first, loaded, train, None, config, progress=False, compiled=compiled)  # the first sweep point
    second, again, _ = load_checkpoint(tmp_path / "ckpt.msgpack")  # the next one
    assert first is second is model  # equal configs: one model object
    with CompileCounter() as compiles:
        fit(second, again, train, None, dataclasses.replace(config, seed=3), progress=False,
            compiled=compiled)
        assert compiles.count == 0
        jax.jit(lambda x: x * 3)(np.ones(3))  # positive control: a new program is counted
        assert compiles.count == 1


def test_interrupted_fit_resumes_to_the_uninterrupted_result(data, tmp_path, monkeypatch):
    """A fit killed after epoch 2 and rerun with the same ``state_path`` returns bit-identical
    parameters, best epoch and history to a fit that was never interrupted (hold-out, replay and
    a cosine schedule all active); a finished state returns at once; other inputs are refused."""
    import ntkal.train.fitting as fitting

    model, params, train, _ = data
    train = _dense(train)
    config = TrainConfig(max_epochs=5, batch_size=8, learning_rate=5e-3, val_fraction=0.25, patience=100,
                         schedule="cosine", seed=2, replay_weight=0.5)
    args = (model, params, train[:16], None, config)
    reference = fit(*args, replay=train[16:24], progress=False)

    path = tmp_path / "fit.state.npz"
    real_save = fitting.save_fit_state

    def crash_after_epoch_2(p, fingerprint, state):
        real_save(p, fingerprint, state)
        if state.epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(fitting, "save_fit_state", crash_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        fit(*args, replay=train[16:24], progress=False, state_path=path)
    monkeypatch.setattr(fitting, "save_fit_state", real_save)
    epochs_run = []
    monkeypatch.setattr(fitting, "learning_rate_at",
                        lambda c, e: epochs_run.append(int(e)) or learning_rate_at(c, e))
    resumed = fit(*args, replay=train[16:24], progress=False, state_path=path)
    assert sorted(set(epochs_run)) == [3, 4]  # only the epochs after the crash were trained

    leaves = jax.tree_util.tree_leaves
    assert all(np.array_equal(x, y) for x, y in zip(leaves(resumed.params), leaves(reference.params)))
    assert resumed.best_epoch == reference.best_epoch
    assert [h["val_loss"] for h in resumed.history] == pytest.approx(
        [h["val_loss"] for h in reference.history], rel=0, abs=0)
    epochs_run.clear()
    again = fit(*args, replay=train[16:24], progress=False, state_path=path)
    assert epochs_run == [] and all(np.array_equal(x, y) for x, y in zip(leaves(again.params),
                                                                          leaves(reference.params)))
    with pytest.raises(ValueError, match="other inputs"):
        fit(model, params, train[:16], None, dataclasses.replace(config, learning_rate=1e-3),
            replay=train[16:24], progress=False, state_path=path)
    with pytest.raises(ValueError, match="other inputs"):
        fit(*args, replay=train[16:23], progress=False, state_path=path)


def test_refit_recovers_a_known_per_element_offset(data):
    """Labels = the model's own energies + 1.3 eV per Cu and −0.7 eV per Pt: the refit shifts e0 by
    exactly those offsets (before any step; max_epochs = 0 leaves the network as it is)."""
    from ntkal.train.fitting import refit_reference_energies

    model, params, train, _ = data
    train = _dense(train)[:24]
    offset = {29: 1.3, 78: -0.7}
    energy = jax.jit(model.energy)
    predicted = []
    for k, graph in enumerate(make_batches(train, 8)):
        predicted.extend(np.asarray(energy(params, graph), np.float64)[:min(8, len(train) - 8 * k)])
    shifted = [s._replace(energy=float(e + sum(offset[int(z)] for z in s.numbers))) for s, e in zip(train, predicted)]
    refit = refit_reference_energies(model, params, shifted)
    want = np.asarray(params["e0"], np.float64) + [offset[z] for z in model.config.elements]
    np.testing.assert_allclose(np.asarray(refit["e0"], np.float64), want, atol=2e-4)  # float32 energies of ~100 eV
    result = fit(model, params, shifted, None, TrainConfig(max_epochs=0, refit_e0=True), progress=False)
    np.testing.assert_array_equal(np.asarray(result.params["e0"]), np.asarray(refit["e0"]))
    unchanged = fit(model, params, shifted, None, TrainConfig(max_epochs=0), progress=False)
    np.testing.assert_array_equal(np.asarray(unchanged.params["e0"]), np.asarray(params["e0"]))


def test_parameters_outside_the_trained_subset_are_bit_identical_after_a_fine_tune(data):
    from ntkal.kernels import select_params

    model, params, train, _ = data
    train = _dense(train)[:16]
    config = TrainConfig(max_epochs=2, batch_size=8, trainable="readout")
    result = fit(model, params, train, None, config, progress=False)
    chosen = set(select_params(params, "readout").indices)
    before = jax.tree_util.tree_leaves(params["net"])
    after = jax.tree_util.tree_leaves(result.params["net"])
    assert 0 < len(chosen) < len(before)
    for i, (b, a) in enumerate(zip(before, after)):
        if i in chosen:
            assert not np.array_equal(np.asarray(a), np.asarray(b)), i  # trained
        else:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # frozen, bit for bit
    np.testing.assert_array_equal(np.asarray(result.params["e0"]), np.asarray(params["e0"]))
    with pytest.raises(ValueError, match="trainable must be"):
        TrainConfig(trainable="last_layer")


def test_refit_after_the_fine_tune_removes_the_energy_drift_and_leaves_the_network(data):
    """``refit_e0_after``: e0 is then the least-squares fit (numpy's lstsq on the element counts,
    an independent reference) of the fine-tuned model's energy errors over every labelled
    structure, the hold-out included; the network and so the forces are bit for bit those of the
    same fit without it, whose e0 that fit would still move."""
    model, params, train, _ = data
    train = _dense(train)[:24]
    config = TrainConfig(max_epochs=3, batch_size=8, val_fraction=0.25, refit_e0=True, seed=3)
    plain = fit(model, params, train, None, config, progress=False)
    after = fit(model, params, train, None, dataclasses.replace(config, refit_e0_after=True), progress=False)
    assert after.n_holdout == 6
    for a, b in zip(jax.tree_util.tree_leaves(plain.params["net"]), jax.tree_util.tree_leaves(after.params["net"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    energy = jax.jit(model.energy)
    counts = np.array([[np.sum(s.numbers == z) for z in model.config.elements] for s in train], np.float64)
    labels = np.array([s.energy for s in train])

    def lstsq_shift(p):
        predicted = np.concatenate([np.asarray(energy(p, g), np.float64)[:min(8, len(train) - 8 * k)]
                                    for k, g in enumerate(make_batches(train, 8))])
        shift, *_ = np.linalg.lstsq(counts, labels - predicted, rcond=None)
        return shift, np.sqrt(np.mean((labels - predicted) ** 2))

    drift, rmse_plain = lstsq_shift(plain.params)
    rest, rmse_after = lstsq_shift(after.params)
    assert np.max(np.abs(drift)) > 1e-3  # the fine-tune moved the energies by a per-element offset
    np.testing.assert_allclose(rest, 0.0, atol=2e-5)  # float32 energies of ~100 eV
    assert rmse_after < rmse_plain
    np.testing.assert_allclose(np.asarray(after.params["e0"], np.float64) - np.asarray(plain.params["e0"], np.float64),
                               drift, atol=2e-5)
