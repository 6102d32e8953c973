"""The active-learning loop: end-to-end rounds, kill-and-resume equality, input checks."""

import dataclasses

import jax
import numpy as np
import pytest

from tiny_models import tiny_config
from ntkal.data import batch_atoms
from ntkal.data.toy import cu_pt_slab_frames
from ntkal.kernels import KernelConfig
from ntkal.loop import LoopConfig, load_state, make_context, run_loop
from ntkal.models import build_model
from ntkal.train import TrainConfig

TIME_KEYS = {"select_s", "label_s", "finetune_s", "evaluate_s"}


@pytest.fixture(scope="module")
def setup():
    config = tiny_config(num_layers=1, lmax=1)  # loop plumbing: the smallest model compiles fastest
    model = build_model(config)
    pool = list(cu_pt_slab_frames(40, seed=11))
    tests = {"id": list(cu_pt_slab_frames(8, seed=12)), "hot": list(cu_pt_slab_frames(8, seed=13, rattle=(0.25, 0.3)))}
    params = model.init(jax.random.key(0), batch_atoms(pool[:2], config.cutoff))
    return model, params, pool, tests


def loop_config(method="joint", selector="lcmd", **kw):
    settings = dict(kernel=KernelConfig(kind="joint", sketch_dim=32, num_probes=4, w_force=0.0),
                    initial=6, batch=4, rounds=2, shortlist=16, committee_size=2,
                    train=TrainConfig(max_epochs=2, batch_size=4))
    return LoopConfig(method=method, selector=selector, **{**settings, **kw})


def strip_times(rows):
    return [{k: v for k, v in row.items() if k not in TIME_KEYS} for row in rows]


def counting_oracle(calls):
    def oracle(atoms_list):
        calls.append(len(atoms_list))
        return list(atoms_list)
    return oracle


def test_two_rounds_end_to_end(setup):
    model, params, pool, tests = setup
    calls = []
    ctx = make_context(model, params, pool, tests, counting_oracle(calls), loop_config(rounds=1), progress=False)
    state = run_loop(ctx, None, log=None)
    assert state.round == 2 and calls == [6, 4]
    assert len(state.labelled) == 10 and len(set(state.labelled.tolist())) == 10
    assert set(state.labelled.tolist()) <= set(range(len(pool)))
    assert {(r["round"], r["split"]) for r in state.rows} == {(0, "id"), (0, "hot"), (1, "id"), (1, "hot")}
    assert [r["n_labels"] for r in state.rows if r["split"] == "id"] == [6, 10]
    for row in state.rows:
        assert np.isfinite(row["force_mae"]) and row["force_rmse"] >= row["force_mae"] > 0
    # Kernel picks carry their posterior-variance scores; the initial random picks have none.
    picks = [p for p in state.picks if p["round"] == 1]
    assert len(picks) == 4 and all(np.isfinite(p["score"]) and p["score"] >= 0 for p in picks)
    assert all(np.isfinite(p["pv"]) and p["pv"] >= 0 for p in picks)
    assert all(np.isnan(p["score"]) for p in state.picks if p["round"] == 0)


@pytest.mark.parametrize("method, selector", [("joint", "lcmd"), ("committee", "lcmd")])
def test_kill_and_resume_gives_identical_run(setup, tmp_path, method, selector):
    model, params, pool, tests = setup
    config = loop_config(method, selector)
    ctx = make_context(model, params, pool, tests, lambda a: list(a), config, progress=False)
    full = run_loop(ctx, tmp_path / "full", log=None)

    calls = []
    ctx2 = ctx._replace(oracle=counting_oracle(calls))
    partial = run_loop(ctx2, tmp_path / "resumed", stop_after=2, log=None)  # "killed" after round 1
    assert partial.round == 2
    resumed = run_loop(ctx2, tmp_path / "resumed", log=None)
    assert calls == [6, 4, 4]  # finished rounds are not labelled again
    assert resumed.labelled.tolist() == full.labelled.tolist()
    assert strip_times(resumed.rows) == strip_times(full.rows)
    assert [p["id"] for p in resumed.picks] == [p["id"] for p in full.picks]
    np.testing.assert_array_equal([p["score"] for p in resumed.picks], [p["score"] for p in full.picks])
    for a, b in zip(jax.tree_util.tree_leaves(resumed.params), jax.tree_util.tree_leaves(full.params)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    saved, atoms = load_state(tmp_path / "resumed")
    assert saved.round == 3 and len(atoms) == len(saved.labelled) == 14


def test_every_method_and_selector_runs(setup):
    model, params, pool, tests = setup
    for method, selector in [("energy", "maxdet"), ("embedding", "maxdist"), ("last_layer", "maxdiag")]:
        config = dataclasses.replace(loop_config(method, selector), rounds=1)
        ctx = make_context(model, params, pool, {"id": tests["id"]}, lambda a: list(a), config, progress=False)
        state = run_loop(ctx, None, log=None)
        assert len(set(state.labelled.tolist())) == 10, method


def test_budget_larger_than_pool_is_rejected(setup):
    model, params, pool, tests = setup
    with pytest.raises(ValueError, match="pool holds only 40"):
        make_context(model, params, pool, tests, lambda a: a,
                     dataclasses.replace(loop_config(), initial=35, batch=10, rounds=1), progress=False)


def test_bad_loop_config():
    with pytest.raises(ValueError, match="method"):
        LoopConfig(method="bogus")
    with pytest.raises(ValueError, match="featurize_with"):
        LoopConfig(featurize_with="never")


def test_pretrained_feature_cache_equals_streaming(setup):
    """featurize_with='pretrained' reuses one pool featurisation; picks equal a fresh stream."""
    from ntkal.loop import _kernel_picks, init_state
    model, params, pool, tests = setup
    config = loop_config(featurize_with="pretrained", feature_norm="per_structure", shortlist=40,
                         noise_rule="fixed", noise_var=1e-4)
    ctx = make_context(model, params, pool, {"id": tests["id"]}, lambda a: list(a), config, progress=False)
    state = init_state(ctx)._replace(labelled=np.array([3, 7, 11, 20, 31, 2]))
    unlabelled = np.setdiff1d(np.arange(len(pool)), state.labelled)
    key = jax.random.key(0)
    cached = _kernel_picks(state, ctx, unlabelled, key, 4)
    assert any(k[0] == "features" for k in ctx.cache)
    again = _kernel_picks(state, ctx, unlabelled, key, 4)  # from the cache
    streamed = _kernel_picks(state, ctx._replace(config=dataclasses.replace(config, featurize_with="current")),
                             unlabelled, key, 4)  # state.params are the pretrained params here
    for a, b in [(cached, again), (cached, streamed)]:
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_allclose(a[1], b[1], rtol=1e-4)


def test_varred_and_outlier_guard_in_the_loop(setup):
    from ntkal.loop import _acquirer, _kernel_picks, init_state
    from ntkal.models import energy_and_forces_fn
    model, params, pool, tests = setup
    config = loop_config(selector="varred", feature_norm="per_structure", max_force_quantile=0.5,
                         featurize_with="pretrained", shortlist=40, noise_rule="fixed")
    ctx = make_context(model, params, pool, {"id": tests["id"]}, lambda a: list(a), config, progress=False)
    state = init_state(ctx)._replace(labelled=np.array([0, 1, 2, 3, 4, 5]))
    unlabelled = np.setdiff1d(np.arange(len(pool)), state.labelled)
    ids, scores, _, _ = _kernel_picks(state, ctx, unlabelled, jax.random.key(1), 5)
    acquirer, data = _acquirer(ctx)
    fmax = acquirer.predicted_fmax(params, data, unlabelled)
    # independent reference for two structures: forces of a one-structure batch
    ef = jax.jit(energy_and_forces_fn(model.energy))
    for k in (0, 7):
        s = ctx.pool[unlabelled[k]]
        _, f = ef(params, batch_atoms([pool[unlabelled[k]]], model.config.cutoff))
        ref = np.linalg.norm(np.asarray(f)[: s.n_atoms], axis=1)[s.free].max()
        assert fmax[k] == pytest.approx(ref, rel=1e-5)
    allowed = unlabelled[fmax <= np.quantile(fmax, 0.5)]
    assert np.isin(ids, allowed).all()  # the guard held
    assert np.all(np.diff(scores) <= 1e-6) and np.all(scores > 0)  # greedy gains shrink


def test_target_set_steers_varred_and_the_unlabelled_pool_as_target_equals_the_pool(setup):
    """variance_target = "target_set": the target structures are featurised on their own (ids
    after the pool's and the initial set's), so the unlabelled pool given as the target set must
    reproduce the pool-target picks and gains; three rattled frames must change them."""
    from ntkal.loop import _kernel_picks, init_state
    model, params, pool, tests = setup
    config = loop_config(selector="varred", feature_norm="per_structure", featurize_with="pretrained",
                         shortlist=40, noise_rule="fixed", noise_var=1.0)
    targeted = dataclasses.replace(config, variance_target="target_set")
    labelled = np.array([3, 7, 11, 20, 31, 2])
    unlabelled = np.setdiff1d(np.arange(len(pool)), labelled)
    key = jax.random.key(2)
    picks = {}
    for name, cfg, target in [("pool", config, ()), ("own", targeted, [pool[i] for i in unlabelled]),
                              ("hot", targeted, tests["hot"][:3])]:
        ctx = make_context(model, params, pool, {"id": tests["id"]}, lambda a: list(a), cfg, progress=False,
                           target_atoms=target)
        assert len(ctx.target) == len(target)
        picks[name] = _kernel_picks(init_state(ctx)._replace(labelled=labelled), ctx, unlabelled, key, 5)
    np.testing.assert_array_equal(picks["own"][0], picks["pool"][0])
    np.testing.assert_allclose(picks["own"][1], picks["pool"][1], rtol=1e-4)
    assert set(picks["hot"][0].tolist()) != set(picks["pool"][0].tolist())
    assert np.isin(picks["hot"][0], unlabelled).all()  # target structures are never picked
    with pytest.raises(ValueError, match="needs target structures"):
        make_context(model, params, pool, {"id": tests["id"]}, lambda a: list(a), targeted, progress=False)
    with pytest.raises(ValueError, match="needs selector 'varred'"):
        dataclasses.replace(targeted, selector="lcmd")
    with pytest.raises(ValueError, match="variance_target"):
        dataclasses.replace(config, variance_target="test")


def test_replay_sample_fixed_per_run_and_round0_shared(setup, tmp_path):
    from ntkal.loop import replay_sample, round0_fingerprint
    model, params, pool, tests = setup
    a, b = replay_sample(30, 8, seed=3), replay_sample(30, 8, seed=3)
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == 8 and not np.array_equal(a, replay_sample(30, 8, seed=4))
    extra = list(cu_pt_slab_frames(12, seed=21))
    cfg = loop_config(rounds=1, replay=5)
    ctx = make_context(model, params, pool, {"id": tests["id"]}, lambda x: list(x), cfg, progress=False,
                       replay_atoms=extra)
    assert len(ctx.replay) == 5  # drawn once, in make_context
    np.testing.assert_array_equal([s.positions for s in ctx.replay],
                                  [s.positions for s in make_context(model, params, pool, {"id": tests["id"]},
                                   lambda x: list(x), cfg, progress=False, replay_atoms=extra).replay])
    # paired design: every method of one seed starts from the same round-0 state, computed once
    random_cfg = dataclasses.replace(cfg, method="random")
    assert round0_fingerprint(cfg) == round0_fingerprint(random_cfg)
    assert round0_fingerprint(cfg) != round0_fingerprint(dataclasses.replace(cfg, seed=1))
    huber = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, force_huber_delta=0.3))
    assert round0_fingerprint(cfg) != round0_fingerprint(huber)  # round 0 is fine-tuned with it
    calls = []
    shared = tmp_path / "round0"
    s1 = run_loop(ctx._replace(oracle=counting_oracle(calls)), None, log=None, shared_round0=shared)
    ctx_r = ctx._replace(config=random_cfg, oracle=counting_oracle(calls))
    s2 = run_loop(ctx_r, None, log=None, shared_round0=shared)
    assert calls == [6, 4, 4]  # round 0 labelled once for both methods
    assert s1.labelled[:6].tolist() == s2.labelled[:6].tolist()
    assert strip_times([r for r in s1.rows if r["round"] == 0]) == strip_times([r for r in s2.rows if r["round"] == 0])


def test_evidence_noise_rule_records_a_data_chosen_noise(setup):
    model, params, pool, tests = setup
    config = loop_config(rounds=1, noise_rule="evidence", feature_norm="median_trace", featurize_with="pretrained")
    ctx = make_context(model, params, pool, {"id": tests["id"]}, lambda a: list(a), config, progress=False)
    state = run_loop(ctx, None, log=None)
    noise = {p["noise_var"] for p in state.picks if p["round"] == 1}
    assert len(noise) == 1 and 1e-9 <= noise.pop() <= 10.0
    assert all(np.isnan(p["noise_var"]) for p in state.picks if p["round"] == 0)
    with pytest.raises(ValueError, match="energy row"):
        LoopConfig(method="embedding", noise_rule="evidence")


def test_the_loops_kernel_takes_the_trained_parameter_subset():
    from ntkal.train import TrainConfig

    partial = LoopConfig(train=TrainConfig(trainable=("interaction_1", "readout")))
    assert partial.acquisition.kernel.param_filter == ("interaction_1", "readout")
    assert LoopConfig().acquisition.kernel.param_filter == "all"
    with pytest.raises(ValueError, match="differs from train trainable"):
        LoopConfig(train=TrainConfig(trainable="readout"),
                   kernel=dataclasses.replace(LoopConfig().kernel, param_filter="last_interaction"))


def test_select_round_replays_a_pretrained_feature_arm_without_fine_tuning(setup, tmp_path):
    """What experiments/diagnose_target.py does: from a run's saved round-0 labelled set, the
    loop's own acquisition step (select_round) on a fresh context, with no labelling and no
    fine-tuning, reproduces every later pick of a pretrained-feature arm (evidence σ² included)."""
    from ntkal.loop import init_state, select_round
    model, params, pool, tests = setup
    config = loop_config(featurize_with="pretrained", selector="varred", rounds=2)
    run = run_loop(make_context(model, params, pool, tests, lambda a: list(a), config, progress=False),
                   tmp_path / "run", log=None)
    ctx = make_context(model, params, pool, {}, None, config, progress=False)  # no tests, no oracle
    state = init_state(ctx)._replace(round=1, labelled=run.labelled[:config.initial])
    for _ in range(config.rounds):
        picks = select_round(state, ctx, [pool[i] for i in state.labelled])
        state = state._replace(round=state.round + 1, labelled=np.concatenate([state.labelled, picks.ids]))
    np.testing.assert_array_equal(state.labelled, run.labelled)
    assert np.isfinite(picks.noise_var) and np.all(np.isfinite(picks.pv))
